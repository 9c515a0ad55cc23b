"""What the tests that run whole trainings share: the command line (with
the session's compilation cache, `conftest.xla_cache`), a
topology-independent view of checkpoints, and the TensorBoard logs read
back."""

import contextlib
import json
import os
import pathlib
import re
import subprocess
import sys

import chex
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from tensorboardX.proto import event_pb2

from data_prep import synthetic
from data_prep import writer
from experiments.configs import mosi as mosi_config
from mcur_jax import combos
from mcur_jax import fit as fit_lib
from mcur_jax import progress
from mcur_jax import tfrecord
from mcur_jax import timing

ROOT = pathlib.Path(__file__).resolve().parent.parent
MOSI_CONFIG = ROOT / "experiments" / "configs" / "mosi.py"
ALL_COMBOS = set(combos.NAMES) | {"avg"}
# The PNGs of WORKDIR/figures of a run with plots on (figures.write_figures).
FIGURES = [f"{name}.png" for name in ("calibration", "combinations",
                                      "missing_rate", "representation",
                                      "training", "uncertainty")]
# Metrics that are fractions (all but MAE and the correlations).
FRACTIONS = {"acc2_non0", "f1_non0", "acc2_has0", "f1_has0", "acc7",
             "wa", "ua", "wf1", "mf1", "ece", "sel_acc_80", "sel_acc_50",
             "ece_cal", "sel_acc_50_cal"}
# Metrics that are smooth functions of the predictions: equal runs agree on
# them to the rounding of the predictions (1e-6). Every other metric counts
# decisions at a threshold (the sign, the argmax, a confidence bin) or ranks
# near-equal values (s, |error|): a 1e-7 rounding difference can flip one
# sample's decision or swap two neighbours in a ranking.
CONTINUOUS = {"mae", "corr", "mae_non0", "corr_non0"}


def synthetic_dir(tmp_path_factory, like: str, scale: float,
                  seed: int = 0) -> pathlib.Path:
  """A prepared directory of synthetic data like `like`, in a new temporary
  folder (for module-scoped fixtures)."""
  out = tmp_path_factory.mktemp("data") / like
  writer.write(synthetic.generate(like, seed, scale), out)
  return out


def feature_columns(split) -> dict:
  """A raw `data.Split`'s features and availability as the npz format's
  columns (`audio`, ..., `available_audio`, ...), for npz inputs built from
  prepared data."""
  return {**split.features,
          **{f"available_{m}": split.available[:, j]
             for j, m in enumerate(split.features)}}


def tiny_config(data_dir, base=mosi_config, **overrides):
  """The `tiny` variant of a config module on `data_dir`, on one of the
  session's 8 fake devices unless `num_devices` is overridden, with
  overrides. One device, because on 2 cores a tiny run on 8 fake devices
  took a third longer (33 s against 24 s from an empty compilation cache:
  compiling for and synchronising 8 device threads); the tests of data
  parallelism ask for 8."""
  config = base.get_config("tiny")
  config.data_dir = str(data_dir)
  config.num_devices = 1
  config.update(overrides)
  return config


def xla_flags(devices: int) -> str:
  """The session's XLA_FLAGS (conftest) with `devices` fake CPU devices."""
  return re.sub(r"--xla_force_host_platform_device_count=\d+",
                f"--xla_force_host_platform_device_count={devices}",
                os.environ["XLA_FLAGS"])


def environment(**extra) -> dict:
  """os.environ (with the session's compilation cache, conftest) with one
  fake CPU device (as `tiny_config`, for speed; `extra` can set XLA_FLAGS
  to `xla_flags(8)`), and `extra`."""
  return {**os.environ, "XLA_FLAGS": xla_flags(1), **extra}


def cli(*args, cwd=ROOT, dataset="mosi", fault=None, env=None,
        timeout=300) -> subprocess.CompletedProcess:
  """Runs `python -m experiments.<dataset> ARGS`, with `fault` injected
  (`tests/faults.py`) when given."""
  command = [sys.executable, "-m"] + (
      ["tests.faults", fault] if fault else []) + [f"experiments.{dataset}"]
  return subprocess.run([*command, *map(str, args)], cwd=cwd,
                        env=env or environment(), capture_output=True,
                        text=True, timeout=timeout)


def interruptible(module: str, *args) -> list:
  """The command `python -m MODULE ARGS` that takes SIGINT as a terminal's
  Ctrl-C gives it, even when this test session was started with SIGINT
  ignored (a background job of a script), which its children inherit and
  Python then keeps."""
  return [sys.executable, "-c",
          "import runpy, signal; signal.signal(signal.SIGINT, "
          "signal.default_int_handler); runpy.run_module("
          f"{module!r}, run_name='__main__', alter_sys=True)", *args]


def error_lines(stderr: str) -> list[str]:
  return [line for line in stderr.splitlines() if line.startswith("error:")]


