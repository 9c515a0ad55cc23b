"""End-to-end tests of mcur_jax.train and the entry points on small synthetic data.

Every run uses the `tiny` config on 8 fake CPU devices unless a test says
otherwise. The session's persistent XLA compilation cache
(`conftest.xla_cache`) lets runs of a config compiled before (the resumed
run, the CLI runs, the single IEMOCAP fold) load their executables instead
of compiling them again.
"""

import collections
import dataclasses
import json
import os
import platform
import re
import shutil

import chex
import flax
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from tensorboardX.proto import plugin_hparams_pb2 as hparams_plugin

from data_prep import synthetic
from data_prep import writer
from experiments import launch
from experiments.configs import mosi as mosi_config
from mcur_jax import calibration
from mcur_jax import checkpoint
from mcur_jax import combos
from mcur_jax import context
from mcur_jax import data
from mcur_jax import epoch as epoch_lib
from mcur_jax import fit as fit_lib
from mcur_jax import groups
from mcur_jax import losses
from mcur_jax import metrics
from mcur_jax import model
from mcur_jax import progress
from mcur_jax import regime
from mcur_jax import report
from mcur_jax import run as run_lib
from mcur_jax import schema
from mcur_jax import train
from mcur_jax import validate
from mcur_jax import workdir as workdir_lib
from tests import faults
from tests import runs

# About 7 minutes on 2 cores: conftest schedules the slow modules first.
pytestmark = pytest.mark.slow(minutes=7)

MOSI_CONFIG = runs.MOSI_CONFIG
FRACTIONS = runs.FRACTIONS
UNCERTAINTY = {"ece", "sel_acc_80", "sel_acc_50", "s_err_spearman",
               *calibration.SCORES}
REGRESSION_METRICS = {"acc2_non0", "f1_non0", "acc2_has0", "f1_has0", "mae",
                      "corr", "acc7", "mae_non0", "corr_non0", *UNCERTAINTY}
ALL_COMBOS = runs.ALL_COMBOS
# The model's forward pass, compiled once per input shape.
predict = jax.jit(model.apply, static_argnums=0)


def predict_in_windows(graphdef, params, split, mask, window: int) -> dict:
  """One model's outputs {pred, s} for every utterance of `split` under the
  [N, 3] `mask`, each predicted in its evaluation window
  (`groups.eval_windows`), one window per call: a reference for the packed,
  chunked and vmapped evaluation of `evaluation.make_predict`."""
  split_groups = groups.Groups.of(split)
  out = {"pred": np.zeros((len(split), 1), np.float32),
         "s": np.zeros(len(split), np.float32)}
  for rows in split_groups.index_arrays():
    starts, owner = groups.eval_windows(len(rows), window)
    for w, start in enumerate(starts):
      part = rows[start:start + window]
      inputs = {m: split.features[m][part] for m in schema.MODALITIES}
      inputs.update(segment=np.zeros(len(part), np.int32),
                    rank=split_groups.rank[part],
                    speaker=split_groups.speaker[part])
      found = predict(graphdef, params, inputs, mask[part])
      mine = owner[start:start + len(part)] == w
      for k in out:
        out[k][part[mine]] = np.asarray(found[k])[mine]
  return out


@pytest.fixture(scope="module")
def mosi_dir(tmp_path_factory):
  """Synthetic MOSI at scale 0.15: train/valid/test 193/34/103 utterances."""
  return runs.synthetic_dir(tmp_path_factory, "mosi", 0.15)


tiny = runs.tiny_config


def run(data_dir, workdir, **overrides) -> dict:
  """A tiny run on 8 devices (no figures unless `plots=True`)."""
  return train.train_and_evaluate(
      tiny(data_dir, **{"num_devices": 8, **overrides}), str(workdir))


@pytest.fixture(scope="module")
def baseline(mosi_dir, tmp_path_factory):
  """(workdir, results, COMPILES, programs) of the tiny config: seeds 0 and
  1, 3 epochs, 8 devices; `programs` counts, by name, every program XLA
  compiled (or loaded from the persistent cache) during the run, which
  starts from empty in-memory caches."""
  workdir = tmp_path_factory.mktemp("baseline")
  programs = collections.Counter()

  def listen(event, duration, fun_name="", **_):
    del duration
    if event == "/jax/core/compile/backend_compile_duration":
      programs[fun_name] += 1

  jax.clear_caches()
  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    results = run(mosi_dir, workdir, plots=True)
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)
  return workdir, results, dict(run_lib.COMPILES), dict(programs)


def saved_state(workdir) -> dict:
  """The whole training state in a run's latest checkpoint, as NumPy."""
  mngr = checkpoint.manager(str(workdir))
  try:
    return jax.device_get(mngr.restore(mngr.latest_step(),
                                       args=ocp.args.StandardRestore()
                                       )["state"])
  finally:
    mngr.close()


def checkpoint_steps(workdir) -> list[int]:
  mngr = checkpoint.manager(str(workdir))
  try:
    return list(mngr.all_steps())
  finally:
    mngr.close()


def metric_lines(workdir) -> list[dict]:
  with open(workdir / "metrics.jsonl") as f:
    return [json.loads(line) for line in f]


# Compilation
# -----------


def test_compiles_once(baseline):
  """3 epochs, 2 seeds and 7 combinations trace the epoch and the evaluation
  once each (masks and epochs are data), as results.json records."""
  workdir, results, compiles, _ = baseline
  assert compiles == {"train_epoch": 1, "evaluate": 1}
  assert results["compiles"] == compiles
  saved = json.loads((workdir / "results.json").read_text())
  assert saved["compiles"] == compiles


