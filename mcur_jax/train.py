"""`train_and_evaluate(config, workdir)`: the one MCUR training loop.

Three stages: `Run.setup` (data on device, config checks, members, model,
optimizer: one state per member, stacked and trained with `jax.vmap`; a
member is a seed, or a (seed, combination) pair in the per-condition
regime, see `regime.py`) -> `fit` (resume, epochs, selection,
checkpoints) -> `finish` (evaluation of the selected models under every
protocol, `evaluation.py`; results.json, results.md and figures). Every
epoch is logged to metrics.jsonl and, with `config.tensorboard`, to
TensorBoard (`tensorboard.py`).

* An epoch is one compiled `lax.scan` over batches of windows drawn on
  device from (seed, epoch) (`groups.train_plan`: groups cut into windows
  of at most `context_window` utterances at moving cut points, shuffled,
  laid end to end into steps); each step draws every utterance's modality
  combination (or one per window, `combo_draw`) from a key of (seed, epoch,
  step). Masks and epochs are data, so the epoch and evaluation functions
  compile once per run (`COMPILES` counts traces).
* Data parallel: a ("data",) mesh, the data and parameters replicated, each
  batch sharded over "data"; XLA adds the gradient all-reduce, and MCB-CL
  sees the global batch (the context reads across the devices' shards of
  a window).
* Model selection: after every epoch each member is evaluated on validation
  under the combinations it serves (all the dataset can realise in the
  mixed regime); its best
  parameters by their average headline metric are kept in the state. With
  `ema_decay` the evaluated and kept parameters are the moving average.
  Test is evaluated once, at the end, with the kept parameters.
* The state is checkpointed with orbax every `checkpoint_every` epochs
  once `checkpoint_seconds` have passed since the last save, and after the
  last epoch; a run started on a workdir with checkpoints resumes from the
  latest intact one (`checkpoint.resume`), if its config and data are
  those the checkpoints were made with (`workdir.check_resume`), and ends
  with exactly the parameters of an uninterrupted run. One run at a time
  holds a workdir (`workdir.lock`).
"""

import collections
import dataclasses
import json
import math
import os
import threading
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mcur_jax import calibration
from mcur_jax import checkpoint
from mcur_jax import combos
from mcur_jax import data as data_lib
from mcur_jax import evaluation
from mcur_jax import figures
from mcur_jax import groups
from mcur_jax import losses
from mcur_jax import metrics
from mcur_jax import model as model_lib
from mcur_jax import progress
from mcur_jax import regime
from mcur_jax import report
from mcur_jax import schema
from mcur_jax import tensorboard
from mcur_jax import tfrecord
from mcur_jax import timing
from mcur_jax import transfer
from mcur_jax import validate
from mcur_jax import workdir as workdir_lib

# Trace counts of the compiled functions ("train_epoch", "evaluate"): each
# must be 1 per run whatever the combinations, epochs or seeds.
COMPILES = collections.Counter()


class TrainingDiverged(RuntimeError):
  """A training loss became NaN or inf; the last good checkpoint is kept."""


class Interrupted(KeyboardInterrupt):
  """A run stopped because a stop was requested (`STOP_REQUESTED`): at the
  end of an epoch, with a checkpoint of it, or before its first epoch, its
  next fold or the sweep's next point, with what was saved before. A
  KeyboardInterrupt, so that a sweep stops too instead of recording a
  failed point."""


# Set to stop the run at the end of its current epoch, after saving it
# (or before its next fold or sweep point); `launch.execute` sets it on
# Ctrl-C. Process 0's flag decides for all (`stop_requested`).
STOP_REQUESTED = threading.Event()


def stop_requested() -> bool:
  """`STOP_REQUESTED` of process 0, on every process (a collective with
  several processes: all of them call it at the same points)."""
  return workdir_lib.agree(STOP_REQUESTED.is_set())


# Bad input (config, data, workdir): the entry points report it in one
# `error:` line with exit status 2, no traceback.
INPUT_ERRORS = (validate.ConfigError, schema.DataError,
                tfrecord.CorruptRecordError)
# The failures of one run that are its own, as opposed to bugs: bad input
# and divergence (exit status 3). A sweep records them and goes on to its
# next point.
RUN_FAILURES = INPUT_ERRORS + (TrainingDiverged,)


