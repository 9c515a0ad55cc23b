"""A trained run's predictions, with calibrated confidence, on any features.

`predict` is what `python -m experiments.predict` runs. Its input is a
prepared directory's split, or an `.npz` of features (`npz_input.py` says
what it needs and how it is checked against the model). The features are
standardised with the statistics the model was trained with (kept in the
workdir, `run_stats`: the data the run trained on need not be there for an
npz; its fold's for IEMOCAP), and the modalities of a run's `speaker_norm`
with each speaker's statistics over the input
(`normalization.normalize_per_speaker`). Every row is predicted, unlabelled
ones included, and every row is context and speaker statistics for the
others: training's conversion left out the utterances without a label for
the task (IEMOCAP's `label4` -1), so an npz that keeps them predicts the
labelled ones in a slightly different context than evaluation did. Another
prepared directory (`data_dir`) is standardised likewise: the run's
training statistics, then `speaker_norm` over that directory's utterances;
it must have the model's task, classes (in order) and feature sizes, and is
read by its own layout: its fixed splits as they are, a cross-validated one
at the run's fold (or `data_fold`, needed for a run on fixed splits). The
run's own data (no `data_dir`, no npz) is read where it trained; if it
moved, `data_dir` names it (the same statistics, so the same predictions).

Every utterance is predicted once, in the context of its own group, exactly
as evaluation predicts (`evaluation.make_predict` over `groups.EvalLayout`),
under the modalities it has, restricted to `combination` if given; the
combination it was predicted under is a column, and in the per-condition
regime that combination's model predicts it (evaluation's fixed protocol
routes by the combination asked for: the two differ only for an utterance
that natively lacks a modality of it).

Output: one row per utterance and seed (the run's models as trained and
reported in results.json; the default), or with `ensemble` one row per
utterance from the seeds' ensemble (mean class probabilities or mean
score). Columns: utt_id, group_id, position, [fold,] model (seed N or
"ensemble"), combination, then the prediction (regression: score;
classification: class, class_name and p_<class> for every class, the
probabilities calibrated by temperature), s (SUGR's log-variance; the log of
the mean exp(s) for the ensemble), confidence (the calibrated probability
that the decision is right, `calibration.py`, fitted on the run's
validation data) and label (empty where unknown). An utterance with none
of the modalities asked (combination "none") is still predicted, from the
missing embeddings alone as the model is built to, but no calibrator was
fitted on such inputs: its confidence and p_<class> are NaN (empty in the
CSV), and a note counts such utterances.
"""

import csv
import dataclasses
import functools
import os

import numpy as np

from mcur_jax import calibration
from mcur_jax import combos
from mcur_jax import data as data_lib
from mcur_jax import evaluation
from mcur_jax import inference
from mcur_jax import normalization
from mcur_jax import npz_input
from mcur_jax import schema
from mcur_jax import validate
from mcur_jax import workdir as workdir_lib


@dataclasses.dataclass
class Predictions:
  """Columns of equal length, in output order (`write_csv`)."""

  columns: dict[str, list]

  def __len__(self) -> int:
    return len(next(iter(self.columns.values())))

  def __repr__(self) -> str:
    """A summary, not every cell (a notebook shows this): the row count,
    the columns, and the first rows."""
    head = [", ".join(f"{k}={_number(v[i])}" for k, v in self.columns.items())
            for i in range(min(3, len(self)))]
    return (f"Predictions({len(self)} rows; columns "
            f"{', '.join(self.columns)}" + "".join(f"\n  {h}" for h in head)
            + ("\n  ..." if len(self) > 3 else "") + ")")

  @classmethod
  def concatenate(cls, parts: list["Predictions"]) -> "Predictions":
    return cls({k: sum((p.columns[k] for p in parts), [])
                for k in parts[0].columns})


def _number(x):
  """A CSV cell: the shortest text that reads back as the same float32 or
  float64; ints as ints; NaN (a value left undefined: the confidence of an
  utterance predicted from no modality) empty."""
  if isinstance(x, (float, np.floating)) and np.isnan(x):
    return ""
  if isinstance(x, np.float32):
    return str(x)
  if isinstance(x, (float, np.floating)):
    return repr(float(x))
  return x