def test_results_say_where_the_time_went(baseline):
  """results.json splits the run's seconds into its phases, which cover
  the run (setup starts a moment before the run's clock, hence the 0.5 s;
  what follows calibration is assembling the results, milliseconds),
  training into its parts, gives the compile seconds of each program, and
  says what the run ran on."""
  workdir, results, _, _ = baseline
  saved = json.loads((workdir / "results.json").read_text())
  phases = saved["seconds_by_phase"]
  assert list(phases) == ["setup", "train", "evaluate", "calibrate"]
  assert all(v > 0 for v in phases.values())
  assert abs(sum(phases.values()) - saved["seconds"]) < 0.5
  # Training's parts cover it (each rounded to 0.01 s, hence 0.05).
  parts = saved["seconds_within_phase"]["train"]
  assert list(parts) == ["epochs", "validate", "log", "checkpoint", "other"]
  assert all(v >= 0 for v in parts.values()) and parts["epochs"] > 0
  assert abs(sum(parts.values()) - phases["train"]) < 0.05
  evaluate = saved["seconds_within_phase"]["evaluate"]
  assert list(evaluate) == ["valid", "test", "other"]
  assert abs(sum(evaluate.values()) - phases["evaluate"]) < 0.05
  compiled = saved["compile_seconds"]
  assert {"init", "train_epoch", "predict_chunk"} <= set(compiled)
  assert compiled["train_epoch"] < parts["epochs"]
  # And what it ran on (8 fake CPU devices, conftest).
  env = saved["environment"]
  assert env["packages"]["jax"] == jax.__version__
  assert env["packages"]["flax"] == flax.__version__
  assert env["python"] == platform.python_version()
  assert (env["backend"], env["devices"], env["processes"]) == (
      "cpu", f"{len(jax.devices())} x cpu", 1)
  assert env["host_cpu"].endswith(f", {os.cpu_count()} cores")
  assert env["compilation_cache"] == jax.config.jax_compilation_cache_dir


def test_no_device_work_outside_the_compiled_programs(baseline):
  """A run compiles the four programs of training and evaluation and two
  small host-side ones (the schedule's values for the log, the labels'
  categories for the figures, run on the CPU by `transfer.on_host`), and
  nothing else: an eager `jax.numpy` operation on the device would compile
  a program of its own, named by its primitive (`jit(multiply)`), and
  move its operands (a run used to compile 26 of them; about 0.065 s each
  on an H200)."""
  *_, programs = baseline
  assert programs == {f"jit({name})": 1 for name in (
      "init", "train_epoch", "predict_chunk", "update_best", "schedule",
      "category")}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_float32_matmuls_ask_for_true_float32(mosi_dir, tmp_path, dtype):
  """A float32 run's compiled epoch asks for full-precision matmuls
  (HIGHEST on every dot_general), where JAX's default lets a GPU use TF32
  and a TPU bfloat16 passes (`model.matmul_precision`); a bfloat16 run
  keeps the default. On the CPU both precisions give the same bits, so
  the lowered program is what can be checked here."""
  run = run_lib.Run.setup(tiny(mosi_dir, compute_dtype=dtype), str(tmp_path))
  text = run.train_epoch.lower(run.state, run.train, run.tables,
                               run.member_data, 0).as_text()
  dots = [line for line in text.splitlines() if "dot_general" in line]
  assert len(dots) > 10
  highest = ["precision = [HIGHEST, HIGHEST]" in line for line in dots]
  assert all(highest) if dtype == "float32" else not any(highest)


# Data parallelism and vmap over seeds
# ------------------------------------


def test_data_parallel_run_equals_single_device(baseline, mosi_dir, tmp_path,
                                                capsys):
  """A run on 1 device ends with the parameters (to 1e-6: float32
  reduction order, 21 steps) and the metrics (see assert_metrics_close) of
  the same run on 8 devices."""
  workdir, results, _, _ = baseline
  assert jax.device_count() == 8
  single = run(mosi_dir, tmp_path, num_devices=1)
  assert "; 1 device(s);" in capsys.readouterr().out
  sharded_state, single_state = saved_state(workdir), saved_state(tmp_path)
  for key in ("params", "best_params"):
    chex.assert_trees_all_close(single_state[key],
                                sharded_state[key],
                                rtol=0, atol=1e-6)
  np.testing.assert_array_equal(single_state["best_epoch"],
                                sharded_state["best_epoch"])
  dataset = data.load(mosi_dir)
  for split in ("valid", "test"):
    for i in range(2):
      runs.assert_metrics_close(runs.run_metrics(single, split, i),
                                runs.run_metrics(results, split, i),
                                getattr(dataset, split))


# Extended (--full): the GRU, whose whole run on 8 devices
# test_data_parallel_run_equals_single_device checks (MOSI's default).
@pytest.mark.parametrize("kind", [
    "transformer", pytest.param("gru", marks=pytest.mark.extended)])