def load_data(config, data_dir: str | None = None) -> data_lib.Dataset:
  """The data of a run as its config prepares it (fold, validation part,
  per-speaker normalisation); `data_dir` instead of the config's own
  directory."""
  return data_lib.load(data_dir or config.data_dir, fold=config.fold or None,
                       speaker_norm=validate.modalities(config, "speaker_norm"),
                       validation=config.validation)


def make_mesh(num_devices: int = 0) -> jax.sharding.Mesh:
  """A 1-D ("data",) mesh over the first `num_devices` devices (0 = all)."""
  devices = jax.devices()
  if num_devices:
    devices = devices[:num_devices]
  return jax.sharding.Mesh(np.array(devices), ("data",))


def check_config(config, manifest) -> jax.sharding.Mesh:
  """Raises validate.ConfigError for the first field of `config` that cannot
  run on the data of `manifest` with the devices here (what a run checks
  before it builds anything); returns the run's mesh."""
  validate.check_devices(config, jax.device_count(), jax.process_count())
  mesh = make_mesh(config.num_devices)
  validate.check(config, manifest, mesh.devices.size)
  return mesh


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


def make_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformation:
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


def make_train_epoch(config, graphdef, tx, task, mesh, num_train: int):
  """The jitted epoch: (state, train, tables, members, epoch) -> (state,
  mean stats).

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
    COMPILES["train_epoch"] += 1
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


def _finite(stats) -> bool:
  return all(np.isfinite(v).all() for v in stats.values())


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains every seed of `config` on `config.data_dir` (made absolute);
  writes `WORKDIR/{config.json, data.json, metrics.jsonl, checkpoints/,
  model_inputs/, calibration.json, results.json, results.md}`, `tb/` and
  the figures when the config asks (docs/evaluation.md lists them), and
  returns the results dict. The entry points add what a call from Python
  does not: the dataset taken from the data's manifest, prepared/<dataset>
  or synthetic data when no data_dir is given, and JAX's persistent
  compilation cache (`experiments.launch.configure_compilation_cache`).

  For a dataset with folds (IEMOCAP) and `config.fold` 0, every fold is
  trained in `WORKDIR/fold<k>/` and `WORKDIR/results.json` pools them (mean
  and std over folds and seeds).

  Raises:
    TrainingDiverged: a loss became NaN/inf (the last good checkpoint and
      the logs stay).
    validate.ConfigError: a config value that cannot run, a config or data
      that differ from those of the checkpoints it would resume
      (`workdir.check_resume`), a workdir another run holds
      (`workdir.WorkdirBusy`), checkpoints that are all damaged or a disk
      too full to save one (`checkpoint.CheckpointError`).
    schema.DataError, tfrecord.CorruptRecordError: bad prepared data.
  """
  if not config.data_dir:
    raise validate.ConfigError(
        "config.data_dir", "empty: name a prepared directory (python -m "
        "data_prep.convert makes one; the entry points find "
        "prepared/<dataset>, else generate synthetic data)")
  # Absolute, so that the run's config.json finds its data from anywhere.
  config.data_dir = os.path.abspath(config.data_dir)
  with workdir_lib.lock(workdir):
    manifest = schema.Manifest.load(config.data_dir)
    all_folds = bool(manifest.folds) and not config.fold
    _check_kind(workdir, all_folds)
    if not all_folds:
      return _train_fold(config, workdir)
    runs = []
    for fold in manifest.folds["values"]:
      if runs and stop_requested():
        raise Interrupted(f"stopped before fold {fold}: {workdir} keeps the "
                          "folds done, and the same command resumes")
      fold_config = of_fold(config, fold)
      fold_dir = os.path.join(workdir, schema.fold_name(fold))
      runs.append(_finished_fold(fold_config, fold_dir) or
                  _train_fold(fold_config, fold_dir))
    results = report.combine_folds(runs)
    publish(workdir, config, results,
            lambda: figures.write_summary_figures(workdir, results))
    return results


def of_fold(config, fold: int) -> ml_collections.ConfigDict:
  """A copy of a cross-validated run's config for one of its folds."""
  fold_config = ml_collections.ConfigDict(config.to_dict())
  fold_config.fold = fold
  return fold_config