def write_csv(predictions: Predictions, path: str) -> None:
  """Writes the rows to `path`, replacing it whole (`workdir.replacing`)."""
  cols = predictions.columns
  with workdir_lib.replacing(path) as tmp, open(tmp, "w", newline="") as f:
    out = csv.writer(f, lineterminator="\n")  # Not "\r\n": awk, cut.
    out.writerow(list(cols))
    for row in zip(*cols.values()):
      out.writerow([_number(x) for x in row])


def _check_same_features(directory: str, data: schema.Manifest,
                         model: schema.Manifest) -> None:
  """A prepared directory must have the model's task and feature sizes."""
  path = os.path.join(directory, schema.MANIFEST)
  for field in ("task", "num_classes", "classes", "dims"):
    if getattr(data, field) != getattr(model, field):
      lacks = field == "dims" and all(
          d in (0, model.dims[m]) for m, d in data.dims.items())
      raise schema.DataError(
          path, field, f"{getattr(data, field)!r}, but the model was "
          f"trained on {getattr(model, field)!r}" + (
              "; for data that lacks a modality of the model's, predict "
              "from an .npz of it (--input), where a modality's missing "
              "key makes it absent for every utterance" if lacks else ""))


def _masks(split: data_lib.Split, present: np.ndarray,
           combination: str | None) -> np.ndarray:
  """[1, N, 3]: each utterance's modalities, restricted to `combination`."""
  allowed = np.asarray(present, bool)
  if combination is not None:
    allowed = allowed & combos.MASKS[combos.NAMES.index(combination)]
  return (split.available & allowed[None])[None]


def _rows(split, known, fold, model_names, combination_names, pred, s,
          conf, probs, manifest) -> Predictions:
  """Rows utterance-major, then model; `pred` [R, N, K], `s`, `conf` [R, N],
  `probs` [R, N, K] or None."""
  r, n = s.shape
  each = lambda x: [x[i] for i in range(n) for _ in range(r)]
  cols = {"utt_id": each(split.utt_id.tolist()),
          "group_id": each(split.group_id.tolist()),
          "position": each(split.position.tolist())}
  if fold is not None:
    cols["fold"] = [fold] * (n * r)
  cols["model"] = model_names * n
  cols["combination"] = each(combination_names)
  flat = lambda x: np.swapaxes(x, 0, 1).reshape(n * r, *x.shape[2:])
  if probs is None:
    cols["score"] = list(flat(pred)[:, 0])
  else:
    cls = flat(pred).argmax(-1)
    cols["class"] = cls.tolist()
    names = manifest.classes or [str(k) for k in range(pred.shape[-1])]
    cols["class_name"] = [names[k] for k in cls]
    for k, name in enumerate(names):
      cols[f"p_{name}"] = list(flat(probs)[:, k])
  cols["s"] = list(flat(s))
  cols["confidence"] = list(flat(conf))
  cols["label"] = each([x if k else "" for x, k in zip(split.label, known)])
  return Predictions(cols)


def run_stats(workdir: str, config, manifest: schema.Manifest,
              data_dir: str | None = None) -> dict:
  """The statistics the run in `workdir` standardised its features with:
  the workdir's copy (`workdir.kept_stats`), or, for a run from before the
  copy, recomputed from its data (`workdir.legacy_data_dir`)."""
  kept = workdir_lib.kept_stats(workdir, manifest.dims)
  if kept is not None:
    return kept
  return data_lib.train_stats(
      workdir_lib.legacy_data_dir(workdir, config.data_dir, data_dir),
      config.fold or None, config.validation)