def test_one_data_parallel_step_equals_single_device(mosi_dir, kind):
  """One SUGR-active step on a batch of windows sharded over 8 devices
  (gradient all-reduce, context attention or GRU across the shards,
  MCB-CL over the global batch) gives the losses (rtol 1e-6) and gradients
  (to 1e-5 of each leaf's largest entry) of 1 device."""
  config = tiny(mosi_dir, context_kind=kind)
  dataset = data.load(mosi_dir)
  # Whole videos, so that the step's windows have context.
  videos = np.unique(dataset.train.group_id)[:6]
  batch = dataset.train.take(np.isin(dataset.train.group_id, videos))
  config.batch_size = 8 * -(-len(batch) // 8)
  graphdef, init = model.create(config, dataset.manifest.dims, 1)
  tx = epoch_lib.make_optimizer(config, steps_per_epoch=1)
  members = regime.members(config, np.arange(len(combos.NAMES)))
  out = {}
  for devices in (1, 8):
    mesh = run_lib.make_mesh(devices)
    repl = NamedSharding(mesh, P())
    member_data = jax.device_put({"seeds": members.seeds,
                                  "draw_weights": members.draw_weights}, repl)
    state = epoch_lib.init_state(init, tx, member_data["seeds"], repl)
    epoch = epoch_lib.make_train_epoch(config, graphdef, tx, "regression",
                                       mesh, len(batch))
    state, stats = epoch(state,
                         *epoch_lib.training_inputs(batch, config, repl),
                         member_data, config.sugr_warmup_epochs)
    # Adam's first moment after one step: (1 - b1) * the clipped gradient.
    grads = optax.tree_utils.tree_get(state["opt_state"], "mu")
    out[devices] = jax.device_get((grads, stats))
  (grads_1, stats_1), (grads_8, stats_8) = out[1], out[8]
  assert not np.allclose(stats_8["sugr_weight"], 1.0)  # SUGR was active.
  assert (stats_8["mcb_loss"] > 0).all()
  chex.assert_trees_all_close(stats_1, stats_8, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(grads_1), jax.tree.leaves(grads_8)):
    assert np.abs(b).max() > 0
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max())


def test_vmapped_seed_equals_seed_alone(baseline, mosi_dir, tmp_path):
  """Seed 1 trained beside seed 0 (vmap) ends as seed 1 trained alone:
  parameters to 1e-6 (float32 rounding of batched kernels), metrics as
  assert_metrics_close says."""
  workdir, results, _, _ = baseline
  alone = run(mosi_dir, tmp_path, seeds=(1,))
  assert alone["seeds"] == [1]
  both, one = saved_state(workdir), saved_state(tmp_path)
  second = lambda tree: jax.tree.map(lambda x: x[1], tree)
  first = lambda tree: jax.tree.map(lambda x: x[0], tree)
  for key in ("params", "best_params"):
    chex.assert_trees_all_close(first(one[key]),
                                second(both[key]),
                                rtol=0, atol=1e-6)
  assert one["best_epoch"][0] == both["best_epoch"][1]
  dataset = data.load(mosi_dir)
  for split in ("valid", "test"):
    runs.assert_metrics_close(runs.run_metrics(alone, split, 0),
                              runs.run_metrics(results, split, 1),
                              getattr(dataset, split))


def test_selection_last_keeps_the_last_epoch(baseline, mosi_dir, tmp_path):
  """`selection=last` keeps every seed's last-epoch parameters and changes
  nothing of the training: its final parameters equal the baseline's
  (validation-selected) run's, which trained the same seeds."""
  workdir, _, _, _ = baseline
  results = run(mosi_dir, tmp_path, selection="last")
  assert results["selected_on"] == "last epoch"
  assert results["selected_epoch"] == [3, 3]
  last, selected = saved_state(tmp_path), saved_state(workdir)
  chex.assert_trees_all_equal(last["params"], selected["params"])
  chex.assert_trees_all_equal(last["best_params"], last["params"])
  np.testing.assert_array_equal(last["best_epoch"], [2, 2])


def test_a_tie_keeps_the_earlier_epoch():
  """Two epochs with the same validation score (the same decisions) tie,
  whichever way float32 rounds the float64 score. The kept best is
  float32, so comparing the float64 score with it would replace the
  earlier epoch where the rounding went down (0.7) and keep it where it
  went up (0.1)."""
  assert float(np.float32(0.7)) < 0.7 and float(np.float32(0.1)) > 0.1
  score = np.array([0.7, 0.1, 0.71])
  best = np.array([0.7, 0.1, 0.7], np.float32)
  np.testing.assert_array_equal(
      epoch_lib.improved_members(score, best, "valid"), [False, False, True])
  np.testing.assert_array_equal(
      epoch_lib.improved_members(score, best, "last"), [True, True, True])


# Resume
# ------


class Interrupted(Exception):
  pass


def best_so_far(out: str) -> dict[int, float]:
  """{epoch: the "best so far" of its progress line} in a run's stdout."""
  return {int(m[1]): float(m[2]) for m in re.finditer(
      r"epoch (\d+)/\d+ .* so far ([-\d.]+)\)", out)}


def test_resume_equals_uninterrupted_run(baseline, mosi_dir, tmp_path,
                                         monkeypatch, capsys):
  """A run killed after logging epoch 2 but before saving its checkpoint
  resumes after epoch 1, drops the stale epoch-2 lines of metrics.jsonl and
  ends bitwise equal to the uninterrupted run: state, metrics.jsonl and
  results. TensorBoard shows the uninterrupted run's logs, each (tag,
  epoch) once: the resumed writer purges the stale epoch 2."""
  workdir, results, _, _ = baseline
  update = progress.Progress.update

  def update_then_die(self, epoch, *args):
    update(self, epoch, *args)
    if epoch == 2:
      raise Interrupted

  monkeypatch.setattr(progress.Progress, "update", update_then_die)
  with pytest.raises(Interrupted):
    run(mosi_dir, tmp_path)
  monkeypatch.undo()
  assert checkpoint_steps(tmp_path) == [1]
  assert [line["epoch"] for line in metric_lines(tmp_path)] == [1, 1, 2, 2]
  assert set(runs.tensorboard_scalars(tmp_path / "tb")["train/loss"]) == {1, 2}
  before = best_so_far(capsys.readouterr().out)
  init, starts = progress.Progress.__init__, []

  def init_and_record(self, *args, **kwargs):
    init(self, *args, **kwargs)
    starts.append(self.best)

  monkeypatch.setattr(progress.Progress, "__init__", init_and_record)
  resumed = run(mosi_dir, tmp_path)
  monkeypatch.undo()
  out = capsys.readouterr().out
  assert "resuming after epoch 1" in out
  # The progress line's best counts the epochs before the resume (it once
  # restarted from the first resumed epoch), so its lines are those of the
  # interrupted run.
  assert starts == [pytest.approx(before[1], abs=5e-5)]  # Printed to 4 places.
  assert best_so_far(out)[2] == before[2]
  assert checkpoint_steps(tmp_path) == [2, 3]
  assert ((tmp_path / "metrics.jsonl").read_text()
          == (workdir / "metrics.jsonl").read_text())
  chex.assert_trees_all_equal(saved_state(tmp_path), saved_state(workdir))
  for key in ("test", "valid", "selected_epoch"):
    assert resumed[key] == results[key]
  for folder in ("tb", "tb/hparams"):
    assert (runs.tensorboard_scalars(tmp_path / folder)
            == runs.tensorboard_scalars(workdir / folder))