def _check_kind(workdir: str, all_folds: bool) -> None:
  """Refuses a workdir that holds the other kind of run: a single run (or
  fold) writes WORKDIR/config.json, a cross-validated one WORKDIR/fold<k>/,
  and the two in one workdir would overwrite each other's results."""
  single = os.path.exists(os.path.join(workdir, workdir_lib.CONFIG_FILE))
  folds = workdir_lib.started_folds(workdir)
  if all_folds and single:
    raise validate.ConfigError(
        "--workdir", f"{workdir} holds a single run (its config.json), not "
        "the folds of fold=0: use a new --workdir")
  if not all_folds and folds:
    raise validate.ConfigError(
        "--workdir", f"{workdir} holds a cross-validated run ("
        f"{', '.join(os.path.basename(d) for d in folds)}): train "
        "one fold in a new --workdir, or rerun fold=0 to resume all")


def _finished_fold(config, workdir: str) -> dict | None:
  """The results of a fold that finished before with this config (checked
  as a resume is, `workdir.check_resume`, and no outputs asked for that it
  lacks, `workdir.new_outputs`), read instead of restoring and evaluating
  it again (the same numbers); None to run it. A job of several processes
  runs it (its other processes need not see the files). Results written
  by an earlier version of this code are read as they are, as a resume
  continues its checkpoints: remove a fold's results.json to evaluate it
  with this one."""
  path = os.path.join(workdir, workdir_lib.RESULTS_FILE)
  if jax.process_count() > 1 or not os.path.exists(path):
    return None
  if workdir_lib.new_outputs(workdir_lib.check_resume(workdir, config),
                             config):
    return None
  with open(path) as f:
    results = json.load(f)
  print(f"{workdir}: finished before with this config; its results read")
  return results


def _train_fold(config, workdir: str) -> dict:
  """train_and_evaluate for one fold (or a dataset with fixed splits)."""
  phases = timing.Phases()
  with timing.CompileSeconds().active() as compiled:
    with phases.phase("setup"):
      run = Run.setup(config, workdir)
    with phases.phase("train"):
      state = fit(run, phases)
    return finish(run, state, phases, compiled)


@dataclasses.dataclass
class Run:
  """Everything one run (one fold) trains and evaluates with."""

  config: ml_collections.ConfigDict
  workdir: str
  dataset: data_lib.Dataset
  mesh: jax.sharding.Mesh
  members: regime.Members
  # The modalities the dataset has ([3] bool).
  present: list
  # Device data: the training table and its window tables, the members,
  # and the validation and test splits in their evaluation windows.
  train: dict
  tables: dict
  member_data: dict
  inputs: dict
  # Compiled functions.
  train_epoch: object
  predict: object
  update_best: object
  state: dict
  started: float

  @property
  def task(self) -> str:
    return self.dataset.manifest.task

  @property
  def main_process(self) -> bool:
    return jax.process_index() == 0

  @property
  def steps(self) -> int:
    """Training steps per epoch."""
    return groups.train_steps(len(self.dataset.train), self.config.batch_size)

  @classmethod
  def setup(cls, config, workdir: str) -> "Run":
    """Data, checks, members, model, optimizer and the initial state."""
    started = time.time()
    COMPILES.clear()
    dataset = load_data(config)
    manifest = dataset.manifest
    mesh = check_config(config, manifest)
    # After the checks: a refused fold=0 run leaves no empty fold folder.
    os.makedirs(workdir, exist_ok=True)
    repl = NamedSharding(mesh, P())
    present = validate.present_modalities(manifest)
    members = regime.members(config, combos.realisable(present))
    train, tables = training_inputs(dataset.train, config, repl)
    inputs = {s: evaluation.Inputs.of(getattr(dataset, s), config, mesh)
              for s in ("valid", "test")}
    graphdef, init_params = model_lib.create(config, manifest.dims,
                                             manifest.num_classes)
    tx = make_optimizer(config, groups.train_steps(len(dataset.train),
                                                   config.batch_size))
    member_data = transfer.to_device(
        {"seeds": members.seeds, "draw_weights": members.draw_weights}, repl)
    state = init_state(init_params, tx, members.seeds, repl,
                       ema=bool(config.ema_decay))
    return cls(
        config=config, workdir=workdir, dataset=dataset, mesh=mesh,
        members=members, present=present, train=train,
        tables=tables, member_data=member_data, inputs=inputs,
        train_epoch=make_train_epoch(config, graphdef, tx, manifest.task,
                                     mesh, len(dataset.train)),
        predict=evaluation.make_predict(graphdef, mesh, len(members.combos),
                                        config.compute_dtype, COMPILES),
        update_best=make_update_best(mesh), state=state, started=started)