def _data_fold(data_dir: str, target: schema.Manifest, given: int | None,
               run_fold: int | None) -> int | None:
  """Which fold of `data_dir` to read: None for fixed splits (whatever the
  run's layout), else the given one or the run's own."""
  if not target.folds:
    if given is not None:
      raise validate.ConfigError("--fold", f"{given}: {data_dir} has fixed "
                                 "train/valid/test splits")
    return None
  if given is None and run_fold is None:
    raise validate.ConfigError("--fold", f"{data_dir} is cross-validated "
                               "and the run has no fold: pass one of "
                               f"{target.folds['values']}")
  return run_fold if given is None else given


def _check_combination(combination: str | None, present, served) -> None:
  """A `combination` the model serves (`served`, of the [3] bool modalities
  `present` in its dataset); else the error names what is missing and what
  it could be asked instead."""
  if combination is None or combos.NAMES.index(combination) in served:
    return
  mask = combos.MASKS[combos.NAMES.index(combination)]
  missing = [m for m, want, has in zip(schema.MODALITIES, mask, present)
             if want and not has]
  raise validate.ConfigError("--combination", f"{combination!r} needs "
                             f"{' and '.join(missing)}, which the model's "
                             "dataset does not have (its combinations: "
                             f"{', '.join(combos.NAMES[c] for c in served)})")