def test_a_stop_requested_before_the_first_epoch_trains_nothing(mosi_dir,
                                                               tmp_path):
  """A stop requested during setup (Ctrl-C while compiling) stops the run
  before its first epoch: Interrupted, no checkpoint, the same command
  starts it."""
  fit_lib.STOP_REQUESTED.set()
  try:
    with pytest.raises(fit_lib.Interrupted, match="stopped before epoch 1: "):
      run(mosi_dir, tmp_path, num_devices=1)
  finally:
    fit_lib.STOP_REQUESTED.clear()
  assert not checkpoint_steps(tmp_path)


def test_a_call_from_python_records_its_data_absolute(mosi_dir, tmp_path,
                                                      monkeypatch):
  """config.data_dir given relative (a notebook's) is recorded absolute, so
  that evaluate and predict find the data from any directory; an empty one
  is a ConfigError saying what to give, before any file is written."""
  with pytest.raises(validate.ConfigError, match="config.data_dir: empty"):
    run("", tmp_path / "none")
  assert not (tmp_path / "none").exists()
  monkeypatch.chdir(mosi_dir.parent)
  fit_lib.STOP_REQUESTED.set()  # Setup alone writes config.json.
  try:
    with pytest.raises(fit_lib.Interrupted):
      run(mosi_dir.name, tmp_path, num_devices=1)
  finally:
    fit_lib.STOP_REQUESTED.clear()
  recorded = json.loads((tmp_path / "config.json").read_text())["data_dir"]
  assert recorded == str(mosi_dir.resolve())


def test_progress_follows_current_stdout(capsys):
  """The progress lines of a run, resumed or not, go to sys.stdout as it is
  when the run happens (here pytest's capsys), as its other lines do."""
  progress.Progress(3).update(2, {"loss": np.array([1.0])}, np.array([0.5]),
                            "f1_non0")
  assert "epoch 2/3" in capsys.readouterr().out


def test_progress_gives_the_pace_without_the_compiling_epoch(capsys):
  """The time per epoch leaves out the first epoch of a run (it compiles);
  the time left is that rate times the epochs to go; the last line gives
  the time of the epochs this process ran (here, resumed after 1 of 5)."""
  ticks = iter([0.0, 30.0, 32.0, 36.0, 39.0])
  bar = progress.Progress(5, clock=lambda: next(ticks))
  for epoch in (2, 3, 4, 5):
    bar.update(epoch, {"loss": np.array([1.0])}, np.array([0.5]), "wf1")
  lines = capsys.readouterr().out.splitlines()
  assert lines[0].endswith("; 30 s, compiling included")
  assert lines[1].endswith("; 2 s/epoch, 0:04 of training left")
  # The mean of 2 and 4:
  assert lines[2].endswith("; 3 s/epoch, 0:03 of training left")
  assert lines[3].endswith("; 0:39 for 4 epochs")
  ticks = iter([0.0, 5.0, 5.25, 5.375])  # Fast epochs keep 3 digits.
  bar = progress.Progress(9, clock=lambda: next(ticks))
  for epoch in (1, 2, 3):
    bar.update(epoch, {"loss": np.array([1.0])}, np.array([0.5]), "wf1")
  assert capsys.readouterr().out.splitlines()[-1].endswith(
      "; 0.188 s/epoch, 0:01 of training left")  # Mean of 0.25 and 0.125.
  ticks = iter([0.0, 300.0, 1534.0])  # From 100 s, minutes and seconds.
  bar = progress.Progress(3, clock=lambda: next(ticks))
  for epoch in (1, 2):
    bar.update(epoch, {"loss": np.array([1.0])}, np.array([0.5]), "wf1")
  assert [line.split("; ")[-1] for line in capsys.readouterr().out.splitlines()
          ] == ["5:00, compiling included",
                "20:34/epoch, 20:34 of training left"]
  assert progress.clock_time(3725.4) == "1:02:05"


# Divergence
# ----------


@pytest.fixture
def nan_sugr(monkeypatch):
  """SUGR's loss NaN once active (after the tiny config's 1 warm-up epoch)."""
  monkeypatch.setattr(losses, "sugr", faults.sugr_with_nan_bound(losses.sugr))


