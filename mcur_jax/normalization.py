"""Feature standardisation: per-modality statistics of the training rows
(`feature_stats`, which the converter stores in the manifest), their
application (`normalize`), per-speaker standardisation
(`normalize_per_speaker`, IEMOCAP's audio) and the two together
(`standardize`). Absent rows stay exactly zero throughout: the model never
reads them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from mcur_jax import schema

if TYPE_CHECKING:
  from mcur_jax.data import Split

# A column whose std is at most this is only centred, not scaled: a constant
# one, or a numerically dead one (4 of the 768 mpnet text dimensions of the
# real sets have std 1e-7 to 1e-33; scaled, they would be noise at unit
# scale). The converter notes such columns when they are not constant.
MIN_STD = 1e-6


def feature_stats(split: Split) -> dict[str, dict[str, list[float]]]:
  """Per-modality mean and std over the rows where the modality is present."""
  stats = {}
  for j, m in enumerate(schema.MODALITIES):
    rows = split.features[m][split.available[:, j]].astype(np.float64)
    if len(rows):
      mean, std = rows.mean(0), rows.std(0)
    else:
      mean = std = np.zeros(split.features[m].shape[1])
    stats[m] = {"mean": mean.tolist(), "std": std.tolist()}
  return stats


def normalize(split: Split, stats) -> Split:
  """Standardises present rows with `stats`; a constant column keeps std 1.

  Absent rows stay exactly zero (the model never reads them; the mask does).
  """
  features = {}
  for j, m in enumerate(schema.MODALITIES):
    mean = np.asarray(stats[m]["mean"], np.float32)
    std = np.asarray(stats[m]["std"], np.float32)
    std = np.where(std > MIN_STD, std, 1.0).astype(np.float32)
    x = (split.features[m] - mean) / std
    features[m] = np.where(split.available[:, j:j + 1], x, 0).astype(np.float32)
  return dataclasses.replace(split, features=features)


def speakers(split: Split) -> np.ndarray:
  """Speaker identity per row: "session|speaker" (IEMOCAP's actors: one
  speaker id per gender and session)."""
  return np.char.add(np.char.add(split.session.astype(str), "|"),
                     split.speaker.astype(str))


def normalize_per_speaker(parts: dict[str, Split], modalities: Sequence[str],
                          path: str) -> dict[str, Split]:
  """Standardises each of `modalities` with its speaker's own statistics.

  Each speaker (`speakers`) gets the mean and std of the present rows of
  all `parts` together: the features of every utterance of that speaker,
  test included, and never a label. This takes the speaker's voice out of
  features that carry it (IEMOCAP's eGeMAPS audio) at the price of
  needing the new speaker's utterances (not their labels) before
  predicting them. A z-score is invariant to the per-column affine
  standardisation `normalize` applies, so this may run after it. Absent
  rows stay zero; a column constant for a speaker keeps std 1.

  Raises:
    schema.DataError: a record without a speaker id (`path`, "speaker").
  """
  names = list(parts)
  keys = np.concatenate([speakers(parts[n]) for n in names])
  missing = sum(int((parts[n].speaker == "").sum()) for n in names)
  if missing:
    raise schema.DataError(path, "speaker", f"{missing} records have no "
                           "speaker id, which speaker_norm needs (IEMOCAP's "
                           "config sets it: --config.speaker_norm= "
                           "standardises with the training split's "
                           "statistics instead)")
  bounds = np.cumsum([0] + [len(parts[n]) for n in names])
  features = {n: dict(parts[n].features) for n in names}
  for m in modalities:
    j = schema.MODALITIES.index(m)
    x = np.concatenate([parts[n].features[m] for n in names]).astype(
        np.float64)
    present = np.concatenate([parts[n].available[:, j] for n in names])
    out = np.zeros_like(x)
    for key in np.unique(keys):
      rows = (keys == key) & present
      if rows.any():
        std = x[rows].std(0)
        out[rows] = (x[rows] - x[rows].mean(0)) / np.where(std > MIN_STD, std,
                                                           1.0)
    for i, n in enumerate(names):
      features[n][m] = out[bounds[i]:bounds[i + 1]].astype(np.float32)
  return {n: dataclasses.replace(parts[n], features=features[n])
          for n in names}


def as_arrays(stats: dict) -> dict:
  """`feature_stats`'s lists as float64 arrays, as the manifest's are read."""
  return {m: {k: np.asarray(v, np.float64) for k, v in values.items()}
          for m, values in stats.items()}


def normalization_stats(directory: str | os.PathLike,
                        manifest: schema.Manifest, name: str
                        ) -> dict[str, dict[str, np.ndarray]]:
  """The manifest's normalisation statistics `name` ("train" or a fold name)
  as float64 arrays, checked to hold `dims[m]` values for each modality m."""
  stats = {}
  for m in schema.MODALITIES:
    stats[m] = {}
    for key, values in manifest.normalization[name][m].items():
      if len(values) != manifest.dims[m]:
        raise schema.DataError(
            os.path.join(directory, schema.MANIFEST),
            f"normalization.{name}.{m}.{key}", f"{len(values)} values, but "
            f"dims.{m} is {manifest.dims[m]}")
      stats[m][key] = np.asarray(values, np.float64)
  return stats


def standardize(parts: dict[str, Split], stats,
                speaker_norm: Sequence[str] = (), path: str = ""
                ) -> dict[str, Split]:
  """`normalize` with `stats`, then `normalize_per_speaker` of the
  `speaker_norm` modalities over all `parts` together (`path` names the
  data in its errors)."""
  parts = {s: normalize(p, stats) for s, p in parts.items()}
  if speaker_norm:
    parts = normalize_per_speaker(parts, speaker_norm, path)
  return parts