def steps(workdir) -> list[int]:
  """The epochs of a run's finished checkpoints."""
  folder = pathlib.Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def restored_state(workdir, epoch: int | None = None) -> dict:
  """A checkpoint's training state as NumPy (default the newest), read onto
  one local device whatever devices and processes saved it."""
  epoch = steps(workdir)[-1] if epoch is None else epoch
  path = pathlib.Path(workdir) / "checkpoints" / str(epoch) / "default"
  with ocp.StandardCheckpointer() as checkpointer:
    tree = checkpointer.metadata(path).item_metadata.tree
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
        tree)
    return jax.device_get(checkpointer.restore(path, target)["state"])


def results_without_timing(workdir) -> dict:
  """results.json less what describes the process rather than the run:
  wall seconds, and trace counts (a rerun that only evaluates traces no
  epoch)."""
  with open(pathlib.Path(workdir) / "results.json") as f:
    results = json.load(f)
  for key in ("seconds", "compiles", *timing.FIELDS):
    results.pop(key, None)
  return results


def run_metrics(results: dict, split: str, i: int) -> dict:
  """{combo: {metric: value}} of run i of a results dict."""
  return {c: {k: v["per_run"][i] for k, v in results[split][c].items()}
          for c in ALL_COMBOS}


def assert_metrics_close(got: dict, want: dict, split) -> None:
  """Metrics of two runs equal up to float rounding of their predictions,
  over `split` (a data.Split): CONTINUOUS metrics to 1e-6; a threshold
  metric to 2.5 / n, n the utterances it scores (one sample's decision
  flipping moves an accuracy by 1 / n and a weighted F1 by about 2 / n; a
  regression's Non0 metrics score only its non-zero labels, so n is their
  count for every regression metric), and `sel_gain_50_cal`, the top
  half's accuracy less the whole's, to 3.5 / n (one flip moves the first
  by 2 / n and the second by 1 / n); a rank statistic to 1e-3 (one swap of
  neighbours moves Spearman by 12 / (n (n^2 - 1)), 1e-5 at n = 100: this
  allows many)."""
  label = np.asarray(split.label)
  n = int((label != 0).sum()) if np.issubdtype(label.dtype, np.floating) \
      else len(label)
  assert got.keys() == want.keys()
  for c in want:
    assert got[c].keys() == want[c].keys()
    for k in want[c]:
      atol = (1e-6 if k in CONTINUOUS else 1e-3 if k == "s_err_spearman"
              else 3.5 / n if k == "sel_gain_50_cal" else 2.5 / n)
      assert got[c][k] == pytest.approx(want[c][k], rel=0, abs=atol), (c, k)


def assert_same_run(workdir, reference, figures=None) -> None:
  """A workdir (pathlib) ends as the uninterrupted run's: checkpoints, the
  state bit for bit, metrics.jsonl, results, and the figures' names (or
  these `figures`, for a run that writes figures where the reference
  writes none)."""
  assert steps(workdir) == steps(reference)
  chex.assert_trees_all_equal(restored_state(workdir),
                              restored_state(reference))
  assert ((workdir / "metrics.jsonl").read_text()
          == (reference / "metrics.jsonl").read_text())
  assert (results_without_timing(workdir)
          == results_without_timing(reference))
  assert ((workdir / "results.md").read_text()
          == (reference / "results.md").read_text())
  names = lambda w: sorted(p.name for p in (w / "figures").glob("*"))
  assert names(workdir) == (names(reference) if figures is None
                            else sorted(figures))


def tensorboard_events(folder) -> list:
  """The Event protos of a TensorBoard run folder, in the order TensorBoard
  reads them (its event files by name, i.e. by the time they were opened)."""
  return [event_pb2.Event.FromString(record)
          for path in sorted(pathlib.Path(folder).glob("events.out.tfevents.*"))
          for record in tfrecord.read_records(path)]


def tensorboard_scalars(folder) -> dict[str, dict[int, list[float]]]:
  """{tag: {step: [values]}} of a run folder as TensorBoard shows it: a
  session START at step s (what a writer opened with `purge_step` s writes
  first) drops the values read before it at steps >= s."""
  out = {}
  for event in tensorboard_events(folder):
    if event.session_log.status == event_pb2.SessionLog.START:
      for steps in out.values():
        for step in [s for s in steps if s >= event.step]:
          del steps[step]
    for value in event.summary.value:
      if value.HasField("simple_value"):
        out.setdefault(value.tag, {}).setdefault(event.step, []).append(
            value.simple_value)
  return out


@contextlib.contextmanager
def ctrl_c_in_every_epoch(monkeypatch):
  """For the block, a stop is asked (`fit.STOP_REQUESTED`, as launch's
  Ctrl-C handler asks it) right after each epoch's progress line: in a run
  of 1 epoch, during its last epoch. Cleared after the block."""
  update = progress.Progress.update

  def update_then_ask_to_stop(self, *args):
    update(self, *args)
    fit_lib.STOP_REQUESTED.set()

  monkeypatch.setattr(progress.Progress, "update", update_then_ask_to_stop)
  try:
    yield
  finally:
    fit_lib.STOP_REQUESTED.clear()