def test_nan_loss_raises_and_keeps_last_good_checkpoint(mosi_dir, tmp_path,
                                                         nan_sugr):
  """A loss that turns NaN in epoch 2 (SUGR starts after 1 warm-up epoch
  with a NaN clip bound) raises TrainingDiverged naming the epoch, the
  seeds and the kept checkpoint; epoch 1's checkpoint and log lines
  stay."""
  with pytest.raises(fit_lib.TrainingDiverged) as info:
    run(mosi_dir, tmp_path)
  message = str(info.value)
  assert message.startswith("epoch 2: ")
  assert "NaN/inf for seed 0, seed 1;" in message
  assert "last good checkpoint (after epoch 1)" in message
  assert checkpoint_steps(tmp_path) == [1]
  assert [(line["epoch"], line["seed"]) for line in metric_lines(tmp_path)
          ] == [(1, 0), (1, 1)]
  assert not (tmp_path / "results.json").exists()


def test_checkpoint_seconds_leaves_only_the_last_epoch(mosi_dir, tmp_path):
  """With `checkpoint_seconds` longer than the run, only the last epoch is
  saved (the tiny config's 0 saves every epoch: the tests above)."""
  run(mosi_dir, tmp_path, checkpoint_seconds=1e6)
  assert checkpoint_steps(tmp_path) == [3]
  assert (tmp_path / "results.json").exists()


def test_nan_loss_before_any_checkpoint_says_so(mosi_dir, tmp_path,
                                               nan_sugr):
  """With no checkpoint saved yet (checkpoint_every 2, NaN in epoch 2) the
  message says there is none instead of naming an epoch."""
  with pytest.raises(fit_lib.TrainingDiverged) as info:
    run(mosi_dir, tmp_path, checkpoint_every=2)
  assert checkpoint_steps(tmp_path) == []
  message = str(info.value)
  assert "None" not in message
  assert "no checkpoint" in message


def test_cli_nan_loss_exits_3(mosi_dir, tmp_path):
  """Through the CLI a diverged run exits with status 3 and one `error:`
  line, no traceback."""
  result = runs.cli("--data_dir", mosi_dir, "--workdir", tmp_path, "--config",
                    f"{MOSI_CONFIG}:tiny", fault="nan_sugr")
  assert result.returncode == 3, result.stderr
  [line] = runs.error_lines(result.stderr)
  assert line.startswith("error: epoch 2: training loss is NaN/inf")
  assert "Traceback" not in result.stderr
  assert checkpoint_steps(tmp_path) == [1]


# SUGR
# ----


def test_sugr_down_weights_corrupted_labels(tmp_path_factory):
  """The uncertainty head gives the 10 % corrupted training labels a lower
  SUGR weight w = exp(-clip(s)) than the clean ones.

  A label is corrupted at random, independently of the features, so only
  fitting the training samples themselves can reveal it: w is measured on
  the training split, with the last parameters (model selection may pick an
  epoch before SUGR took hold), pooled over 3 seeds.
  """
  data_dir = tmp_path_factory.mktemp("sugr") / "mosi"
  writer.write(synthetic.generate("mosi", 1, 0.3), data_dir)
  workdir = tmp_path_factory.mktemp("sugr-run")
  # The learning rate and dropout that let the tiny model fit its training
  # split in 20 epochs (the MOSI defaults are tuned for real data).
  config = tiny(data_dir, seeds=(0, 1, 2), num_epochs=20,
                sugr_warmup_epochs=2, num_devices=1, checkpoint_every=20,
                learning_rate=1e-3, dropout=0.1)
  train.train_and_evaluate(config, str(workdir))
  params = saved_state(workdir)["params"]
  dataset = data.load(data_dir)
  graphdef, _ = model.create(config, dataset.manifest.dims, 1)
  split = dataset.train
  corrupted = split.extras["corrupted"] == 1
  assert corrupted.sum() == round(0.1 * len(split))
  weights = []
  for i in range(3):
    out = predict_in_windows(graphdef, jax.tree.map(lambda x: x[i], params),
                             split, split.available, config.context_window)
    s = np.clip(np.asarray(out["s"]), -config.sugr_s_max, config.sugr_s_max)
    weights.append(np.exp(-s))
  weights = np.array(weights)
  ratio = weights[:, corrupted].mean() / weights[:, ~corrupted].mean()
  assert ratio < 0.9, ratio
  for w in weights:
    assert w[corrupted].mean() < w[~corrupted].mean()


# Padding and absent modalities
# ------------------------------


