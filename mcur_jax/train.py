"""`train_and_evaluate(config, workdir)`: the one MCUR training loop.

Sections: mesh -> data on device -> model and optimizer (one state per
seed, stacked and trained with `jax.vmap`) -> resume -> epochs -> final
test evaluation of each seed's selected model.

* An epoch is one compiled `lax.scan` over batches of an on-device
  permutation keyed by (seed, epoch); each step draws every sample's
  modality combination from a key of (seed, epoch, step). Masks and epochs
  are data, so the epoch and evaluation functions compile once per run
  (`COMPILES` counts traces).
* Data parallel: a ("data",) mesh, the data and parameters replicated, each
  batch sharded over "data"; XLA adds the gradient all-reduce, and MCB-CL
  sees the global batch.
* Model selection: after every epoch each seed is evaluated on validation
  under all 7 combinations; its best parameters by the average headline
  metric are kept in the state. Test is evaluated once, at the end, with
  those parameters.
* The state is checkpointed with orbax every `checkpoint_every` epochs; a
  run started on a workdir with checkpoints resumes from the latest and
  ends with exactly the parameters of an uninterrupted run.
"""

import collections
import functools
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mcur_jax import checkpoint
from mcur_jax import combos
from mcur_jax import data as data_lib
from mcur_jax import losses
from mcur_jax import metrics
from mcur_jax import model as model_lib
from mcur_jax import report
from mcur_jax import schema

# Trace counts of the compiled functions ("train_epoch", "evaluate"): each
# must be 1 per run whatever the combinations, epochs or seeds.
COMPILES = collections.Counter()


class TrainingDiverged(RuntimeError):
  """A training loss became NaN or inf; the last good checkpoint is kept."""


def make_mesh(num_devices: int = 0) -> jax.sharding.Mesh:
  """A 1-D ("data",) mesh over the first `num_devices` devices (0 = all)."""
  devices = jax.devices()
  if num_devices:
    devices = devices[:num_devices]
  return jax.sharding.Mesh(np.array(devices), ("data",))


def device_arrays(split: data_lib.Split, sharding, pad_to: int = 1) -> dict:
  """A split's model inputs as replicated device arrays, rows padded with
  zeros (no modality available) to a multiple of `pad_to`."""
  n = len(split)
  pad = -n % pad_to
  host = {**split.features, "available": split.available,
          "label": split.label}
  host = {k: np.concatenate([v, np.zeros((pad, *v.shape[1:]), v.dtype)])
          for k, v in host.items()}
  return {k: jax.make_array_from_process_local_data(sharding, v)
          for k, v in host.items()}


def to_host(tree):
  """NumPy copies of replicated arrays: each process reads its local replica
  (`jax.device_get` would need every shard addressable, false multi-host)."""
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)


def make_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformation:
  """AdamW with linear warm-up and cosine decay, after global-norm clipping."""
  total = max(config.num_epochs * steps_per_epoch, 1)
  warmup = min(config.warmup_epochs * steps_per_epoch, total - 1)
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, config.learning_rate, warmup, total,
      config.learning_rate * config.final_lr_fraction)
  decay_mask = lambda params: jax.tree.map(lambda x: x.ndim > 1, params)
  return optax.chain(
      optax.clip_by_global_norm(config.grad_clip_norm),
      optax.adamw(schedule, weight_decay=config.weight_decay, mask=decay_mask))


def make_loss_fn(config, graphdef, task: str):
  """loss_fn(params, batch, key, epoch) -> (loss, stats) for one seed."""
  weights = jnp.asarray(config.combo_weights, jnp.float32)

  def loss_fn(params, batch, key, epoch):
    mask_key, dropout_key = jax.random.split(key)
    mask = combos.sample_train_masks(mask_key, batch["available"], weights)
    features = {m: batch[m] for m in schema.MODALITIES}
    out = model_lib.apply(graphdef, params, features, mask, dropout_key)
    per_sample = losses.task_loss(out["pred"], batch["label"], config.task_loss)
    if config.sugr:
      task_loss, w = losses.sugr(
          per_sample, out["s"], s_max=config.sugr_s_max,
          active=epoch >= config.sugr_warmup_epochs)
    else:
      task_loss, w = per_sample.mean(), jnp.ones_like(per_sample)
    mcb = jnp.zeros(())
    if config.mcb_weight:
      mcb = losses.mcb_cl(
          out["z"], losses.category(batch["label"], task,
                                    config.regression_categories),
          combos.bits_of(mask), tau=config.tau, positives=config.positives,
          anchor_weight=(jax.lax.stop_gradient(w)
                         if config.sugr_weight_contrastive else None))
    loss = task_loss + config.mcb_weight * mcb
    return loss, {"loss": loss, "task_loss": per_sample.mean(),
                  "mcb_loss": mcb, "sugr_weight": w.mean()}

  return loss_fn