def _fold_label(config, manifest) -> str:
  """The run header's fold, e.g. ' fold 2/5 (test: session 2)'; '' for a
  dataset without folds."""
  if not manifest.folds or not config.fold:
    return ""
  values = manifest.folds["values"]
  return (f" fold {values.index(config.fold) + 1}/{len(values)} (test: "
          f"{manifest.folds['key']} {config.fold})")


def _header(run: Run, start: int) -> str:
  """The line a run (or fold) starts with: its data, models and devices,
  and where it starts from."""
  config, dataset = run.config, run.dataset
  models = len(run.members)
  return (
      f"{dataset.manifest.dataset}{_fold_label(config, dataset.manifest)}: "
      f"train {len(dataset.train)}, valid {len(dataset.valid)}, test "
      f"{len(dataset.test)} utterances from {config.data_dir} "
      f"({dataset.manifest.format}); seeds {list(config.seeds)}, "
      f"{config.regime} regime ({models} model{'s' if models > 1 else ''}); "
      f"{run.mesh.devices.size} device(s)"
      + (f" in {jax.process_count()} processes"
         if jax.process_count() > 1 else "") + "; "
      + ("from scratch" if not start else f"resuming after epoch {start}"
         if start < config.num_epochs else
         f"its {start} epoch{'s' * (start > 1)} done, evaluating"))


def _diverged(run: Run, stats: dict, epoch: int,
              last: int | None) -> TrainingDiverged:
  """The error of a loss gone NaN/inf in `epoch` (0-based): which members,
  and what is kept (the checkpoint after epoch `last`, if any, and the
  logs)."""
  bad = ", ".join(
      " ".join(f"{k} {v}" for k, v in run.members.describe(i).items())
      for i in np.flatnonzero(~np.isfinite(stats["loss"])))
  kept = (f"the last good checkpoint (after epoch {last}) in "
          f"{checkpoint.directory(run.workdir)} and " if last else
          "no checkpoint yet (see checkpoint_every and checkpoint_seconds); ")
  return TrainingDiverged(f"epoch {epoch + 1}: training loss is NaN/inf for "
                          f"{bad}; stopped. Kept: {kept}the logs in "
                          f"{run.workdir}.")


def fit(run: Run, phases: timing.Phases | None = None) -> dict:
  """Trains from the latest checkpoint (or from scratch) to the last epoch;
  selects each member's best epoch on validation; returns the final
  state. Checkpoints every `checkpoint_every` epochs once
  `checkpoint_seconds` have passed since the last save (process 0's clock
  decides for all), and after the last epoch; with `STOP_REQUESTED` set,
  saves at the end of the epoch and raises `Interrupted` (before the first
  epoch: raises at once; in the last: finishes). `phases` gets
  the parts of training (`train/epochs`, `train/validate`, `train/log`,
  `train/checkpoint`; `timing.summary`)."""
  phases = phases or timing.Phases()
  config, workdir, state = run.config, run.workdir, run.state
  dataset, members = run.dataset, run.members
  say = print if run.main_process else lambda *_: None
  if run.main_process:
    checkpoint.remove_partial_deletions(workdir)
  mngr = checkpoint.manager(workdir, config)
  try:
    if mngr.all_steps():
      workdir_lib.check_resume(workdir, config)
    start, state = checkpoint.resume(mngr, state, log=say)
  except BaseException:
    mngr.close()
    raise
  if start:
    note = workdir_lib.check_devices(workdir, run.mesh.devices.size)
    if note:
      say(note)
  workdir_lib.record_start(workdir, config, run.mesh.devices.size,
                          dataset.stats)
  log = report.MetricsLog(os.path.join(workdir, "metrics.jsonl"), start,
                          enabled=run.main_process)
  learning_rates = epoch_learning_rates(config, run.steps)
  say(_header(run, start))
  valid_masks = evaluation.fixed_masks(dataset.valid.available,
                                       members.combos)
  # A resumed run's bar starts from the best score its checkpoint kept.
  bar = progress.Progress(
      config.num_epochs, enabled=run.main_process,
      best=float(np.max(transfer.to_host(state["best_metric"]))) if start
      else -math.inf)
  # No event file for a run whose epochs are all done (a rerun to finish).
  board = tensorboard.EpochLog(workdir, start, metrics.HEADLINE[run.task],
                               enabled=run.main_process and config.tensorboard
                               and start < config.num_epochs)
  saved = time.monotonic()
  try:
    if start < config.num_epochs and stop_requested():  # During setup.
      raise Interrupted(f"stopped before epoch {start + 1}: {workdir} keeps "
                        "its checkpoints and logs, and the same command "
                        "resumes from them")
    for epoch in range(start, config.num_epochs):
      with phases.phase("train/epochs"):
        state, stats = run.train_epoch(state, run.train, run.tables,
                                       run.member_data, epoch)
        stats = transfer.to_host(stats)
      if not _finite(stats):
        raise _diverged(run, stats, epoch, mngr.latest_step())
      with phases.phase("train/validate"):
        pred = run.predict(selected_params(state), run.inputs["valid"],
                           valid_masks, keys=("pred",))["pred"]
        valid, score = evaluation.member_scores(run.task, pred, dataset.valid,
                                                members)
        improved = improved_members(
            score, transfer.to_host(state["best_metric"]), config.selection)
        state = run.update_best(state, improved, score.astype(np.float32),
                                epoch)
      with phases.phase("train/log"):
        board.write(log.write(epoch + 1, members, stats, valid, score,
                              run.task, learning_rates[epoch]))
        bar.update(epoch + 1, stats, score, metrics.HEADLINE[run.task])
      due = (epoch + 1) % config.checkpoint_every == 0 and workdir_lib.agree(
          time.monotonic() - saved >= config.checkpoint_seconds)
      stop = stop_requested()
      if due or stop or epoch + 1 == config.num_epochs:
        with phases.phase("train/checkpoint"):
          checkpoint.save(mngr, epoch + 1, state)
        saved = time.monotonic()
      if stop and epoch + 1 < config.num_epochs:
        raise Interrupted(f"stopped after epoch {epoch + 1}: {workdir} "
                          "keeps its checkpoint and its logs, and the same "
                          "command resumes from them")
  finally:
    bar.close()
    board.close()
    mngr.close()
  return state