@pytest.mark.parametrize("kind", context.CONTEXT_KINDS)
def test_padding_changes_neither_loss_nor_gradient(mosi_dir, kind):
  """The loss and its gradient over a batch of windows are those of the
  same batch with padding positions and whole padding windows added (to
  float rounding, 1e-6 relative): padding counts in no sum and no count,
  and no real utterance attends to it or reads it through the GRU.
  Dropout is off and the combination fixed (atv), since their random
  draws depend on the batch's shape. The batch of 5 groups (107
  utterances in windows of 8) is long enough for the context's
  block-local attention."""
  config = tiny(mosi_dir, dropout=0.0, sugr_warmup_epochs=0,
                mcb_same_group_positives=False, context_kind=kind)
  dataset = data.load(mosi_dir)
  split = dataset.train
  graphdef, init = model.create(config, dataset.manifest.dims, 1)
  params = init(jax.random.key(0))
  loss_fn = epoch_lib.make_loss_fn(config, graphdef, "regression")
  split_groups = groups.Groups.of(split)
  rows = np.concatenate(split_groups.index_arrays()[:5])
  window = config.context_window
  rank = split_groups.rank[rows]
  group = np.repeat(np.arange(5), split_groups.length[:5])
  segment = group * 100 + rank // window

  def batch_of(index, segment, group):
    real = segment != groups.PAD
    out = {m: split.features[m][index] for m in schema.MODALITIES}
    out.update(available=split.available[index], label=split.label[index],
               speaker=split_groups.speaker[index],
               rank=np.where(real, split_groups.rank[index], 0),
               segment=segment, group=group)
    return jax.tree.map(jnp.asarray, out)

  pad = np.full(7, groups.PAD)
  # Padding goes where the layouts put it, between windows (each window is
  # a contiguous run of positions, context.Context): at the window start
  # nearest the middle, and at the end.
  starts = np.flatnonzero(np.r_[True, segment[1:] != segment[:-1]])
  cut = starts[np.argmin(np.abs(starts - len(rows) // 2))]
  padded = batch_of(
      np.concatenate([rows[:cut], np.zeros(7, int), rows[cut:],
                      np.zeros(7, int)]),
      np.concatenate([segment[:cut], pad, segment[cut:], pad]),
      np.concatenate([group[:cut], pad, group[cut:], pad]))
  atv = jnp.asarray(np.eye(7)[combos.NAMES.index("atv")], jnp.float32)
  grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
  (loss, stats), grads = grad_fn(params, batch_of(rows, segment, group),
                                 jax.random.key(1), 5, atv)
  (loss_p, stats_p), grads_p = grad_fn(params, padded, jax.random.key(1), 5,
                                       atv)
  assert stats["mcb_loss"] > 0 and not np.isclose(stats["sugr_weight"], 1)
  chex.assert_trees_all_close(stats_p, stats, rtol=1e-6)
  np.testing.assert_allclose(loss_p, loss, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(grads_p), jax.tree.leaves(grads)):
    np.testing.assert_allclose(a, b, rtol=0,
                               atol=1e-6 * max(np.abs(b).max(), 1e-12))


@pytest.fixture(scope="module")
def no_video_dir(tmp_path_factory):
  """Synthetic MOSI without any video: dims video 0, all absent."""
  table = synthetic.generate("mosi", 0, 0.15)
  rows = table.rows
  video = schema.MODALITIES.index("video")
  available = rows.available.copy()
  available[:, video] = False
  table.rows = dataclasses.replace(
      rows, features={**rows.features,
                      "video": np.zeros((len(rows), 0), np.float32)},
      available=available)
  out = tmp_path_factory.mktemp("data") / "mosi_no_video"
  writer.write(table, out)
  return out


def test_dataset_without_video_trains_on_what_it_has(no_video_dir, tmp_path):
  """A dataset with no video trains and evaluates: no video encoder, the
  combinations that need video are left out of every table, of Avg and of
  the figures, results.json says why, and the missing-rate masks never use
  video."""
  results = run(no_video_dir, tmp_path, num_epochs=1, plots=True)
  assert results["combinations"] == ["a", "t", "at"]
  assert results["left_out"] == {
      c: "needs video, which the dataset does not have"
      for c in ("v", "av", "tv", "atv")}
  for split in ("test", "valid"):
    assert set(results[split]) == {"a", "t", "at", "avg"}
    for i in range(2):
      assert results[split]["avg"]["f1_non0"]["per_run"][i] == pytest.approx(
          np.mean([results[split][c]["f1_non0"]["per_run"][i]
                   for c in ("a", "t", "at")]))
  assert set(results["test_samples_without_modality"]) == {"a", "t", "at"}
  params = saved_state(tmp_path)["params"]
  assert set(params["encoders"]) == {"audio", "text"}
  # At rate 0.7 over 2 modalities every utterance keeps exactly one.
  assert results["missing_rate"]["samples_without_modality"]["0.7"] == 0
  md = (tmp_path / "results.md").read_text()
  assert "| method | a | t | at | Avg |" in md and "| atv |" not in md
  assert sorted(os.listdir(tmp_path / "figures")) == runs.FIGURES


# results.json and restore
# ------------------------


def test_results_json(baseline, mosi_dir):
  """results.json: selected on valid, per-combination and Avg test metrics
  with mean/std/per_run over the seeds, fractions in [0, 1], the synthetic
  flag, the test samples left without a modality, and the missing-rate
  protocol per rate; results.md and the figures beside it."""
  workdir, results, _, _ = baseline
  saved = json.loads((workdir / "results.json").read_text())
  assert saved == results
  assert saved["selected_on"] == "valid"
  assert saved["dataset"] == "mosi" and saved["headline"] == "f1_non0"
  assert saved["data"] == {"dir": str(mosi_dir), "format": "synthetic",
                           "synthetic": True}
  assert saved["seeds"] == [0, 1]
  assert saved["combinations"] == list(combos.NAMES)
  assert saved["left_out"] == {}
  n = len(data.load(mosi_dir).train)
  steps = groups.train_steps(n, 32)
  assert saved["padding"]["train"] == pytest.approx(1 - n / (steps * 32),
                                                    abs=1e-4)
  # Evaluation: the padded share of the test split's chunk layout for the
  # tiny config's windows (8) and chunks (64 slots, a multiple of the 8
  # devices, with the text window mean); slots that repeat an utterance as
  # context are no padding.
  layout = groups.EvalLayout.of(groups.Groups.of(data.load(mosi_dir).test),
                                8, 64, per_slot=True)
  assert saved["padding"]["test"] == round(layout.padding(), 4)
  assert 0 < saved["padding"]["test"] < 1
  assert len(saved["selected_epoch"]) == 2
  assert all(1 <= e <= 3 for e in saved["selected_epoch"])
  for split in ("test", "valid"):
    assert set(saved[split]) == ALL_COMBOS
    for c, per_metric in saved[split].items():
      assert set(per_metric) == REGRESSION_METRICS
      for k, v in per_metric.items():
        assert len(v["per_run"]) == 2
        assert v["mean"] == pytest.approx(np.mean(v["per_run"]))
        assert v["std"] == pytest.approx(np.std(v["per_run"], ddof=1))
        if k in FRACTIONS:
          assert all(0 <= x <= 1 for x in v["per_run"]), (c, k)
    for i in range(2):
      assert saved[split]["avg"]["f1_non0"]["per_run"][i] == pytest.approx(
          np.mean([saved[split][c]["f1_non0"]["per_run"][i]
                   for c in combos.NAMES]))
  test = data.load(mosi_dir).test
  no_video = int((~test.available[:, schema.MODALITIES.index("video")]).sum())
  assert no_video == round(0.1 * len(test))
  assert saved["test_samples_without_modality"] == {
      c: no_video if c == "v" else 0 for c in combos.NAMES}
  rates = saved["missing_rate"]
  assert (rates["split"], rates["draws"]) == ("test", 5)
  assert list(rates["rates"]) == [
      f"{r:.1f}" for r in mosi_config.get_config().missing_rates]
  for per_metric in rates["rates"].values():
    assert set(per_metric) == REGRESSION_METRICS - UNCERTAINTY
    assert len(per_metric["f1_non0"]["per_run"]) == 2
  # Natively absent video: a sample keeping only video at some rate has none.
  assert rates["samples_without_modality"]["0.0"] == 0
  assert rates["samples_without_modality"]["0.7"] > 0
  # At rate 0 every sample keeps all it has: the atv column of the table.
  # (The mean of 5 identical draws, up to rounding.)
  np.testing.assert_allclose(
      rates["rates"]["0.0"]["f1_non0"]["per_run"],
      saved["test"]["atv"]["f1_non0"]["per_run"], rtol=1e-12)
  md = (workdir / "results.md").read_text()
  assert "| MCUR | " in md and "SYNTHETIC DATA" in md
  assert sorted(os.listdir(workdir / "figures")) == runs.FIGURES


def test_restore_for_inference_reproduces_test_metrics(baseline, mosi_dir):
  """Seed 0's restored best model, predicting each test utterance in its
  window under `atv` and native availability, one window at a time, gives
  results.json's test metrics (the predictions round differently outside
  training's packed, vmapped, chunked evaluation: assert_metrics_close)."""
  workdir, results, _, _ = baseline
  graphdef, params, config, manifest = checkpoint.restore_for_inference(
      str(workdir))
  assert list(config.seeds) == [0, 1]
  test = data.load(mosi_dir).test
  out = predict_in_windows(graphdef, jax.tree.map(lambda x: x[0], params),
                           test, test.available, config.context_window)
  got = metrics.compute(manifest.task, out["pred"], test.label, out["s"],
                        config.task_loss)
  want = {k: v["per_run"][0] for k, v in results["test"]["atv"].items()
          if k not in calibration.SCORES}  # Those need the calibration.
  runs.assert_metrics_close({"atv": got}, {"atv": want}, test)


def test_tensorboard_logs_show_metrics_jsonl_and_results(baseline):
  """WORKDIR/tb/ holds, once per epoch, metrics.jsonl's numbers: the
  learning rate, the means over the seeds of the training stats and of the
  validation headline per combination and Avg, and each seed's loss and
  Avg; WORKDIR/tb/hparams/ one HPARAMS session, the config with
  results.json's final metrics."""
  workdir, results, _, _ = baseline
  lines = metric_lines(workdir)
  logged = runs.tensorboard_scalars(workdir / "tb")
  for epoch in (1, 2, 3):
    mine = [line for line in lines if line["epoch"] == epoch]
    mean = lambda values: float(np.mean(list(values)))
    want = {"learning_rate": mine[0]["learning_rate"],
            "valid/avg/f1_non0": mean(
                line["valid_avg_f1_non0"] for line in mine)}
    for key in ("loss", "task_loss", "mcb_loss", "sugr_weight"):
      want[f"train/{key}"] = mean(line["train"][key] for line in mine)
    for c in combos.NAMES:
      want[f"valid/{c}/f1_non0"] = mean(line["valid"][c]["f1_non0"]
                                        for line in mine)
    for line in mine:
      want[f"train/loss/seed{line['seed']}"] = line["train"]["loss"]
      want[f"valid/avg/f1_non0/seed{line['seed']}"] = line[
          "valid_avg_f1_non0"]
    assert {tag: steps[epoch] for tag, steps in logged.items()} == {
        tag: [pytest.approx(v, rel=1e-6)] for tag, v in want.items()}
  rates = [lines[2 * e]["learning_rate"] for e in range(3)]
  assert 0 < rates[0] < rates[1] <= 1e-3 and rates[2] < rates[1]

  events = runs.tensorboard_events(workdir / "tb" / "hparams")
  plugin = {v.tag: hparams_plugin.HParamsPluginData.FromString(
      v.metadata.plugin_data.content) for e in events for v in e.summary.value
            if v.metadata.plugin_data.plugin_name == "hparams"}
  config = plugin["_hparams_/session_start_info"].session_start_info.hparams
  assert config["hidden_dim"].number_value == 32
  assert config["sugr"].bool_value and config["seeds"].string_value == "(0, 1)"
  assert config["task_loss"].string_value == "mse"
  final = runs.tensorboard_scalars(workdir / "tb" / "hparams")
  assert final["hparam/test/avg/mae"] == {3: [pytest.approx(
      results["test"]["avg"]["mae"]["mean"], rel=1e-6)]}
  assert final["hparam/test/at/f1_non0"] == {3: [pytest.approx(
      results["test"]["at"]["f1_non0"]["mean"], rel=1e-6)]}
  assert final["hparam/valid/avg/f1_non0"] == {3: [pytest.approx(
      results["valid"]["avg"]["f1_non0"]["mean"], rel=1e-6)]}
  experiment = plugin["_hparams_/experiment"].experiment
  assert {m.name.tag for m in experiment.metric_infos} == set(final)


# Entry points
# ------------


def test_cli_trains_and_prints_table(baseline, mosi_dir, tmp_path):
  """`python -m experiments.mosi --data_dir ... --config ...:tiny` exits 0,
  prints the test table and writes the results of the same in-process run."""
  _, results, _, _ = baseline
  result = runs.cli("--data_dir", mosi_dir, "--workdir", tmp_path, "--config",
                    f"{MOSI_CONFIG}:tiny", "--config.seeds=0,1",
                    env=runs.environment(XLA_FLAGS=runs.xla_flags(8)))
  assert result.returncode == 0, result.stderr
  assert report.table(results) in result.stdout
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["test"] == results["test"]


def test_cli_without_data_uses_synthetic_and_says_so(tmp_path):
  """Without --data_dir and without prepared/mosi in the working directory
  the CLI trains on generated MOSI-like data and says so in its first line
  and in results.json."""
  result = runs.cli("--workdir", "run", "--config", f"{MOSI_CONFIG}:tiny",
               "--config.seeds=0", "--config.num_epochs=1", cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  first = result.stdout.splitlines()[0]
  assert first.startswith("NOTE: ") and "SYNTHETIC mosi-like data" in first
  saved = json.loads((tmp_path / "run" / "results.json").read_text())
  assert saved["data"]["synthetic"] and saved["data"]["format"] == "synthetic"
  assert ((tmp_path / saved["data"]["dir"]).resolve()
          == (tmp_path / "run" / "synthetic-mosi").resolve())
  assert "[SYNTHETIC DATA]" in result.stdout


def test_rerun_of_a_moved_workdir_finds_its_synthetic_data(tmp_path,
                                                           monkeypatch):
  """A workdir moved with its synthetic data resumes without --data_dir:
  the data is known by its manifest's checksum (data.json), not its old
  path; without data.json, by its path; a run's own synthetic data,
  deleted, is generated again."""
  config = mosi_config.get_config("tiny")
  workdir = tmp_path / "moved"
  out = workdir / "synthetic-mosi"
  writer.write(synthetic.generate("mosi", 0, 0.02), out)
  config.data_dir = str(tmp_path / "before" / "synthetic-mosi")
  (workdir / "config.json").write_text(json.dumps(config.to_dict()))
  (workdir / "data.json").write_text(json.dumps(
      {"manifest_sha256": workdir_lib.data_sha256(str(out))}))
  monkeypatch.chdir(tmp_path)
  assert launch.find_data(config, "moved") == os.path.join(
      "moved", "synthetic-mosi")
  (workdir / "data.json").write_text(json.dumps({"manifest_sha256": "0"}))
  with pytest.raises(validate.ConfigError, match=re.escape(
      "resume it, or a new --workdir (moved/synthetic-mosi holds other "
      "data)")):
    launch.find_data(config, "moved")
  # A data.json that cannot be read: left to the resume checks.
  (workdir / "data.json").write_text("{")
  assert launch.find_data(config, "moved") == os.path.join(
      "moved", "synthetic-mosi")
  # No data.json (a run from before it): known by its path alone.
  (workdir / "data.json").unlink()
  with pytest.raises(validate.ConfigError, match="holds a run on"):
    launch.find_data(config, "moved")
  config.data_dir = str(out)
  (workdir / "config.json").write_text(json.dumps(config.to_dict()))
  assert launch.find_data(config, "moved") == os.path.join(
      "moved", "synthetic-mosi")
  # Its own synthetic data, deleted: generated again.
  shutil.rmtree(out)
  assert launch.find_data(config, "moved") == os.path.join(
      "moved", "synthetic-mosi")
  assert (out / "manifest.json").exists()


@pytest.mark.parametrize("given", ["missing", "features.npz"])
def test_cli_data_dir_not_prepared_exits_2(tmp_path, given):
  """A --data_dir that is not a prepared directory (none there, or a
  feature file not yet converted): status 2 and one `error:` line naming
  it and the converter, before anything is written."""
  (tmp_path / "features.npz").write_bytes(b"PK")
  result = runs.cli("--data_dir", tmp_path / given, "--workdir",
                    tmp_path / "run")
  assert result.returncode == 2, result.stderr
  assert runs.error_lines(result.stderr) == [
      f"error: --data_dir: {tmp_path / given}: not a prepared directory (no "
      f"{schema.MANIFEST}); python -m data_prep.convert prepares one from "
      "feature files (docs/data.md)"]
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "run").exists()


def test_rerun_without_its_data_dir_names_the_runs_data(tmp_path,
                                                        monkeypatch):
  """A run's workdir trained again without the --data_dir it started with
  (and no prepared/<dataset> here): an error naming the run's data, before
  any synthetic data is generated for it."""
  config = mosi_config.get_config("tiny")
  config.data_dir = str(tmp_path / "elsewhere")
  for workdir in (tmp_path / "run", tmp_path / "folds" / "fold1"):
    workdir.mkdir(parents=True)
    (workdir / "config.json").write_text(json.dumps(config.to_dict()))
  monkeypatch.chdir(tmp_path)
  for workdir in ("run", "folds"):
    with pytest.raises(validate.ConfigError, match=re.escape(
        f"--data_dir: not given, and {workdir} holds a run on "
        f"{tmp_path / 'elsewhere'}: give --data_dir")):
      launch.find_data(config, workdir)
    assert not (tmp_path / workdir / "synthetic-mosi").exists()