def predict(workdir: str, *, data_dir: str | None = None,
            split: str | None = None, npz: str | None = None,
            combination: str | None = None, ensemble: bool = False,
            keys=(), data_fold: int | None = None
            ) -> tuple[Predictions, list[str]]:
  """Predictions of the run in `workdir` (module docstring) and notes.

  Args:
    workdir: a finished run's workdir. A cross-validated run (fold<k>/)
      predicts each fold's `split` with that fold's models (out-of-fold
      predictions for test), or with `data_fold` that fold's `split` with
      that fold's models only (the other folds' models trained on its
      utterances); an npz then needs one fold's workdir.
    data_dir: a prepared directory (default: the run's own data).
    split: its split to predict (default "test").
    data_fold: the fold of a cross-validated `data_dir` whose `split` to
      predict; default the run's own fold (None for fixed splits).
    npz: an .npz of features instead of a prepared directory.
    keys: FIELD=NPZKEY pairs naming the npz's keys (e.g. "label=label4").
    combination: restrict every utterance to these modalities (e.g. "at",
      or "ta").
    ensemble: one row per utterance from the seeds' ensemble.

  Raises:
    validate.ConfigError: bad arguments (named as the CLI's flags; a
      prepared directory's arguments with an npz, say) or workdir.
    schema.DataError: input that does not fit the model.
  """
  if data_dir and npz:
    raise validate.ConfigError("--data_dir and --input", "give one")
  if keys and not npz:
    raise validate.ConfigError("--key", "names the keys of an --input npz")
  if data_fold is not None and not data_dir:
    raise validate.ConfigError("--fold", "names the fold of a --data_dir")
  if split is not None and npz:
    raise validate.ConfigError("--split", "names the split of a prepared "
                               "directory (the run's own or --data_dir); an "
                               "--input npz is predicted whole")
  split = split or "test"
  if split not in schema.SPLITS:
    raise validate.ConfigError("--split", f"{split!r}, not one of "
                               f"{schema.SPLITS}")
  if combination is not None:
    combination = combos.named(combination)
  if combination is not None and combination not in combos.NAMES:
    raise validate.ConfigError("--combination", f"{combination!r}, not one "
                               f"of {combos.NAMES}")
  folds = inference.fold_workdirs(workdir, data_dir)
  if folds:
    if npz:
      raise validate.ConfigError("--workdir", f"{workdir} is cross-"
                                 "validated: pass one fold's workdir (e.g. "
                                 f"{folds[0]}) to predict an npz")
    if data_fold is not None:
      # Fold k's split with fold k's models: the other folds' trained on it.
      chosen = [d for d in folds if schema.fold_of(d) == data_fold]
      if not chosen:
        raise validate.ConfigError("--fold", f"{data_fold}: {workdir} has "
                                   "no models of that fold (its folds: "
                                   f"{[schema.fold_of(d) for d in folds]})")
      folds = chosen
    parts = [predict(d, data_dir=data_dir, split=split,
                     combination=combination, ensemble=ensemble, keys=keys,
                     data_fold=data_fold)
             for d in folds]
    return (Predictions.concatenate([p for p, _ in parts]),
            sum((n for _, n in parts), []))
  run = inference.Restored.of(workdir, data_dir)
  config, manifest, mesh = run.config, run.manifest, run.mesh
  params = run.params
  present, members = run.present, run.members
  _check_combination(combination, present, members.combos)
  fold = config.fold or None
  # The run's own data, read only where it is needed (its split, or the
  # calibration of a run from before calibration.json): where it trained,
  # else a data_dir, which must then be the run's data (checked).
  trained_there = os.path.exists(os.path.join(config.data_dir,
                                              schema.MANIFEST))
  own = functools.cache(lambda: inference.run_data(
      workdir, config, None if trained_there else data_dir))
  notes = []
  per_speaker = validate.modalities(config, "speaker_norm")
  if npz or data_dir:
    # Other data is standardised with the run's training statistics, as its
    # own was; per-speaker statistics come from the data's own utterances.
    stats = run_stats(workdir, config, manifest, data_dir)
  if npz:
    raw, known, notes = npz_input.read(npz, manifest, keys, per_speaker)
    rows = normalization.standardize(
        {"input": raw}, stats,
        npz_input.speaker_modalities(raw.available, per_speaker),
        npz)["input"]
  else:
    if data_dir:
      target = schema.Manifest.load(data_dir)
      _check_same_features(data_dir, target, manifest)
      rows = getattr(data_lib.load(
          data_dir, fold=_data_fold(data_dir, target, data_fold, fold),
          speaker_norm=per_speaker,
          validation=config.validation, stats=stats), split)
    else:
      rows = getattr(own(), split)
    known = np.ones(len(rows), bool)
  predict_fn = run.predict
  fitted = inference.run_calibration(workdir, config, manifest.task,
                                     predict_fn, params, members,
                                     lambda: own().valid, mesh)
  masks = _masks(rows, present, combination)
  which = evaluation.combo_index(masks, members.combos)
  out = predict_fn(params, evaluation.Inputs.of(rows, config, mesh), masks)
  pred = evaluation.route(out["pred"], members.owner, which)[0]  # [S, N, K]
  s = evaluation.route(out["s"], members.owner, which)[0]
  names = [combos.NAMES[c] if m.any() else "none"
           for c, m in zip(which[0], masks[0])]
  served_name = np.array([combos.NAMES[c] for c in which[0]])
  if ensemble:
    pred, s = (x[None] for x in calibration.ensemble(manifest.task, pred, s))
    cals, model_names = [fitted["ensemble"]], ["ensemble"]
  else:
    cals = fitted["seeds"]
    model_names = [f"seed {seed}" for seed in config.seeds]
  conf = np.zeros(s.shape)
  probs = (np.zeros(pred.shape) if manifest.task == "classification"
           else None)
  for r, by_combination in enumerate(cals):
    for c, cal in by_combination.items():
      rows_c = served_name == c
      conf[r, rows_c], p = calibration.confidence(
          cal, manifest.task, config.task_loss, pred[r, rows_c], s[r, rows_c])
      if probs is not None:
        probs[r, rows_c] = p
  # An utterance with none of the modalities asked is predicted by the
  # fullest combination's model from the missing embeddings alone, but no
  # calibrator was fitted on such inputs: its calibrated values are left
  # empty rather than borrowed from that combination's.
  none = ~masks[0].any(-1)
  if none.any():
    conf[:, none] = np.nan
    if probs is not None:
      probs[:, none] = np.nan
    what = (f"none of combination {combination}'s modalities"
            if combination else "no modality")
    notes.append(f"{f'fold {fold}: ' if fold else ''}{int(none.sum())} of "
                 f"{len(none)} utterances have {what}: predicted from the "
                 "missing embeddings alone (combination none), their "
                 "calibrated confidence"
                 f"{' and probabilities' if probs is not None else ''} "
                 "left empty")
  return _rows(rows, known, fold, model_names, names, pred, s, conf, probs,
               manifest), notes