def make_train_epoch(config, graphdef, tx, task, mesh, num_train: int):
  """The jitted epoch: (state, data, seeds, epoch) -> (state, mean stats)."""
  batch = config.batch_size
  steps = num_train // batch
  loss_fn = make_loss_fn(config, graphdef, task)
  batch_sharding = NamedSharding(mesh, P(None, "data"))

  def seed_update(params, opt_state, batch_data, key, epoch):
    grads, stats = jax.grad(loss_fn, has_aux=True)(params, batch_data, key,
                                                  epoch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, stats

  def train_epoch(state, train, seeds, epoch):
    COMPILES["train_epoch"] += 1
    keys = jax.vmap(lambda s: jax.random.fold_in(seed_key(s, 1), epoch))(seeds)
    order = jax.vmap(lambda k: jax.random.permutation(
        jax.random.fold_in(k, 0), num_train)[:steps * batch])(keys)
    order = order.reshape(len(seeds), steps, batch).transpose(1, 0, 2)

    def step(carry, xs):
      params, opt_state = carry
      index, i = xs
      batch_data = jax.tree.map(lambda x: x[index], train)  # [S, B, ...]
      batch_data = jax.lax.with_sharding_constraint(batch_data, batch_sharding)
      step_keys = jax.vmap(lambda k: jax.random.fold_in(
          jax.random.fold_in(k, 1), i))(keys)
      params, opt_state, stats = jax.vmap(
          seed_update, in_axes=(0, 0, 0, 0, None))(
              params, opt_state, batch_data, step_keys, epoch)
      return (params, opt_state), stats

    (params, opt_state), stats = jax.lax.scan(
        step, (state["params"], state["opt_state"]),
        (order, jnp.arange(steps)))
    state = {**state, "params": params, "opt_state": opt_state}
    return state, jax.tree.map(lambda x: x.mean(0), stats)  # [S] each

  repl = NamedSharding(mesh, P())
  return jax.jit(train_epoch, donate_argnums=0, out_shardings=repl)


def make_evaluate(config, graphdef, mesh):
  """Evaluation of all seeds under each of the 7 combinations.

  Returns evaluate(params [S...], arrays) -> (pred [7, S, N, K], s [7, S, N])
  as NumPy arrays. It runs one compiled function over fixed-size chunks of
  the (padded) rows, so every split shares one compilation.
  """
  chunk_sharding = NamedSharding(mesh, P("data"))
  masks = jnp.asarray(combos.MASKS)

  @functools.partial(jax.jit, out_shardings=NamedSharding(mesh, P()))
  def evaluate_chunk(params, part):
    COMPILES["evaluate"] += 1
    part = jax.lax.with_sharding_constraint(part, chunk_sharding)
    features = {m: part[m] for m in schema.MODALITIES}

    def one_combo(combo_mask):
      mask = combos.restrict(combo_mask, part["available"])
      out = jax.vmap(lambda p: model_lib.apply(graphdef, p, features, mask)
                     )(params)
      return out["pred"], out["s"]
    return jax.lax.map(one_combo, masks)

  chunk = chunk_size(config, mesh)

  def evaluate(params, arrays):
    n = arrays["label"].shape[0]
    parts = [to_host(evaluate_chunk(
        params, jax.tree.map(lambda x: x[i:i + chunk], arrays)))
             for i in range(0, n, chunk)]
    return tuple(np.concatenate(x, axis=2) for x in zip(*parts))

  return evaluate


def chunk_size(config, mesh) -> int:
  devices = mesh.devices.size
  return -(-config.eval_batch_size // devices) * devices


def split_metrics(task: str, pred: np.ndarray, split: data_lib.Split):
  """{combo name: metrics} per seed from pred [7, S, N_pad, K]."""
  n = len(split)
  return [{name: metrics.compute(task, pred[c, s, :n], split.label)
           for c, name in enumerate(combos.NAMES)}
          for s in range(pred.shape[1])]


def headline_average(task: str, per_combo: dict) -> float:
  key = metrics.HEADLINE[task]
  return float(np.mean([per_combo[name][key] for name in combos.NAMES]))


def seed_key(seed, stream: int) -> jax.Array:
  """Independent key streams of a seed: 0 = parameters, 1 = epochs."""
  return jax.random.fold_in(jax.random.key(seed), stream)


def init_state(init_params, tx, seeds: jax.Array, repl) -> dict:
  """The stacked training state of all seeds, replicated on the mesh."""
  def init(seeds):
    params = jax.vmap(lambda s: init_params(seed_key(s, 0)))(seeds)
    return {"params": params, "opt_state": jax.vmap(tx.init)(params),
            "best_params": params,
            "best_metric": jnp.full(seeds.shape, -jnp.inf, jnp.float32),
            "best_epoch": jnp.full(seeds.shape, -1, jnp.int32)}
  return jax.jit(init, out_shardings=repl)(seeds)


def _finite(stats) -> bool:
  return all(np.isfinite(v).all() for v in stats.values())


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains every seed of `config` on `config.data_dir`; writes
  `WORKDIR/{config.json, metrics.jsonl, results.json, checkpoints/}` and
  returns the results dict.

  For a dataset with folds (IEMOCAP) and `config.fold` 0, every fold is
  trained in `WORKDIR/fold<k>/` and `WORKDIR/results.json` pools them (mean
  and std over folds and seeds).

  Raises:
    TrainingDiverged: a loss became NaN/inf (the last good checkpoint and
      the logs stay).
    schema.DataError, tfrecord.CorruptRecordError: bad prepared data.
  """
  manifest = schema.Manifest.load(config.data_dir)
  if not (manifest.folds and not config.fold):
    return _train_fold(config, workdir)
  runs = []
  for fold in manifest.folds["values"]:
    fold_config = ml_collections.ConfigDict(config.to_dict())
    fold_config.fold = fold
    runs.append(_train_fold(fold_config, os.path.join(workdir,
                                                      f"fold{fold}")))
  results = report.combine_folds(runs)
  if jax.process_index() == 0:
    report.write_results(workdir, results)
    print(report.table(results))
  return results


def _train_fold(config, workdir: str) -> dict:
  """train_and_evaluate for one fold (or a dataset with fixed splits)."""
  started = time.time()
  COMPILES.clear()
  main_process = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)

  # Data
  # ----
  dataset = data_lib.load(config.data_dir, fold=config.fold or None)
  manifest = dataset.manifest
  task = manifest.task
  if config.dataset != manifest.dataset:
    raise schema.DataError(os.path.join(config.data_dir, schema.MANIFEST),
                           "dataset", f"{manifest.dataset!r}, but the config "
                           f"is for {config.dataset!r}")
  mesh = make_mesh(config.num_devices)
  devices = mesh.devices.size
  if config.batch_size % devices:
    raise ValueError(f"batch_size {config.batch_size} does not divide by the "
                     f"{devices} devices")
  if len(dataset.train) < config.batch_size:
    raise ValueError(f"batch_size {config.batch_size} exceeds the "
                     f"{len(dataset.train)} training utterances")
  repl = NamedSharding(mesh, P())
  chunk = chunk_size(config, mesh)
  train = device_arrays(dataset.train, repl)
  evaluation = {s: device_arrays(getattr(dataset, s), repl, chunk)
                for s in ("valid", "test")}

  # Model, optimizer, state
  # -----------------------
  graphdef, init_params = model_lib.create(config, manifest.dims,
                                           manifest.num_classes)
  steps_per_epoch = len(dataset.train) // config.batch_size
  tx = make_optimizer(config, steps_per_epoch)
  seeds = jax.device_put(jnp.asarray(config.seeds, jnp.int32), repl)
  state = init_state(init_params, tx, seeds, repl)
  train_epoch = make_train_epoch(config, graphdef, tx, task, mesh,
                                 len(dataset.train))
  evaluate = make_evaluate(config, graphdef, mesh)
  update_best = make_update_best(mesh)

  # Resume
  # ------
  config_json = config.to_json_best_effort(indent=1, sort_keys=True)
  mngr = checkpoint.manager(workdir, config)
  start = mngr.latest_step() or 0
  if start:
    state = checkpoint.restore(mngr, start, state)
  log = report.MetricsLog(os.path.join(workdir, "metrics.jsonl"), start,
                          enabled=main_process)
  if main_process:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config_json + "\n")
    print(f"{manifest.dataset}: train {len(dataset.train)}, valid "
          f"{len(dataset.valid)}, test {len(dataset.test)} utterances from "
          f"{config.data_dir} ({manifest.format}); seeds "
          f"{list(config.seeds)}; {devices} device(s); "
          + (f"resuming after epoch {start}" if start else "from scratch"))

  # Train
  # -----
  progress = report.Progress(config.num_epochs, start, enabled=main_process)
  try:
    for epoch in range(start, config.num_epochs):
      state, stats = train_epoch(state, train, seeds, epoch)
      stats = to_host(stats)
      if not _finite(stats):
        bad = [config.seeds[i] for i in np.flatnonzero(~np.isfinite(
            stats["loss"]))]
        last = mngr.latest_step()
        kept = (f"the last good checkpoint (after epoch {last}) in "
                f"{checkpoint.directory(workdir)} and " if last else
                "no checkpoint yet (see checkpoint_every); ")
        raise TrainingDiverged(
            f"epoch {epoch + 1}: training loss is NaN/inf for seed(s) {bad}; "
            f"stopped. Kept: {kept}the logs in {workdir}.")
      pred, _ = evaluate(state["params"], evaluation["valid"])
      valid = split_metrics(task, pred, dataset.valid)
      score = np.array([headline_average(task, v) for v in valid])
      improved = score > to_host(state["best_metric"])
      state = update_best(state, improved, score.astype(np.float32), epoch)
      log.write(epoch + 1, config.seeds, stats, valid, score, task)
      progress.update(epoch + 1, stats, score, metrics.HEADLINE[task])
      if (epoch + 1) % config.checkpoint_every == 0 or (
          epoch + 1 == config.num_epochs):
        checkpoint.save(mngr, epoch + 1, state)
  finally:
    progress.close()
    mngr.close()

  # Test the selected models
  # ------------------------
  best_pred, _ = evaluate(state["best_params"], evaluation["test"])
  best_valid, _ = evaluate(state["best_params"], evaluation["valid"])
  results = report.results(
      config=config, manifest=manifest, task=task,
      test=split_metrics(task, best_pred, dataset.test),
      valid=split_metrics(task, best_valid, dataset.valid),
      selected_epoch=(to_host(state["best_epoch"]) + 1).tolist(),
      no_modality={name: int((~(combos.MASKS[c] & dataset.test.available)
                              .any(1)).sum())
                   for c, name in enumerate(combos.NAMES)},
      compiles=dict(COMPILES), seconds=time.time() - started)
  if main_process:
    report.write_results(workdir, results)
    print(report.table(results))
  return results


def make_update_best(mesh):
  """(state, improved [S], score [S], epoch) -> state whose best_* fields
  take each improved seed's current parameters, score and epoch."""
  def update_best(state, improved, score, epoch):
    current = {"best_params": state["params"], "best_metric": score,
               "best_epoch": jnp.full(score.shape, epoch, jnp.int32)}
    def pick(new, old):
      return jnp.where(improved.reshape(improved.shape + (1,) * (new.ndim - 1)),
                       new, old)
    return {**state, **jax.tree.map(pick, current,
                                    {k: state[k] for k in current})}
  return jax.jit(update_best, donate_argnums=0,
                 out_shardings=NamedSharding(mesh, P()))
