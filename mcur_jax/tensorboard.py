"""TensorBoard event files of a run, to watch it live (optional).

With `config.tensorboard` (on by default) and tensorboardX installed
(`pip install -e ".[tb]"`; it needs neither TensorFlow nor torch), process 0
writes `WORKDIR/tb/`, one step per epoch (1-based):

* `EpochLog`, after every epoch, from that epoch's metrics.jsonl lines: the
  training stats (`train/loss`, `train/task_loss`, `train/mcb_loss`,
  `train/sugr_weight`), the validation headline metric per combination and
  its Avg (`valid/at/f1_non0`, `valid/avg/f1_non0`), each the mean over the
  run's models (its seeds, or (seed, combination) pairs), the learning rate,
  and per model its total loss and selection score (`train/loss/seed0`,
  `valid/avg/f1_non0/seed0`).
* `write_hparams`, at the end, into `WORKDIR/tb/hparams/`: the config's
  fields with the final metrics (`hparam/test/avg/mae`, ...), for
  TensorBoard's HPARAMS tab, where every point of a sweep is a row.

metrics.jsonl stays the record: every scalar here is one of its numbers or a
mean of them. A resumed run opens its writer with `purge_step` = the first
epoch it trains, so TensorBoard drops what the interrupted run logged after
its last checkpoint (those epochs are trained again) and shows each (tag,
epoch) once.
"""

import glob
import os
import shutil

import numpy as np

from mcur_jax import combos

DIR = "tb"
HPARAMS_DIR = "hparams"
MISSING = ("NOTE: config.tensorboard is on but tensorboardX is not installed: "
           "no TensorBoard logs (pip install tensorboardX, or in a checkout "
           "pip install -e \".[tb]\"; --config.tensorboard=False silences "
           "this).")


def _tensorboardx():
  """The tensorboardX module, or None where it is not installed."""
  try:
    import tensorboardX  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  return tensorboardX


def _mean(values) -> float | None:
  """The mean of the non-null values (metrics.jsonl writes NaN as null)."""
  values = [v for v in values if v is not None]
  return float(np.mean(values)) if values else None


def _model(line: dict) -> str:
  """A model's name in tags: `seed0`, or `seed0_at` in the per-condition
  regime."""
  condition = line.get("condition")
  return f"seed{line['seed']}" + (f"_{condition}" if condition else "")


def scalars(lines: list[dict], headline: str) -> dict[str, float]:
  """{tag: value} of one epoch from its metrics.jsonl lines (one per model,
  `report.MetricsLog`); tags whose values are all null are left out."""
  avg = f"valid_avg_{headline}"
  out = {"learning_rate": lines[0]["learning_rate"]}
  for key in lines[0]["train"]:
    out[f"train/{key}"] = _mean(line["train"][key] for line in lines)
  for c in combos.NAMES:
    out[f"valid/{c}/{headline}"] = _mean(
        line["valid"][c][headline] for line in lines if c in line["valid"])
  out[f"valid/avg/{headline}"] = _mean(line[avg] for line in lines)
  for line in lines:
    out[f"train/loss/{_model(line)}"] = line["train"]["loss"]
    out[f"valid/avg/{headline}/{_model(line)}"] = line[avg]
  return {tag: value for tag, value in out.items() if value is not None}


class EpochLog:
  """The scalars of every epoch in WORKDIR/tb/ (see the module docstring);
  a no-op when disabled (processes other than 0, `config.tensorboard`
  off) or, after one printed note, when tensorboardX is missing."""

  def __init__(self, workdir: str, start: int, headline: str,
               enabled: bool = True):
    self.headline, self.writer = headline, None
    if not enabled:
      return
    tbx = _tensorboardx()
    if tbx is None:
      print(MISSING)
      return
    folder = os.path.join(workdir, DIR)
    # Event files are named by the second they are opened in; the count of
    # those before keeps a reopened writer from overwriting one of them.
    opened = len(glob.glob(os.path.join(folder, "events.out.tfevents.*")))
    self.writer = tbx.SummaryWriter(folder, purge_step=start + 1,
                                    filename_suffix=f".{opened}")

  def write(self, lines: list[dict]) -> None:
    """Logs one epoch from its metrics.jsonl lines, flushed to disk."""
    if self.writer is None:
      return
    for tag, value in scalars(lines, self.headline).items():
      self.writer.add_scalar(tag, value, lines[0]["epoch"])
    self.writer.flush()

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()


def hparams(config) -> dict:
  """The config's fields as TensorBoard hparams (tuples as text)."""
  return {k: str(v) if isinstance(v, tuple) else v
          for k, v in config.items()}


def final_metrics(results: dict) -> dict[str, float]:
  """{tag: value} of a results.json dict: every test metric's Avg, the test
  headline per combination and the validation Avg headline (means over
  the seeds); nulls are left out."""
  headline, test = results["headline"], results["test"]
  out = {f"hparam/test/avg/{k}": v["mean"] for k, v in test["avg"].items()}
  out.update({f"hparam/test/{c}/{headline}": test[c][headline]["mean"]
              for c in results["combinations"]})
  out[f"hparam/valid/avg/{headline}"] = (
      results["valid"]["avg"][headline]["mean"])
  return {tag: value for tag, value in out.items() if value is not None}


def write_hparams(workdir: str, config, results: dict) -> None:
  """Writes WORKDIR/tb/hparams/: one HPARAMS session, the config with the
  run's final metrics at step `num_epochs`, replacing any earlier one (a
  rerun that only evaluates writes it again). No-op without tensorboardX."""
  tbx = _tensorboardx()
  if tbx is None:
    return
  folder = os.path.join(workdir, DIR, HPARAMS_DIR)
  shutil.rmtree(folder, ignore_errors=True)
  metrics = final_metrics(results)
  with tbx.SummaryWriter(folder) as writer:
    for summary in tbx.summary.hparams(hparams(config), metrics):
      writer.file_writer.add_summary(summary)
    for tag, value in metrics.items():
      writer.add_scalar(tag, value, config.num_epochs)
