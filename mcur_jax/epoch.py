"""The compiled training epoch and the state it trains.

The optimizer (AdamW after global-norm clipping, on a warm-up then cosine
schedule), the loss of one member on a flat batch of windows (the task
loss, SUGR and MCB-CL over its real positions), the epoch (`make_train_epoch`:
one `lax.scan` over steps whose windows and batches each member draws on
device from (seed, epoch), `groups.train_plan`; every member `jax.vmap`ped),
and the stacked state of the members: its initialisation, the parameters
that are evaluated (`selected_params`) and the best ones kept per member
(`improved_members`, `make_update_best`). `train.py` runs them.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mcur_jax import combos
from mcur_jax import data as data_lib
from mcur_jax import groups
from mcur_jax import losses
from mcur_jax import model as model_lib
from mcur_jax import transfer


def make_schedule(config, steps_per_epoch: int) -> optax.Schedule:
  """The learning rate of each step: linear warm-up, then cosine decay."""
  total = max(config.num_epochs * steps_per_epoch, 1)
  warmup = min(config.warmup_epochs * steps_per_epoch, total - 1)
  return optax.warmup_cosine_decay_schedule(
      0.0, config.learning_rate, warmup, total,
      config.learning_rate * config.final_lr_fraction)


def epoch_learning_rates(config, steps_per_epoch: int) -> np.ndarray:
  """[num_epochs] the mean learning rate of each epoch's steps, as the
  logged losses are means over them."""
  steps = np.arange(config.num_epochs * steps_per_epoch)
  with transfer.on_host():
    rates = np.asarray(jax.jit(make_schedule(config, steps_per_epoch))(steps))
  return rates.reshape(config.num_epochs, steps_per_epoch).mean(1)


def make_optimizer(config,
                   steps_per_epoch: int) -> optax.GradientTransformation:
  """AdamW with `make_schedule`'s learning rate, after global-norm
  clipping."""
  schedule = make_schedule(config, steps_per_epoch)
  decay_mask = lambda params: jax.tree.map(lambda x: x.ndim > 1, params)
  return optax.chain(
      optax.clip_by_global_norm(config.grad_clip_norm),
      optax.adamw(schedule, weight_decay=config.weight_decay, mask=decay_mask))


def make_loss_fn(config, graphdef, task: str):
  """loss_fn(params, batch, key, epoch, draw_weights) -> (loss, stats) for
  one member on a flat batch of windows (`groups.train_plan`);
  `draw_weights` [7] are its combination draw weights. Padding positions
  (segment `groups.PAD`) count nowhere."""

  def loss_fn(params, batch, key, epoch, draw_weights):
    valid = batch["segment"] != groups.PAD
    mask_key, dropout_key = jax.random.split(key)
    mask = combos.sample_train_masks(
        mask_key, batch["available"], draw_weights,
        batch["segment"] if config.combo_draw == "window" else None)
    # MoMKE's first stage: every natively available modality.
    mask = jnp.where(epoch < config.full_modality_epochs, batch["available"],
                     mask)
    out = model_lib.apply(graphdef, params, batch, mask, dropout_key)
    per_sample = losses.task_loss(out["pred"], batch["label"], config.task_loss)
    if config.sugr:
      task_loss, w = losses.sugr(
          per_sample, out["s"], s_max=config.sugr_s_max,
          active=epoch >= config.sugr_warmup_epochs, valid=valid,
          beta=config.sugr_beta)
    else:
      task_loss, w = (losses.masked_mean(per_sample, valid),
                      jnp.ones_like(per_sample))
    mcb = jnp.zeros(())
    if config.mcb_weight:
      exclude = (None if config.mcb_same_group_positives else
                 batch["group"][:, None] == batch["group"][None, :])
      mcb = losses.mcb_cl(
          out["z"], losses.category(batch["label"], task,
                                    config.regression_categories),
          combos.bits_of(mask), tau=config.tau, positives=config.positives,
          anchor_weight=(jax.lax.stop_gradient(w)
                         if config.sugr_weight_contrastive else None),
          valid=valid, exclude=exclude)
    loss = task_loss + config.mcb_weight * mcb
    return loss, {"loss": loss,
                  "task_loss": losses.masked_mean(per_sample, valid),
                  "mcb_loss": mcb, "sugr_weight": losses.masked_mean(w, valid)}

  return loss_fn


def training_inputs(split: data_lib.Split, config, sharding):
  """The arguments `train` and `tables` of the compiled epoch for `split`:
  its utterance table (features, availability, label, speaker rank) and its
  window tables (`groups.TrainTables`), as device arrays."""
  split_groups = groups.Groups.of(split)
  table = transfer.to_device(
      {**split.features, "available": split.available, "label": split.label,
       "speaker": split_groups.speaker}, sharding)
  tables = transfer.to_device(groups.TrainTables.of(
      split_groups, groups.context_window(config)).arrays(), sharding)
  return table, tables


def make_train_epoch(config, graphdef, tx, task, mesh, num_train: int,
                     compiles=None):
  """The jitted epoch: (state, train, tables, members, epoch) -> (state,
  mean stats); its traces are counted in `compiles["train_epoch"]` (a
  Counter) when given.

  `train` is the training split's utterance table (modality features,
  "available", "label", "speaker"), `tables` its `groups.TrainTables`,
  `members` = {"seeds": [M], "draw_weights": [M, 7]} (`regime.Members`).
  Each member draws its epoch's windows and batches from (seed, epoch)
  (`groups.train_plan`) and its combinations and dropout from (seed,
  epoch, step). With `config.ema_decay` > 0, `state["ema_params"]` follows
  an exponential moving average of the parameters, updated after every step.
  """
  batch = config.batch_size
  steps = groups.train_steps(num_train, batch)
  window = groups.context_window(config)
  loss_fn = make_loss_fn(config, graphdef, task)
  batch_sharding = NamedSharding(mesh, P(None, "data"))
  decay = config.ema_decay
  precision = model_lib.matmul_precision(config.compute_dtype)

  def member_update(params, opt_state, batch_data, key, epoch, draw_weights):
    grads, stats = jax.grad(loss_fn, has_aux=True)(params, batch_data, key,
                                                  epoch, draw_weights)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, stats

  def train_epoch(state, train, tables, members, epoch):
    if compiles is not None:
      compiles["train_epoch"] += 1
    with jax.default_matmul_precision(precision):
      return epoch_body(state, train, tables, members, epoch)

  def epoch_body(state, train, tables, members, epoch):
    keys = jax.vmap(lambda s: jax.random.fold_in(seed_key(s, 1), epoch))(
        members["seeds"])
    plans = jax.vmap(lambda k: groups.train_plan(
        jax.random.fold_in(k, 0), tables, window, steps, batch))(keys)
    plans = jax.tree.map(lambda x: x.swapaxes(0, 1), plans)  # [steps, M, B]

    def step(carry, xs):
      plan, i = xs
      batch_data = {k: v[plan["index"]] for k, v in train.items()}
      batch_data.update(segment=plan["segment"], group=plan["group"],
                        rank=plan["rank"])  # [M, B, ...]
      batch_data = jax.lax.with_sharding_constraint(batch_data, batch_sharding)
      step_keys = jax.vmap(lambda k: jax.random.fold_in(
          jax.random.fold_in(k, 1), i))(keys)
      params, opt_state, stats = jax.vmap(
          member_update, in_axes=(0, 0, 0, 0, None, 0))(
              carry["params"], carry["opt_state"], batch_data, step_keys,
              epoch, members["draw_weights"])
      carry = {**carry, "params": params, "opt_state": opt_state}
      if decay:
        carry["ema_params"] = jax.tree.map(
            lambda e, p: decay * e + (1 - decay) * p, carry["ema_params"],
            params)
      return carry, stats

    trained = ("params", "opt_state") + (("ema_params",) if decay else ())
    carry, stats = jax.lax.scan(step, {k: state[k] for k in trained},
                                (plans, jnp.arange(steps)))
    return {**state, **carry}, jax.tree.map(lambda x: x.mean(0), stats)

  repl = NamedSharding(mesh, P())
  return jax.jit(train_epoch, donate_argnums=0, out_shardings=repl)


def selected_params(state: dict) -> dict:
  """The parameters that are evaluated and selected: the moving average
  when there is one (`config.ema_decay`), else the parameters."""
  return state.get("ema_params", state["params"])


def seed_key(seed, stream: int) -> jax.Array:
  """Independent key streams of a seed: 0 = parameters, 1 = epochs."""
  return jax.random.fold_in(jax.random.key(seed), stream)


def init_state(init_params, tx, seeds: np.ndarray, repl,
               ema: bool = False) -> dict:
  """The stacked training state of all members (one per entry of `seeds`),
  replicated on the mesh. It is computed on the host CPU
  (`transfer.on_host`) and then placed: the random draws of every
  parameter make a program that compiled in 11 s for an H200 against 3 s
  for 2 CPU cores, and a seed starts from the same parameters on any
  accelerator."""
  def init(seeds):
    params = jax.vmap(lambda s: init_params(seed_key(s, 0)))(seeds)
    state = {"params": params, "opt_state": jax.vmap(tx.init)(params),
             "best_params": params,
             "best_metric": jnp.full(seeds.shape, -jnp.inf, jnp.float32),
             "best_epoch": jnp.full(seeds.shape, -1, jnp.int32)}
    if ema:
      state["ema_params"] = params
    return state
  with transfer.on_host():
    host = transfer.to_host(jax.jit(init)(np.asarray(seeds)))
  return transfer.to_device(host, repl)


def improved_members(score: np.ndarray, best: np.ndarray,
                     selection: str) -> np.ndarray:
  """[S] bool: the members whose kept model this epoch replaces. With
  selection "valid", those whose score beats their best so far, both in
  float32 (the precision the best is kept at), so a tie keeps the earlier
  epoch whichever way the score rounds; with "last", all."""
  if selection != "valid":
    return np.ones(len(score), bool)
  return np.asarray(score, np.float32) > np.asarray(best, np.float32)


def make_update_best(mesh):
  """(state, improved [S], score [S], epoch) -> state whose best_* fields
  take each improved seed's current parameters, score and epoch."""
  def update_best(state, improved, score, epoch):
    current = {"best_params": selected_params(state), "best_metric": score,
               "best_epoch": jnp.full(score.shape, epoch, jnp.int32)}
    def pick(new, old):
      return jnp.where(improved.reshape(improved.shape + (1,) * (new.ndim - 1)),
                       new, old)
    return {**state, **jax.tree.map(pick, current,
                                    {k: state[k] for k in current})}
  return jax.jit(update_best, donate_argnums=0,
                 out_shardings=NamedSharding(mesh, P()))
