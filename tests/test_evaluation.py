"""Regimes, evaluation protocols, EMA and `experiments.evaluate` on small synthetic MOSI.

Runs use the `tiny` config on the 8 fake CPU devices of conftest.
"""

import copy
import csv
import dataclasses
import json
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import chex
import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mcur_jax import calibration
from mcur_jax import checkpoint
from mcur_jax import combos
from mcur_jax import data
from mcur_jax import epoch as epoch_lib
from mcur_jax import evaluation
from mcur_jax import inference
from mcur_jax import metrics
from mcur_jax import model
from mcur_jax import npz_columns
from mcur_jax import npz_input
from mcur_jax import predict
from mcur_jax import regime
from mcur_jax import report
from mcur_jax import run as run_lib
from mcur_jax import schema
from mcur_jax import train
from mcur_jax import validate
from mcur_jax import workdir as workdir_lib
from tests import runs

# About 4 minutes on 2 cores: conftest schedules the slow modules first.
pytestmark = pytest.mark.slow(minutes=4)

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def mosi_dir(tmp_path_factory):
  return runs.synthetic_dir(tmp_path_factory, "mosi", 0.15)


tiny = runs.tiny_config


def final_params(workdir) -> dict:
  mngr = checkpoint.manager(str(workdir))
  try:
    state = mngr.restore(mngr.latest_step(), args=ocp.args.StandardRestore())
  finally:
    mngr.close()
  return jax.device_get(state["state"])


# Members and routing
# -------------------


ALL = np.arange(len(combos.NAMES))
# The combinations of a dataset without video.
NO_VIDEO = np.array([combos.NAMES.index(c) for c in ("a", "t", "at")])


def test_members_of_each_regime():
  config = ml_collections.ConfigDict({
      "seeds": (3, 5), "regime": "mixed", "combo_weights": (1.0,) * 7})
  mixed = regime.members(config, ALL)
  assert len(mixed) == 2 and not mixed.per_condition
  np.testing.assert_array_equal(mixed.owner, [[0] * 7, [1] * 7])
  np.testing.assert_allclose(mixed.selection.sum(1), 1)
  config.regime = "per_condition"
  per = regime.members(config, ALL)
  assert len(per) == 14 and per.per_condition
  np.testing.assert_array_equal(per.seeds, [3] * 7 + [5] * 7)
  # Member owner[s, c] is seed s trained and selected on combination c only.
  for s, seed in enumerate((3, 5)):
    for c in range(7):
      m = per.owner[s, c]
      assert per.seeds[m] == seed and per.condition[m] == c
      np.testing.assert_array_equal(per.draw_weights[m], np.eye(7)[c])
      np.testing.assert_array_equal(per.selection[m], np.eye(7)[c])
  assert per.describe(per.owner[1, 3]) == {"seed": 5, "condition": "at"}


def test_members_serve_only_the_realisable_combinations():
  """Without video: the mixed members draw and are selected on a, t, at
  only; per-condition trains one model per seed for each of the three."""
  config = ml_collections.ConfigDict({
      "seeds": (3, 5), "regime": "mixed", "combo_weights": (1.0,) * 7})
  mixed = regime.members(config, NO_VIDEO)
  on = np.isin(ALL, NO_VIDEO)
  np.testing.assert_array_equal(mixed.draw_weights > 0, np.tile(on, (2, 1)))
  np.testing.assert_allclose(mixed.selection, np.tile(on / 3, (2, 1)))
  np.testing.assert_array_equal(mixed.owner, [np.where(on, 0, -1),
                                              np.where(on, 1, -1)])
  config.regime = "per_condition"
  per = regime.members(config, NO_VIDEO)
  assert len(per) == 6
  np.testing.assert_array_equal(per.condition, np.tile(NO_VIDEO, 2))
  np.testing.assert_array_equal(per.owner[:, ~on], -1)
  for s in range(2):
    for c in NO_VIDEO:
      m = per.owner[s, c]
      np.testing.assert_array_equal(per.draw_weights[m], np.eye(7)[c])


def test_config_check_names_the_field(mosi_dir):
  """Values that cannot run raise ConfigError naming the config field."""
  manifest = data.load(mosi_dir).manifest
  for field, value, match in (
      ("regime", "per_sample", "config.regime: 'per_sample'"),
      ("combo_weights", (0.0,) * 7, "config.combo_weights"),
      ("task_loss", "ce", "config.task_loss: 'ce'"),
      ("num_heads", 3, "config.num_heads: 3 does not divide"),
      ("selection", "test", "config.selection: 'test', not one of"),
      ("ema_decay", 1.0, r"config.ema_decay: 1.0, must be in \[0, 1\)"),
      ("checkpoint_seconds", float("nan"),
       "config.checkpoint_seconds: nan, must be >= 0"),
      ("checkpoint_seconds", -1.0,
       "config.checkpoint_seconds: -1.0, must be >= 0"),
      ("tau", 0.0, "config.tau: 0.0, must be > 0"),
      ("seeds", (0, 0), r"config.seeds: \(0, 0\): need distinct integers"),
      ("seeds", (0.5, 1.7), r"config.seeds: \(0.5, 1.7\): need distinct"),
      ("learning_rate", -1e-3, "config.learning_rate: -0.001, must be > 0"),
      ("dropout", 1.5, r"config.dropout: 1.5, must be in \[0, 1\)"),
      ("final_lr_fraction", 2.0, r"config.final_lr_fraction: 2.0, must be "
       r"in \[0, 1\]"),
      ("weight_decay", -1.0, "config.weight_decay: -1.0, must be >= 0"),
      ("missing_rates", ("",), "config.missing_rates: '' outside"),
      ("dataset", "mosei", "config.dataset: 'mosei', but the data in .* is "
       "'mosi': set config.dataset = 'mosi'"),
      ("missing_rates", (0.3, 0.35, 0.30000000001),
       "config.missing_rates: 0.3 listed twice"),
      ("context_window", 40, "config.context_window: 40 exceeds batch_size "
       "32: training windows"),
      ("sugr_s_max", -1.0, "config.sugr_s_max: -1.0, must be > 0"),
      ("sugr_beta", 1.5, r"config.sugr_beta: 1.5, must be in \[0, 1\]"),
      ("hidden_dim", 0, "config.hidden_dim: 0, must be >= 1"),
      ("mlp_ratio", 0, "config.mlp_ratio: 0, must be >= 1"),
      ("proj_dim", 0, "config.proj_dim: 0, must be >= 1"),
      ("num_layers", -1, "config.num_layers: -1, must be >= 0"),
      ("warmup_epochs", -1, "config.warmup_epochs: -1, must be >= 0"),
      ("sugr_warmup_epochs", -1, "config.sugr_warmup_epochs: -1, must be "
       ">= 0"),
      ("full_modality_epochs", -1, "config.full_modality_epochs: -1, must "
       "be >= 0"),
      ("missing_rate_draws", 0, "config.missing_rate_draws: 0, must be >= 1"),
      ("missing_rate_seed", -1, "config.missing_rate_seed: -1, must be >= 0"),
      ("context_window", 1000, "config.context_window: 1000 exceeds"),
      ("batch_size", 12, r"config.batch_size: 12 does not divide by the 8 "
       r"devices \(config.num_devices chooses how many are used\)"),
      ("dataset", "mosei", "config.dataset: 'mosei'"),
      ("speaker_norm", "audio,voice", "config.speaker_norm: 'voice'"),
      ("validation", "speakers", "config.validation: 'speakers'"),
      ("context_means", "voice", "config.context_means: 'voice'"),
      ("context_kind", "lstm", "config.context_kind: 'lstm', not one of"),
      ("validation", "session", "config.validation: 'session' needs a "
       "dataset with folds"),
      ("fold", 2, "config.fold: 2: the data in .* has fixed "
       "train/valid/test splits: 0")):
    with pytest.raises(validate.ConfigError, match=match):
      validate.check(tiny(mosi_dir, **{field: value}), manifest, 8)
  validate.check(tiny(mosi_dir), manifest, 8)
  for devices in (-1, 9):
    with pytest.raises(validate.ConfigError, match=(
        f"config.num_devices: {devices}, must be 0 .* \\(on a CPU, XLA_FLAGS="
        "--xla_force_host_platform_device_count=N set before the run")):
      validate.check_devices(tiny(mosi_dir, num_devices=devices), 8)
  for devices in (0, 1, 8):
    validate.check_devices(tiny(mosi_dir, num_devices=devices), 8)
  # Several processes: every device, or a process would feed none.
  with pytest.raises(validate.ConfigError, match="config.num_devices: 4: a "
                     "job of 2 processes uses every device"):
    validate.check_devices(tiny(mosi_dir, num_devices=4), 8, processes=2)
  for devices in (0, 8):
    validate.check_devices(tiny(mosi_dir, num_devices=devices), 8, 2)
  # A context Transformer needs its heads to divide the width; the GRU
  # has no heads, so the same value runs there.
  with pytest.raises(validate.ConfigError,
                     match="config.context_heads: 3 does not divide"):
    validate.check(tiny(mosi_dir, context_kind="transformer",
                        context_heads=3), manifest, 8)
  validate.check(tiny(mosi_dir, context_kind="gru", context_heads=3),
                 manifest, 8)
  no_video = dataclasses.replace(manifest, dims={**manifest.dims, "video": 0})
  with pytest.raises(validate.ConfigError,
                     match="config.speaker_norm: video: the data in .* has "
                     "no video; leave it out: --config.speaker_norm=$"):
    validate.check(tiny(mosi_dir, speaker_norm="video"), no_video, 8)
  with pytest.raises(validate.ConfigError,
                     match="config.context_means: video: the data in .* has "
                     "no video; leave it out: --config.context_means=audio,text$"):
    validate.check(tiny(mosi_dir, context_means="audio,video,text"), no_video, 8)
  folds = dataclasses.replace(manifest, folds={
      "key": "session", "values": [1, 2, 3, 4, 5], "valid_fraction": 0.2,
      "seed": 0})
  with pytest.raises(validate.ConfigError, match=re.escape(
      "config.fold: 7: one of [1, 2, 3, 4, 5] (the held-out session), or 0 "
      "for all")):
    validate.check(tiny(mosi_dir, fold=7), folds, 8)
  validate.check(tiny(mosi_dir, fold=5), folds, 8)
  # The per-utterance model has no window to average over: the ablation
  # `context_layers=0` runs with the default context_means.
  validate.check(tiny(mosi_dir, context_means="text", context_layers=0),
                 manifest, 8)