def finish(run: Run, state: dict, phases: timing.Phases,
           compiled: timing.CompileSeconds) -> dict:
  """Evaluates the selected models on valid (fixed protocol) and test (all
  protocols), fits their calibration on valid (`calibration.py`); writes
  calibration.json, the figures, results.md and, last, results.json (with
  the run's `timing.summary`)."""
  config = run.config
  best = state["best_params"]
  found = {}
  with phases.phase("evaluate"):
    for split in ("valid", "test"):
      with phases.phase(f"evaluate/{split}"):
        found[split] = evaluation.run(
            config, run.predict, best, run.inputs[split], run.members,
            run.task, run.present, "all" if split == "test" else "fixed")
  names = [combos.NAMES[c] for c in run.members.combos]
  with phases.phase("calibrate"):
    fitted = calibration.fit_run(run.task, config.task_loss,
                                 found["valid"]["outputs"],
                                 run.dataset.valid.label, names)
    for split in ("valid", "test"):
      calibration.add_scores(found[split]["fixed"], fitted,
                             found[split]["outputs"],
                             getattr(run.dataset, split).label, names)
  results = report.results(
      config=config, manifest=run.dataset.manifest, task=run.task,
      found=found,
      selected_epoch=report.selected_epochs(
          run.members, transfer.to_host(state["best_epoch"]) + 1),
      compiles=dict(COMPILES), padding=padding(run),
      seconds=time.time() - run.started,
      timing=timing.summary(phases, compiled))
  if run.main_process:
    calibration.write(run.workdir, fitted)
  publish(run.workdir, config, results, lambda: figures.write_figures(
      run.workdir, results, config, found["test"], run.dataset.test, fitted,
      run.dataset.manifest.classes))
  return results


def publish(workdir: str, config, results: dict, draw_figures) -> None:
  """Process 0 writes a finished run's (or fold=0 run's pooled) outputs:
  TensorBoard's hparams row, the figures (`draw_figures()`, with
  config.plots), then results.json and results.md, which mark the run
  finished (a sweep skips it), and prints its table."""
  if jax.process_index() != 0:
    return
  if config.tensorboard:
    tensorboard.write_hparams(workdir, config, results)
  if config.plots:
    draw_figures()
  report.write_results(workdir, results)
  print(report.table(results))


def padding(run: Run) -> dict[str, float]:
  """The fraction of batch positions that hold no utterance: per training
  epoch, and in the valid and test evaluation chunks."""
  n = len(run.dataset.train)
  return {"train": round(1 - n / (run.steps * run.config.batch_size), 4),
          **{s: round(run.inputs[s].layout.padding(), 4)
             for s in ("valid", "test")}}


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