def test_combo_index_and_route():
  """Masks map to their combination (no modality -> the fullest served,
  atv or at); route takes each sample from the member that owns its
  combination."""
  masks = np.array([[1, 0, 0], [0, 1, 1], [1, 1, 1], [0, 0, 0]], bool)
  np.testing.assert_array_equal(evaluation.combo_index(masks, ALL),
                                [0, 5, 6, 6])
  np.testing.assert_array_equal(
      evaluation.combo_index(masks[[0, 3]], NO_VIDEO), [0, 3])
  owner = np.arange(14).reshape(2, 7)  # per-condition, 2 seeds
  values = np.arange(2 * 14 * 4).reshape(2, 14, 4)  # [C, M, N]
  which = np.array([[0, 5, 6, 6], [1, 1, 2, 3]])
  got = evaluation.route(values, owner, which)
  assert got.shape == (2, 2, 4)
  for c in range(2):
    for s in range(2):
      for n in range(4):
        assert got[c, s, n] == values[c, owner[s, which[c, n]], n]
  np.testing.assert_array_equal(
      evaluation.route(values[:, :2], np.zeros((1, 7), int), which)[:, 0],
      values[:, 0])


def test_rates_have_names_of_their_own():
  """Each rate keeps its own results.json key: one decimal where exact (the
  keys of earlier runs), else the digits it needs; 0.35 was once "0.3",
  merged with 0.3 without a word."""
  assert [combos.rate_name(r) for r in (0.0, 0.3, 0.35, 0.7, 0.125)] == [
      "0.0", "0.3", "0.35", "0.7", "0.125"]
  assert combos.rate_name(0.1 + 0.2) == "0.3"  # Float sums are still 0.3.


def test_missing_rate_masks_are_shared_and_respect_availability():
  config = ml_collections.ConfigDict({
      "missing_rates": (0.0, 0.3, 0.7), "missing_rate_draws": 3,
      "missing_rate_seed": 4})
  available = np.ones((400, 3), bool)
  available[::5, 2] = False
  masks = evaluation.missing_rate_masks(config, available)
  assert masks.shape == (3, 3, 400, 3)
  np.testing.assert_array_equal(masks,
                                evaluation.missing_rate_masks(config,
                                                              available))
  assert not (masks & ~available).any()
  np.testing.assert_array_equal(masks[0, 0], available)
  assert (masks[2].sum(-1) <= 1).all()
  assert (masks[1, 0] != masks[1, 1]).any()  # Draws differ.


def test_a_rates_masks_do_not_depend_on_the_other_rates():
  """A rate's draws are seeded by the rate, not by its position in the
  list: evaluating 0.5 alone gives the 0.5 row of the default list (it
  once gave the 0.0 row's seed to 0.5). The default rates keep the seeds
  (seed, position, k) they had when seeded by position, so published
  missing-rate tables stand."""
  default = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
  available = np.ones((300, 3), bool)

  def masks(rates, seed=0):
    return evaluation.missing_rate_masks(ml_collections.ConfigDict({
        "missing_rates": rates, "missing_rate_draws": 2,
        "missing_rate_seed": seed}), available)

  full = masks(default)
  np.testing.assert_array_equal(masks((0.5,))[0], full[5])
  np.testing.assert_array_equal(masks((0.7, 0.35, 0.3))[[0, 2]],
                                full[[7, 3]])
  np.testing.assert_array_equal(masks((0.35,)), masks((0.3, 0.35))[1:])
  for i, r in enumerate(default):
    for k in range(2):
      np.testing.assert_array_equal(full[i, k], combos.missing_rate_mask(
          np.random.default_rng((0, i, k)), 300, r) & available)
  # Distinct rates draw distinct masks; so does another seed.
  assert (masks((0.35,))[0] != masks((0.3,))[0]).any()
  assert (masks((0.5,), seed=1) != full[5]).any()
  assert len({combos.rate_seed(r) for r in (*default, 0.35, 0.035, 0.05,
                                            1e-5, 0.125)}) == 13


# EMA
# ---


@pytest.mark.extended  # A model variant (ema_decay, default 0).
def test_ema_tracks_parameters_without_changing_training(mosi_dir):
  """The moving average leaves the trained parameters bitwise unchanged;
  decay ~1 keeps the initial parameters; it is what selection evaluates.
  (One device: the average is per parameter, and each decay compiles its
  own epoch, which one device compiles faster than eight.)"""
  dataset = data.load(mosi_dir)
  out = {}
  for decay in (0.0, 0.5, 1 - 1e-7):
    config = tiny(mosi_dir, ema_decay=decay, warmup_epochs=0)
    graphdef, init = model.create(config, dataset.manifest.dims, 1)
    tx = epoch_lib.make_optimizer(config, steps_per_epoch=3)
    mesh = run_lib.make_mesh(1)
    repl = NamedSharding(mesh, P())
    members = regime.members(config, ALL)
    member_data = jax.device_put({"seeds": members.seeds,
                                  "draw_weights": members.draw_weights}, repl)
    state = epoch_lib.init_state(init, tx, member_data["seeds"], repl,
                             ema=bool(decay))
    initial = jax.device_get(state["params"])
    part = dataset.train.take(np.arange(3 * config.batch_size))
    epoch = epoch_lib.make_train_epoch(config, graphdef, tx, "regression",
                                       mesh, len(part))
    state, _ = epoch(state, *epoch_lib.training_inputs(part, config, repl),
                     member_data, 0)
    out[decay] = jax.device_get(state), initial
  plain, initial = out[0.0]
  assert "ema_params" not in plain
  assert epoch_lib.selected_params(plain) is plain["params"]
  for decay in (0.5, 1 - 1e-7):
    state, _ = out[decay]
    chex.assert_trees_all_equal(state["params"], plain["params"])
    assert epoch_lib.selected_params(state) is state["ema_params"]
  chex.assert_trees_all_close(out[1 - 1e-7][0]["ema_params"], initial,
                              atol=1e-5)
  # Decay 0.5 over 3 steps: between the start and the end, nearer the end.
  half = out[0.5][0]["ema_params"]
  moved = 0
  for e, p, i in zip(jax.tree.leaves(half), jax.tree.leaves(plain["params"]),
                     jax.tree.leaves(initial)):
    if np.abs(p - i).max() > 1e-4:
      moved += 1
      assert 0 < np.abs(e - p).max() < 0.9 * np.abs(i - p).max()
  assert moved > 10


# Per-condition regime
# --------------------


@pytest.fixture(scope="module")
def per_condition(mosi_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("per-condition")
  config = tiny(mosi_dir, seeds=(0,), num_epochs=2, regime="per_condition")
  return workdir, train.train_and_evaluate(config, str(workdir))


def test_per_condition_member_equals_a_run_fixed_to_its_combination(
    per_condition, mosi_dir, tmp_path):
  """The per-condition model of `t` is trained exactly as a mixed run whose
  draw weights are one-hot on `t` (parameters to 1e-6, vmapped with the
  other 6 or alone); results name the regime and each model's epoch."""
  workdir, results = per_condition
  assert results["method"] == "MCUR (per-condition)"
  assert set(results["selected_epoch"]) == set(combos.NAMES)
  t = combos.NAMES.index("t")
  train.train_and_evaluate(
      tiny(mosi_dir, seeds=(0,), num_epochs=2,
           combo_weights=tuple(float(c == t) for c in range(7))),
      str(tmp_path))
  member = regime.members(tiny(mosi_dir, seeds=(0,), regime="per_condition"),
                          ALL).owner[0, t]
  chex.assert_trees_all_close(
      jax.tree.map(lambda x: x[member], final_params(workdir)["params"]),
      jax.tree.map(lambda x: x[0], final_params(tmp_path)["params"]),
      atol=1e-6)
  lines = [json.loads(x) for x in (workdir / "metrics.jsonl").open()]
  assert [(x["epoch"], x["condition"]) for x in lines[:7]] == [
      (1, c) for c in combos.NAMES]
  assert all(list(x["valid"]) == [x["condition"]] for x in lines)


@pytest.mark.extended  # A model variant (full_modality_epochs, default 0).
def test_full_modality_stage_trains_every_condition_alike(mosi_dir, tmp_path):
  """With the full-modality first stage covering the whole run, the 7
  per-condition models of a seed see the same masks: equal parameters."""
  train.train_and_evaluate(
      tiny(mosi_dir, seeds=(0,), num_epochs=1, regime="per_condition",
           full_modality_epochs=1), str(tmp_path))
  params = final_params(tmp_path)["params"]
  for leaf in jax.tree.leaves(params):
    np.testing.assert_allclose(leaf, np.broadcast_to(leaf[:1], leaf.shape),
                               rtol=0, atol=1e-6)


# experiments.evaluate
# --------------------


@pytest.fixture(scope="module")
def mixed(mosi_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("mixed")
  config = tiny(mosi_dir, num_epochs=2, ema_decay=0.9)
  return workdir, train.train_and_evaluate(config, str(workdir))


@pytest.mark.parametrize("run", ["mixed", "per_condition"])
def test_evaluate_reproduces_end_of_training_numbers(run, request):
  """Restored from the checkpoint, the selected models give exactly the
  numbers training wrote: test under both protocols, valid fixed."""
  workdir, results = request.getfixturevalue(run)
  found = inference.evaluate_workdir(str(workdir), "test", "all")
  assert found["test"] == results["test"]
  assert found["missing_rate"] == results["missing_rate"]
  assert found["test_samples_without_modality"] == results[
      "test_samples_without_modality"]
  valid = inference.evaluate_workdir(str(workdir), "valid", "fixed")
  assert valid["valid"] == results["valid"]
  assert "missing_rate" not in valid and "test" not in valid
  only_rates = inference.evaluate_workdir(str(workdir), "test",
                                          "missing_rate")
  assert "test" not in only_rates
  assert only_rates["missing_rate"] == results["missing_rate"]


def test_evaluate_cli_writes_results_schema(mixed, tmp_path):
  workdir, results = mixed
  out = tmp_path / "eval.json"
  result = subprocess.run(
      [sys.executable, "-m", "experiments.evaluate", "--workdir",
       str(workdir), "--out", str(out)], cwd=ROOT, capture_output=True,
      text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  assert report.table(results) in result.stdout
  assert "f1_non0 against the missing rate (test): 0.0: " in result.stdout
  saved = json.loads(out.read_text())
  for key in ("dataset", "task", "method", "headline", "seeds", "test",
              "missing_rate", "test_samples_without_modality"):
    assert saved[key] == results[key], key


def test_evaluate_cli_without_checkpoint_exits_2(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "experiments.evaluate", "--workdir",
       str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith("error: ")
  assert "config.json" in result.stderr
  assert "Traceback" not in result.stderr


@pytest.mark.parametrize("module", ["evaluate", "predict"])
def test_a_workdir_file_that_cannot_be_read_is_one_error_line(module,
                                                               tmp_path):
  """A file of the workdir that cannot be read (here config.json is a
  directory) is one `error:` line naming it, exit 2, as in training."""
  (tmp_path / "config.json").mkdir()
  (tmp_path / "results.json").write_text("{}")
  result = subprocess.run(
      [sys.executable, "-m", f"experiments.{module}", "--workdir",
       str(tmp_path), "--out", str(tmp_path / "out")], cwd=ROOT,
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr
  assert result.stderr.strip().splitlines() == [
      f"error: {tmp_path / 'config.json'}: Is a directory"]


def _catches_sigint(pid: int) -> bool:
  """Whether the process has a handler for SIGINT (its SigCgt mask)."""
  status = pathlib.Path(f"/proc/{pid}/status").read_text()
  caught = int(re.search(r"^SigCgt:\s*([0-9a-f]+)$", status, re.M)[1], 16)
  return bool(caught >> (signal.SIGINT - 1) & 1)


@pytest.mark.skipif(not pathlib.Path("/proc/self/status").exists(),
                    reason="reads the signal mask from /proc")
@pytest.mark.parametrize("module", ["evaluate", "predict"])
def test_ctrl_c_ends_evaluate_and_predict_at_once(mixed, module, tmp_path):
  """Once the command has taken its flags, Ctrl-C (SIGINT) ends it at once,
  by the signal, whatever Python code runs then (a KeyboardInterrupt could
  be swallowed by a JAX callback). The test waits for Python's own handler
  and then for the command to drop it, so the signal lands after that."""
  workdir, _ = mixed
  with open(tmp_path / "stderr", "w") as stderr:
    process = subprocess.Popen(
        runs.interruptible(f"experiments.{module}", "--workdir", workdir,
                           "--out", tmp_path / "out"),
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr)
  try:
    deadline = time.monotonic() + 120
    for caught in (True, False):
      while _catches_sigint(process.pid) != caught:
        assert process.poll() is None and time.monotonic() < deadline, (
            (tmp_path / "stderr").read_text())
        time.sleep(0.005)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == -signal.SIGINT
  finally:
    process.kill()
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("module,out", [
    ("evaluate", "missing/eval.json"), ("predict", "missing/p.csv")])
def test_an_unwritable_out_exits_2_before_any_work(module, out, tmp_path):
  """--out in a folder that is not there, or naming a directory: one error
  line naming it, before the workdir is even read (so no evaluation's
  worth of work is lost)."""
  result = subprocess.run(
      [sys.executable, "-m", f"experiments.{module}", "--workdir",
       str(tmp_path / "no_run"), "--out", str(tmp_path / out)], cwd=ROOT,
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      f"error: --out {tmp_path / out}: {tmp_path / 'missing'}: no such "
      "directory"]
  (tmp_path / "folder").mkdir()  # An existing directory: not a file name.
  result = subprocess.run(
      [sys.executable, "-m", f"experiments.{module}", "--workdir",
       str(tmp_path / "no_run"), "--out", str(tmp_path / "folder")],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      f"error: --out {tmp_path / 'folder'}: a directory; give a file name"]


def test_predict_fold_without_data_dir_exits_2(tmp_path):
  """--fold names a fold of --data_dir; alone it is refused before any
  work."""
  result = subprocess.run(
      [sys.executable, "-m", "experiments.predict", "--workdir",
       str(tmp_path / "no_run"), "--fold", "2"], cwd=tmp_path,
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      "error: --fold: names the fold of a --data_dir"]


def test_evaluate_fits_the_calibration_of_a_run_without_one(mixed):
  """A run finished before calibration existed (no calibration.json) gets
  the calibration training would have fitted: the same numbers."""
  workdir, results = mixed
  saved = workdir / calibration.FILE
  saved.rename(workdir / "saved.json")
  try:
    found = inference.evaluate_workdir(str(workdir), "test", "fixed")
  finally:
    (workdir / "saved.json").rename(saved)
  assert found["test"] == results["test"]


def test_restore_for_inference_reads_checkpoints_of_the_older_layout(
    mixed, tmp_path):
  """Checkpoints saved before the digest (the state at the top of the
  tree, no "state" key), with a config.json written before the fields of
  `workdir.LATER_FIELDS` existed, restore the same selected parameters.
  (A run of that time trained with each field's older value, so only the
  fields at that value are left out: context_means, now "text", would
  change the parameters' shapes.)"""
  workdir, _ = mixed
  state = final_params(workdir)
  old = tmp_path / "old"
  old.mkdir()
  config = json.loads((workdir / "config.json").read_text())
  older = [field for field, value in workdir_lib.LATER_FIELDS.items()
           if config[field] == value]
  assert len(older) >= 4
  for field in older:
    del config[field]
  (old / "config.json").write_text(json.dumps(config))
  mngr = checkpoint.manager(str(old))
  mngr.save(3, args=ocp.args.StandardSave(state))
  mngr.wait_until_finished()
  mngr.close()
  want = jax.tree.leaves(state["best_params"])  # Plain dicts, same order.
  for source in (old, workdir):
    _, params, _, _ = checkpoint.restore_for_inference(str(source))
    chex.assert_trees_all_equal(jax.device_get(jax.tree.leaves(params)),
                                want)


def test_checkpoints_of_the_earlier_digest_restore_and_are_checked(
    mixed, tmp_path):
  """mcur-jax cc78ccf saved, instead of the sha256, per leaf the sum of its
  elements' bits as uint32 (computed here as that version did, with
  jax.lax). Such a checkpoint restores, for inference and to resume (orbax
  reads a digest cast to the target's dtype, so a uint8 target would make
  an intact one look damaged), and a changed digest is still refused."""
  workdir, _ = mixed
  state = final_params(workdir)
  sums = np.asarray(jax.numpy.stack([
      jax.numpy.sum(jax.lax.bitcast_convert_type(x, np.uint32),
                    dtype=np.uint32) for x in jax.tree.leaves(state)]))
  for name, saved_digest in (("old", sums), ("damaged", sums + np.eye(
      len(sums), dtype=np.uint32)[1])):
    old = tmp_path / name
    old.mkdir()
    shutil.copy(workdir / "config.json", old)
    mngr = checkpoint.manager(str(old))
    mngr.save(3, args=ocp.args.StandardSave(
        {"state": state, "digest": saved_digest}))
    mngr.wait_until_finished()
    mngr.close()
  _, params, _, _ = checkpoint.restore_for_inference(str(tmp_path / "old"))
  chex.assert_trees_all_equal(jax.device_get(jax.tree.leaves(params)),
                              jax.tree.leaves(state["best_params"]))
  mngr = checkpoint.manager(str(tmp_path / "old"))
  chex.assert_trees_all_equal(
      jax.device_get(checkpoint.restore(mngr, 3, jax.device_put(state))),
      state)
  mngr.close()
  with pytest.raises(checkpoint.CheckpointError,
                     match="does not match its saved digest"):
    checkpoint.restore_for_inference(str(tmp_path / "damaged"))
  mngr = checkpoint.manager(str(tmp_path / "damaged"))
  with pytest.raises(ValueError, match="does not match its saved digest"):
    checkpoint.restore(mngr, 3, jax.device_put(state))
  mngr.close()


def test_digest_of_a_state_with_more_than_ten_list_entries(tmp_path):
  """A state with 12 layers (integer keys 0..11, as nnx.State holds them)
  is saved and then read back with and without a target (string keys,
  where "10" sorts before "2"): both reads match its digest, in either
  format, and a changed leaf does not."""
  state = {"blocks": {i: np.full(3, i, np.float32) for i in range(12)},
           "step": np.int32(5)}
  like = jax.device_put(state)
  mngr = checkpoint.manager(str(tmp_path))
  checkpoint.save(mngr, 1, like)
  checkpoint.restore(mngr, 1, like)
  mngr.close()
  mngr = checkpoint.manager(str(tmp_path))  # One manager per kind of read.
  checkpoint.verify(mngr, 1)
  mngr.close()
  raw = ocp.CheckpointManager(checkpoint.directory(str(tmp_path))).restore(
      1, args=ocp.args.PyTreeRestore())
  assert list(raw["state"]["blocks"])[:3] == ["0", "1", "10"]
  old = checkpoint._bit_sums(state)  # pylint: disable=protected-access
  for form in (checkpoint.digest(state), old):
    assert checkpoint.matches(raw["state"], form)
    assert checkpoint.matches(state, form)
    changed = {**raw["state"], "blocks": {**raw["state"]["blocks"],
                                          "2": np.zeros(3, np.float32)}}
    assert not checkpoint.matches(changed, form)


def test_restore_for_inference_of_a_folder_without_a_run(tmp_path):
  """A Python user handing restore_for_inference the root of a
  cross-validated run is told which folders hold runs; a folder without
  config.json is named as not a run's workdir."""
  with pytest.raises(validate.ConfigError, match="no config.json: not the "
                     "workdir of a training run"):
    checkpoint.restore_for_inference(str(tmp_path))
  for k in (1, 2, 3):
    (tmp_path / f"fold{k}").mkdir()
    (tmp_path / f"fold{k}" / "config.json").write_text("{}")
  (tmp_path / "fold4").mkdir()  # Not started: no config.json.
  with pytest.raises(validate.ConfigError, match=re.escape(
      f"{tmp_path}: a cross-validated run: give the workdir of one of its "
      f"folds, {tmp_path / 'fold1'}, {tmp_path / 'fold2'}, "
      f"{tmp_path / 'fold3'}")):
    checkpoint.restore_for_inference(str(tmp_path))


def test_restore_for_inference_reads_the_checkpoint_once(
    mixed, tmp_path, monkeypatch):
  """The selected parameters come from the read that checks the digest:
  the checkpoint (every seed's parameters, optimizer state and best
  parameters) is read once. A checkpoint of another model (config.json
  edited to another width) is refused, naming the checkpoint."""
  workdir, _ = mixed
  reads = []
  original = ocp.CheckpointManager.restore
  monkeypatch.setattr(ocp.CheckpointManager, "restore",
                      lambda self, *a, **k: (reads.append(a),
                                             original(self, *a, **k))[1])
  _, params, _, _ = checkpoint.restore_for_inference(str(workdir))
  assert len(reads) == 1
  chex.assert_trees_all_equal(
      jax.device_get(jax.tree.leaves(params)),
      jax.tree.leaves(final_params(workdir)["best_params"]))
  other = tmp_path / "other"
  shutil.copytree(workdir, other)
  config = json.loads((other / "config.json").read_text())
  config["hidden_dim"] *= 2
  (other / "config.json").write_text(json.dumps(config))
  with pytest.raises(checkpoint.CheckpointError,
                     match=r"checkpoints: the checkpoint of epoch \d+ holds "
                     "no best_params of this config's model"):
    checkpoint.restore_for_inference(str(other))


def test_plain_orbax_restores_the_documented_tree(mixed):
  """docs/evaluation.md's restore without this package: orbax's
  StandardCheckpointer reads the newest checkpoint into {"state":
  {"best_params", "params", "opt_state", "best_epoch", "best_metric"[,
  "ema_params"]}, "digest"}, NumPy arrays with a leading seed axis, whose best_params are
  the selected models that restore_for_inference gives."""
  workdir, _ = mixed
  latest = max(runs.steps(workdir))
  with ocp.StandardCheckpointer() as checkpointer:
    tree = checkpointer.restore(
        workdir.resolve() / "checkpoints" / str(latest) / "default")
  assert set(tree) == {"state", "digest"}
  # This run has ema_decay, so its state holds the average too.
  assert set(tree["state"]) == {"best_params", "params", "opt_state",
                                "best_epoch", "best_metric", "ema_params"}
  _, params, config, _ = checkpoint.restore_for_inference(str(workdir))
  leaves = jax.tree.leaves(tree["state"]["best_params"])
  assert all(isinstance(x, np.ndarray) and x.shape[0] == len(config.seeds)
             for x in leaves)
  chex.assert_trees_all_equal(jax.device_get(jax.tree.leaves(params)),
                              leaves)


# experiments.predict
# -------------------


def _columns(path) -> dict[str, list[str]]:
  with open(path, newline="") as f:
    rows = list(csv.reader(f))
  return {k: [r[i] for r in rows[1:]] for i, k in enumerate(rows[0])}


def test_predictions_reproduce_the_test_metrics(mixed):
  """Every test utterance once per seed, predicted in context under the
  combination asked; the metrics of the rows are those of results.json
  exactly, and the confidence is the calibrated one. (The per-condition
  regime's routing is the one `evaluation.route` the evaluate test checks.)"""
  workdir, results = mixed
  test = data.load(results["data"]["dir"]).test
  fitted = calibration.load(str(workdir))
  c = "at"
  found, notes = predict.predict(str(workdir), combination=c)
  cols = found.columns
  seeds = len(results["seeds"])
  assert len(found) == seeds * len(test) and not notes
  assert cols["utt_id"][::seeds] == test.utt_id.tolist()
  assert cols["model"][:seeds] == [f"seed {s}" for s in results["seeds"]]
  assert set(cols["combination"]) == {c}
  score = np.array(cols["score"]).reshape(-1, seeds).T
  s = np.array(cols["s"]).reshape(-1, seeds).T
  for j in range(seeds):
    for k, v in metrics.regression(score[j], test.label).items():
      assert v == results["test"][c][k]["per_run"][j], k
    conf, _ = calibration.confidence(fitted["seeds"][j][c], "regression",
                                     "mse", score[j][:, None], s[j])
    np.testing.assert_array_equal(
        np.array(cols["confidence"]).reshape(-1, seeds)[:, j], conf)


def test_predictions_of_npz_features_equal_those_of_the_prepared_split(
    mixed, tmp_path):
  """The raw test features saved as an npz without labels, ids or
  positions (rows in group order) are standardised with the run's training
  statistics and predicted as the prepared split is; the CLI writes them,
  labels empty, in the ensemble's one row per utterance."""
  workdir, results = mixed
  raw = data.load(results["data"]["dir"], normalized=False).test
  order = np.lexsort((raw.position, raw.group_id))
  path = tmp_path / "new.npz"
  np.savez(path, group_id=raw.group_id[order],
           **runs.feature_columns(raw.take(order)))
  from_npz, notes = predict.predict(str(workdir), npz=str(path),
                                    ensemble=True)
  # Without positions the rows' order is taken, and a note says so.
  assert [n for n in notes if "no 'position' key" in n] == [
      f"{path}: no 'position' key: each group's utterances are predicted in "
      "context in the order of their rows; give their positions if the rows "
      "are in another order"]
  prepared, _ = predict.predict(str(workdir), ensemble=True)
  index = {key: i for i, key in enumerate(zip(prepared.columns["group_id"],
                                              prepared.columns["position"]))}
  take = [index[key] for key in zip(raw.group_id[order],
                                    raw.position[order])]
  np.testing.assert_array_equal(from_npz.columns["combination"],
                                np.array(prepared.columns["combination"])[take])
  # Rows in another order fill the evaluation chunks differently, so XLA's
  # float32 sums round differently: equal to a few float32 ulps, not bits.
  for k in ("score", "s", "confidence"):
    np.testing.assert_allclose(
        np.asarray(from_npz.columns[k], np.float64),
        np.asarray(prepared.columns[k], np.float64)[take], rtol=0, atol=1e-6,
        err_msg=k)
  out = tmp_path / "p.csv"
  result = subprocess.run(
      [sys.executable, "-m", "experiments.predict", "--workdir",
       str(workdir), "--input", str(path), "--ensemble", "--out", str(out)],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  cols = _columns(out)
  assert set(cols["model"]) == {"ensemble"} and set(cols["label"]) == {""}
  assert b"\r" not in out.read_bytes()  # Unix line ends, for awk and cut.
  # The CSV's text reads back as the (ensemble's float64) scores themselves.
  np.testing.assert_array_equal(np.array(cols["score"], np.float64),
                                np.asarray(from_npz.columns["score"]))


def test_predict_rejects_features_that_do_not_fit_the_model(mixed, tmp_path):
  workdir, results = mixed
  raw = data.load(results["data"]["dir"], normalized=False).test
  path = tmp_path / "bad.npz"
  np.savez(path, group_id=raw.group_id, audio=raw.features["audio"][:, :-1])
  result = subprocess.run(
      [sys.executable, "-m", "experiments.predict", "--workdir",
       str(workdir), "--input", str(path)], cwd=tmp_path,
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 2
  dims = raw.features["audio"].shape[1]
  assert result.stderr.strip().splitlines() == [
      f"error: {path}: audio: {dims - 1} features per utterance, but the "
      f"model was trained on {dims} (dims.audio of its manifest)"]
  assert not (tmp_path / "predictions.csv").exists()
  np.savez(path, audio=raw.features["audio"])
  with pytest.raises(schema.DataError, match="group_id: missing"):
    predict.predict(str(workdir), npz=str(path))
  with pytest.raises(validate.ConfigError, match="--combination"):
    predict.predict(str(workdir), combination="x")


def test_predict_leaves_the_confidence_of_utterances_without_a_modality_empty(
    mixed, tmp_path):
  """Utterances with none of the modalities asked (here audio marked
  unavailable, --combination a) are still predicted, from the missing
  embeddings alone, but no calibrator was fitted on such inputs: their
  confidence is NaN (an empty CSV cell), not the fullest combination's, and
  one note counts them. The other rows keep the calibration of `a`."""
  workdir, results = mixed
  raw = data.load(results["data"]["dir"], normalized=False).test
  columns = runs.feature_columns(raw)
  columns["available_audio"] = (columns["available_audio"]
                                & (np.arange(len(raw)) % 3 != 0))
  none = ~columns["available_audio"]
  path = tmp_path / "new.npz"
  np.savez(path, group_id=raw.group_id, position=raw.position,
           utt_id=raw.utt_id, **columns)
  found, notes = predict.predict(str(workdir), npz=str(path),
                                 combination="a")
  seeds = len(results["seeds"])
  cols = found.columns
  gone = np.repeat(none, seeds)
  assert notes == [f"{none.sum()} of {len(raw)} utterances have none of "
                   "combination a's modalities: predicted from the missing "
                   "embeddings alone (combination none), their calibrated "
                   "confidence left empty"]
  assert set(np.array(cols["combination"])[gone]) == {"none"}
  assert set(np.array(cols["combination"])[~gone]) == {"a"}
  confidence = np.array(cols["confidence"], np.float64)
  assert np.isnan(confidence[gone]).all()
  assert np.isfinite(confidence[~gone]).all()
  assert np.isfinite(np.array(cols["score"], np.float64)).all()
  fitted = calibration.load(str(workdir))
  score = np.array(cols["score"]).reshape(-1, seeds)
  s = np.array(cols["s"]).reshape(-1, seeds)
  for j in range(seeds):
    want, _ = calibration.confidence(fitted["seeds"][j]["a"], "regression",
                                     "mse", score[~none, j, None],
                                     s[~none, j])
    np.testing.assert_array_equal(confidence.reshape(-1, seeds)[~none, j],
                                  want)
  out = tmp_path / "p.csv"
  predict.write_csv(found, out)
  written = np.array(_columns(out)["confidence"])
  assert set(written[gone]) == {""} and "" not in set(written[~gone])


def test_predict_npz_nan_says_what_predict_can_do(mosi_dir, tmp_path):
  """A NaN in an available feature vector is an error that tells the
  predict user what to do there (mark the modality unavailable, which then
  reads, or fix the values), not data_prep.convert's --nan_policy."""
  manifest = data.load(mosi_dir).manifest
  raw = data.load(mosi_dir, normalized=False).test
  columns = runs.feature_columns(raw)
  columns["audio"][2, 0] = np.nan
  path = tmp_path / "nan.npz"
  np.savez(path, group_id=raw.group_id, utt_id=raw.utt_id, **columns)
  with pytest.raises(schema.DataError) as error:
    npz_input.read(str(path), manifest)
  assert str(error.value) == (
      f"{path}: audio: NaN or inf in 1 vectors, first at utterance "
      f"{str(raw.utt_id[2])!r} (a value beyond float32's range reads as "
      "inf; mark such an utterance's audio unavailable with "
      "available_audio=0, or fix its values)")
  columns["available_audio"][2] = False
  np.savez(path, group_id=raw.group_id, utt_id=raw.utt_id, **columns)
  split, _, _ = npz_input.read(str(path), manifest)
  assert not split.available[2, 0]
  assert np.isfinite(split.features["audio"]).all()


def test_predict_npz_label_outside_the_models_range(mosi_dir, tmp_path):
  """A regression label outside the model's data's label_range, or not
  finite, is refused, as the prepared data's reader refuses it."""
  manifest = data.load(mosi_dir).manifest
  raw = data.load(mosi_dir, normalized=False).test
  label = raw.label.copy()
  label[[1, 4]] = [3.6, np.nan]
  path = tmp_path / "labels.npz"
  np.savez(path, group_id=raw.group_id, label=label,
           **runs.feature_columns(raw))
  with pytest.raises(schema.DataError) as error:
    npz_input.read(str(path), manifest)
  lo, hi = manifest.label_range
  assert str(error.value) == (f"{path}: label: 2 values that are not a "
                              f"finite score in [{lo}, {hi}]")
  label[[1, 4]] = [hi, lo]  # The ends are in it.
  np.savez(path, group_id=raw.group_id, label=label,
           **runs.feature_columns(raw))
  assert npz_input.read(str(path), manifest)[1].all()


def test_predict_input_that_is_not_an_npz(mosi_dir, tmp_path):
  """A CSV given as --input is named as not an npz (not a zip archive), not
  as pickled data that needs allow_pickle."""
  manifest = data.load(mosi_dir).manifest
  path = tmp_path / "new.csv"
  path.write_text("group_id,audio\nv1,0.5\n")
  with pytest.raises(schema.DataError) as error:
    npz_input.read(str(path), manifest)
  assert str(error.value) == (
      f"{path}: --input: not an .npz file (not a zip archive)")


def test_predict_from_python_refuses_arguments_of_the_other_input(mixed,
                                                                   tmp_path):
  """predict() refuses what the CLI refuses: a prepared directory's
  arguments (data_dir, split, data_fold) with an npz, and npz keys without
  one (it used to predict the npz and ignore the rest)."""
  workdir, _ = mixed
  for kwargs, message in [
      ({"npz": "x.npz", "data_dir": "d"}, "--data_dir and --input: give one"),
      ({"npz": "x.npz", "split": "valid"}, "--split: names the split of a "
       "prepared directory"),
      ({"keys": ("label=y",)}, "--key: names the keys of an --input npz"),
      ({"data_fold": 2}, "--fold: names the fold of a --data_dir")]:
    with pytest.raises(validate.ConfigError, match=re.escape(message)):
      predict.predict(str(workdir), **kwargs)


def test_predict_split_with_input_exits_2(tmp_path):
  """--split names a split of a prepared directory: given with --input it
  is refused before any work, as --fold and --key are where they do not
  apply; its default alone is not."""
  def run(*args):
    return subprocess.run(
        [sys.executable, "-m", "experiments.predict", "--workdir",
         str(tmp_path / "no_run"), "--input", "x.npz", *args], cwd=tmp_path,
        capture_output=True, text=True, timeout=300)
  result = run("--split", "test")
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      "error: --split: names the split of a prepared directory (the run's "
      "own or --data_dir); an --input npz is predicted whole"]
  result = run()
  assert result.returncode == 2
  assert "--split" not in result.stderr and "no_run" in result.stderr


def test_predict_combination_the_model_lacks_names_the_modality(mixed,
                                                                tmp_path):
  """A combination needing a modality the model's dataset does not have
  (here video, as in IEMOCAP) names that modality and the combinations
  the model has."""
  workdir, _ = mixed
  moved = tmp_path / "run"
  shutil.copytree(workdir, moved)
  kept = moved / workdir_lib.MODEL_INPUTS / schema.MANIFEST
  manifest = json.loads(kept.read_text())
  for info in manifest["splits"].values():
    info["available"]["video"] = 0
  kept.write_text(json.dumps(manifest))
  with pytest.raises(validate.ConfigError) as error:
    predict.predict(str(moved), combination="atv")
  assert str(error.value) == (
      "--combination: 'atv' needs video, which the model's dataset does not "
      "have (its combinations: a, t, at)")


def test_predict_npz_keys_and_speaker_fields(mosi_dir, tmp_path):
  """An npz's keys may be named as `data_prep.convert --key` names them;
  with a run's speaker_norm the speaker key is required (unless the file
  lacks those modalities), and session
  (speaker ids count within a session) defaults to 0 with a note, as
  convert reads a file without it; a speaker with one utterance,
  whose per-speaker standardisation leaves zeros, gets a note."""
  manifest = data.load(mosi_dir).manifest
  raw = data.load(mosi_dir, normalized=False).test
  n = len(raw)
  path = tmp_path / "keys.npz"
  np.savez(path, video_id=raw.group_id, score=raw.label,
           **runs.feature_columns(raw))
  split, known, _ = npz_input.read(
      str(path), manifest, keys=("group_id=video_id", "label=score"))
  np.testing.assert_array_equal(split.label, raw.label)
  assert known.all()
  with pytest.raises(schema.DataError, match="group_id: missing"):
    npz_input.read(str(path), manifest)
  speaker = np.where(np.arange(n) == 0, "alone", "crowd")
  np.savez(path, group_id=raw.group_id, position=raw.position,
           **runs.feature_columns(raw))
  with pytest.raises(schema.DataError, match="speaker: missing: the model "
                     "standardises audio per speaker"):
    npz_input.read(str(path), manifest, speaker_norm=("audio",))
  # Without the audio there is nothing to standardise per speaker.
  text_only = {k: v for k, v in runs.feature_columns(raw).items()
               if k == "text"}
  np.savez(path, group_id=raw.group_id, position=raw.position, **text_only)
  _, _, notes = npz_input.read(str(path), manifest, speaker_norm=("audio",))
  assert not [n for n in notes if "session" in n], notes
  # Without a session key every row is session 0, as convert reads it.
  np.savez(path, group_id=raw.group_id, speaker=speaker, position=raw.position,
           **runs.feature_columns(raw))
  alone, _, notes = npz_input.read(str(path), manifest,
                                   speaker_norm=("audio",))
  assert notes[0] == (f"{path}: no 'session' key: every row is session 0, so "
                      "a speaker id is one speaker across the file (as "
                      "data_prep.convert reads it)")
  np.savez(path, group_id=raw.group_id, speaker=speaker, position=raw.position,
           session=np.zeros(n, np.int64), **runs.feature_columns(raw))
  zero, _, _ = npz_input.read(str(path), manifest, speaker_norm=("audio",))
  for field in ("session", "speaker"):
    np.testing.assert_array_equal(getattr(alone, field), getattr(zero, field))
  np.savez(path, group_id=raw.group_id, speaker=speaker,
           session=np.ones(n, np.int64), position=raw.position,
           **runs.feature_columns(raw))
  _, _, notes = npz_input.read(str(path), manifest, speaker_norm=("audio",))
  assert len(notes) == 1 and "1 speaker(s) with a single utterance (1|alone)" \
      in notes[0]
  _, _, notes = npz_input.read(str(path), manifest)
  assert not notes
  # A key no field reads (a misspelt availability column) is named.
  np.savez(path, group_id=raw.group_id, position=raw.position,
           audio_available=np.zeros(n, np.int64), **runs.feature_columns(raw))
  _, _, notes = npz_input.read(str(path), manifest)
  assert notes == [f"{path.name}: keys not read: audio_available (the fields "
                   "are "
                   f"{', '.join(npz_columns.FIELDS)}; --key FIELD=KEY maps "
                   "one)"]


def test_predictions_show_a_summary():
  """A notebook shows the row count, the columns and three rows, not every
  cell of every column."""
  found = predict.Predictions({"utt_id": [f"u{i}" for i in range(1000)],
                               "score": [np.float32(i) for i in range(1000)]})
  assert repr(found).splitlines() == [
      "Predictions(1000 rows; columns utt_id, score", "  utt_id=u0, score=0.0",
      "  utt_id=u1, score=1.0", "  utt_id=u2, score=2.0", "  ...)"]


def test_predict_npz_class_labels_by_name(mosi_dir, tmp_path):
  """A classification model's npz may give its labels as the class names
  ('' = not known), as the converter takes them; a name that is not a
  class is an error naming it."""
  manifest = dataclasses.replace(
      data.load(mosi_dir).manifest, task="classification",
      classes=["neg", "neu", "pos"], label_range=None)
  raw = data.load(mosi_dir, normalized=False).test
  names = np.array(["neg", "neu", "pos", ""])[np.arange(len(raw)) % 4]
  path = tmp_path / "named.npz"
  np.savez(path, group_id=raw.group_id, position=raw.position, label=names,
           **runs.feature_columns(raw))
  split, known, notes = npz_input.read(str(path), manifest)
  np.testing.assert_array_equal(known, names != "")
  np.testing.assert_array_equal(split.label[known],
                                (np.arange(len(raw)) % 4)[known])
  assert not notes
  names[5] = "Pos"
  np.savez(path, group_id=raw.group_id, position=raw.position, label=names,
           **runs.feature_columns(raw))
  with pytest.raises(schema.DataError, match="label: 1 label.s. not among "
                     "the classes neg,neu,pos: 'Pos'"):
    npz_input.read(str(path), manifest)


def test_predict_npz_rows_that_cannot_be_told_apart(mosi_dir, tmp_path):
  """The checks `data_prep.convert` makes on ids hold for an npz to
  predict: no rows, a repeated utt_id, or two utterances at one position
  of a group (the context order) are errors naming the field; a short
  column names group_id (which sets the row count without labels), and a
  mapped key by its npz name."""
  manifest = data.load(mosi_dir).manifest
  raw = data.load(mosi_dir, normalized=False).test
  features = {m: raw.features[m] for m in raw.features if raw.features[m].size}
  path = tmp_path / "rows.npz"
  def read(keys=(), **columns):
    np.savez(path, **columns)
    return npz_input.read(str(path), manifest, keys=keys)
  with pytest.raises(schema.DataError, match="utt_id: no utterances found"):
    read(group_id=raw.group_id[:0], **{m: x[:0] for m, x in features.items()})
  utt_id = raw.utt_id.copy()
  utt_id[1] = utt_id[0]
  with pytest.raises(schema.DataError,
                     match=f"utt_id: 1 duplicate ids, e.g. '{utt_id[0]}'"):
    read(group_id=raw.group_id, utt_id=utt_id, **features)
  position = raw.position.copy()
  first = np.flatnonzero(raw.group_id == raw.group_id[0])[:2]
  position[first[1]] = position[first[0]]
  with pytest.raises(schema.DataError, match="position: 1 utterances share "
                     "their group's position"):
    read(group_id=raw.group_id, position=position, utt_id=raw.utt_id,
         **features)
  with pytest.raises(schema.DataError,
                     match=f"audio: {len(raw) - 1} rows, but group_id has"):
    read(group_id=raw.group_id, **{**features,
                                   "audio": features["audio"][1:]})
  with pytest.raises(schema.DataError, match=r"A \(--key audio=A\): "):
    read(("audio=A",), group_id=raw.group_id,
         A=features["audio"][:, :-1])


def test_predict_other_data_dir_uses_the_runs_statistics(mixed, tmp_path):
  """Another prepared directory is standardised with the run's training
  statistics, not its own: a copy of the run's data whose manifest records
  other statistics predicts exactly as the run's data. One with other
  classes (or their order) is rejected."""
  workdir, results = mixed
  copy = tmp_path / "copy"
  shutil.copytree(results["data"]["dir"], copy)
  manifest = json.loads((copy / schema.MANIFEST).read_text())
  audio = manifest["normalization"]["train"]["audio"]
  audio["mean"] = [x + 0.5 for x in audio["mean"]]
  (copy / schema.MANIFEST).write_text(json.dumps(manifest))
  own, _ = predict.predict(str(workdir))
  other, _ = predict.predict(str(workdir), data_dir=str(copy))
  assert other.columns == own.columns
  model_manifest = data.load(results["data"]["dir"]).manifest
  with pytest.raises(schema.DataError, match="classes"):
    predict._check_same_features(
        str(copy), dataclasses.replace(model_manifest, classes=["neg", "pos"]),
        model_manifest)
  # Data without a modality of the model's is pointed to --input; data
  # whose features have another size is not.
  for dims, advice in (({**model_manifest.dims, "video": 0}, True),
                       ({**model_manifest.dims, "video": 7}, False)):
    with pytest.raises(schema.DataError, match="dims") as error:
      predict._check_same_features(
          str(copy), dataclasses.replace(model_manifest, dims=dims),
          model_manifest)
    assert advice == (
        "predict from an .npz of it (--input)" in str(error.value))


def test_inference_refuses_data_changed_since_training(mixed, tmp_path):
  """A run whose prepared data changed since it trained (the manifest's
  sha256 in data.json) cannot be evaluated or predicted on it: its
  statistics and splits would not be the run's. Exit 2 naming the
  manifest. Restoring the model needs no data (the workdir's copy of the
  manifest), except for a run from before that copy."""
  workdir, results = mixed
  moved = tmp_path / "run"
  shutil.copytree(workdir, moved)
  recorded = json.loads((moved / workdir_lib.DATA_FILE).read_text())
  assert recorded["manifest_sha256"] == workdir_lib.data_sha256(
      results["data"]["dir"])
  recorded["manifest_sha256"] = "0" * 64
  (moved / workdir_lib.DATA_FILE).write_text(json.dumps(recorded))
  checkpoint.restore_for_inference(str(moved))
  with pytest.raises(validate.ConfigError,
                     match="not the prepared data the run in .* started on"):
    inference.evaluate_workdir(str(moved))
  older = tmp_path / "older"
  shutil.copytree(moved, older)
  shutil.rmtree(older / workdir_lib.MODEL_INPUTS)
  with pytest.raises(validate.ConfigError,
                     match="not the prepared data the run in .* started on"):
    checkpoint.restore_for_inference(str(older))
  result = subprocess.run(
      [sys.executable, "-m", "experiments.predict", "--workdir", str(moved),
       "--out", str(tmp_path / "p.csv")], cwd=ROOT, capture_output=True,
      text=True, timeout=300)
  assert result.returncode == 2
  manifest = pathlib.Path(results["data"]["dir"]) / schema.MANIFEST
  assert result.stderr.startswith(f"error: {manifest}: not the prepared data "
                                  "the run in ")


def test_a_workdir_restores_and_predicts_without_its_data(mixed, tmp_path):
  """A workdir copied where the run's prepared data is not (another
  machine: config.json's data_dir names a directory that is not there)
  restores its models and predicts an npz from the copy of the manifest
  and statistics it keeps, exactly as where it trained; its own data is
  then found through --data_dir (predict and evaluate), and without it
  the error names --data_dir. A run from before model_inputs/ restores
  through --data_dir too."""
  workdir, results = mixed
  moved = tmp_path / "run"
  shutil.copytree(workdir, moved)
  config = json.loads((moved / "config.json").read_text())
  config["data_dir"] = str(tmp_path / "gone")
  (moved / "config.json").write_text(json.dumps(config))
  *_, manifest = checkpoint.restore_for_inference(str(moved))
  assert manifest == data.load(results["data"]["dir"]).manifest
  raw = data.load(results["data"]["dir"], normalized=False).test
  path = tmp_path / "new.npz"
  np.savez(path, group_id=raw.group_id,
           **runs.feature_columns(raw))
  there, _ = predict.predict(str(workdir), npz=str(path))
  here, _ = predict.predict(str(moved), npz=str(path))
  assert here.columns == there.columns
  with pytest.raises(validate.ConfigError, match=(
      r"^--data_dir: the prepared data of the run in .*, is not there")):
    predict.predict(str(moved))
  own, _ = predict.predict(str(workdir))
  found, _ = predict.predict(str(moved), data_dir=results["data"]["dir"])
  assert found.columns == own.columns
  assert inference.evaluate_workdir(
      str(moved), "test", "fixed", results["data"]["dir"])["test"] == (
          results["test"])
  result = subprocess.run(
      [sys.executable, "-m", "experiments.evaluate", "--workdir", str(moved),
       "--protocol", "fixed"], cwd=ROOT, capture_output=True, text=True,
      timeout=300)
  assert result.returncode == 2
  assert result.stderr.startswith("error: --data_dir: the prepared data of ")
  # A run from before model_inputs/ needs its data for the manifest and the
  # statistics too: --data_dir finds them where they moved.
  shutil.rmtree(moved / workdir_lib.MODEL_INPUTS)
  with pytest.raises(validate.ConfigError, match=(
      r"^--data_dir: the run in .* predates model_inputs/ and needs its "
      "prepared data")):
    checkpoint.restore_for_inference(str(moved))
  assert inference.evaluate_workdir(
      str(moved), "test", "fixed", results["data"]["dir"])["test"] == (
          results["test"])
  found, _ = predict.predict(str(moved), data_dir=results["data"]["dir"])
  assert found.columns == own.columns


def test_damaged_kept_statistics_are_one_error_naming_the_file(mixed,
                                                                tmp_path):
  """A workdir whose model_inputs/train_stats.npz is damaged (truncated) or
  of another model's sizes predicts nothing: a DataError naming the file
  (and the array), not a traceback from NumPy or the standardisation."""
  workdir, results = mixed
  moved = tmp_path / "run"
  shutil.copytree(workdir, moved)
  raw = data.load(results["data"]["dir"], normalized=False).test
  npz = tmp_path / "new.npz"
  np.savez(npz, group_id=raw.group_id,
           **{m: raw.features[m] for m in raw.features})
  stats = moved / workdir_lib.MODEL_INPUTS / workdir_lib.STATS_FILE
  stats.write_bytes(stats.read_bytes()[:100])
  with pytest.raises(schema.DataError, match=(
      rf"^{stats}: statistics: unreadable")):
    predict.predict(str(moved), npz=str(npz))
  np.savez(stats, **{"audio/mean": np.zeros(3), "audio/std": np.ones(3)})
  with pytest.raises(schema.DataError, match=(
      rf"^{stats}: audio/mean: shape \(3,\), but dims.audio is")):
    predict.predict(str(moved), npz=str(npz))


# Reports
# -------


def test_folds_pool_with_null_metrics():
  """A fold whose metric is null in results.json (NaN: Corr of constant
  predictions) pools as NaN, written null, instead of failing; the other
  metrics pool over every (fold, seed) run."""
  def fold(k, corr):
    per_seed = [{c: {"mae": 0.1 * k + s, "corr": corr} for c in ("a", "t")}
                for s in range(2)]
    return report._clean({"dataset": "mosi", "task": "regression",
                          "combinations": ["a", "t"], "fold": k,
                          "test": report.summarize(per_seed)})
  pooled = report.combine_folds([fold(1, float("nan")), fold(2, 0.5)])
  assert pooled["folds"] == [1, 2]
  for c in ("a", "t", "avg"):
    assert pooled["test"][c]["corr"]["mean"] is None
    assert pooled["test"][c]["corr"]["per_run"] == [None, None, 0.5, 0.5]
    assert pooled["test"][c]["mae"]["mean"] == pytest.approx(0.65)
  json.dumps(pooled, allow_nan=False)


def test_markdown_table_has_a_row_per_method(mixed, per_condition):
  """results.md: rows = methods, columns = a..atv and Avg, cells mean ±
  std of results.json; a missing-rate table and an uncertainty table."""
  (_, mixed_results), (workdir, per_results) = mixed, per_condition
  md = report.markdown([("MCUR", mixed_results),
                        ("per-condition", per_results)])
  header = "| method | a | t | v | at | av | tv | atv | Avg |"
  assert md.count(header) == 5  # f1, acc, MAE, Corr, Acc-7
  f1 = mixed_results["test"]["avg"]["f1_non0"]
  assert f"{f1['mean']:.3f} ± {f1['std']:.3f} |" in md
  assert "| per-condition | " in md and "## f1_non0 against the missing" in md
  assert ("| method | ece | sel_acc_80 | sel_acc_50 | s_err_spearman | "
          "ece_cal | sel_acc_50_cal | sel_gain_50_cal |") in md
  assert (workdir / "results.md").read_text() == report.markdown(
      [("MCUR (per-condition)", per_results)])


def test_markdown_of_rows_with_other_rates_and_combinations(mixed):
  """A sweep over missing_rates or over data with other modalities gives
  rows that differ: every rate and combination gets a column, "n/a" where
  a row has none (the sweep report used to fail on the first row's)."""
  _, results = mixed
  fewer = copy.deepcopy(results)
  rates = list(fewer["missing_rate"]["rates"])
  del fewer["missing_rate"]["rates"][rates[-1]]
  fewer["combinations"] = [c for c in fewer["combinations"] if c != "v"]
  del fewer["test"]["v"]
  md = report.markdown([("fewer", fewer), ("all", results)])
  rate_header = "| method | " + " | ".join(rates) + " |"
  assert rate_header in md
  [row] = [line for line in md.splitlines()
           if line.startswith("| fewer |") and line.endswith("| n/a |")]
  assert row.count("n/a") == 1
  assert md.count("| method | a | t | v | at | av | tv | atv | Avg |") == 5
  # Three modalities: only 0.7 keeps exactly one, so no note; two (no
  # video): 0.5, 0.6 and 0.7 are one condition, and the table says so.
  assert "keep exactly one per utterance" not in md
  for r in (fewer, results):
    r["combinations"] = ["a", "t", "at"]
  assert ("With 2 modalities, rates 0.5, 0.6, 0.7 all keep exactly one per "
          "utterance: one condition, whose columns differ only by their "
          "draws.") in report.markdown([("fewer", fewer), ("all", results)])
