"""Generated datasets shaped like MOSI, MOSEI and IEMOCAP, with planted structure.

    python -m data_prep.synthetic --like mosi|mosei|iemocap4|iemocap6 --out DIR
        [--seed 0] [--scale 1.0] [--overwrite]

writes a prepared directory (manifest `format` "synthetic") that loads like a
converted real one, so the model, the losses and the evaluation can be tested
where the answer is known. The same (like, seed, scale) gives the same records
and manifest.

Shape (`scale` multiplies every utterance and group count, for fast tests;
each split or session keeps at least `_MIN_GROUPS` groups):

* mosi: train/valid/test 1284/229/686 utterances in 52/10/31 videos of 9..63
  utterances (the standard CMU-MOSI folds); scores on a 0.2 grid in [-3, 3]
  whose 7-class (round) counts over all splits are, before corruption,
  exactly the real [80, 385, 404, 403, 379, 463, 85] for -3..3 (~4 % zeros).
* mosei: 16326/1871/4659 utterances in videos of 7 utterances on average;
  scores on a 1/3 grid with ASSUMED 7-class proportions `_SCORE_BINS`
  (positive-skewed; the real MOSEI labels are not available here).
* iemocap4 / iemocap6: 5531 / 7433 utterances in 151 dialogues (28/30/32/30/31
  per session) of 5..110 / 8..110 utterances, with the real per-session class
  counts `_IEMOCAP_CLASSES`; speakers F/M taking turns; split "all" with
  session folds (`data.load(dir, fold=k)` tests session k).

Ids look like real ones: `<11-char video id>_<k>` (k from 1) for mosi/mosei,
`Ses01F_impro01_M003` for iemocap (dialogue `Ses01F_impro01`, speaker M).
Labels are independent of the group and of the position in it.

Features (dims of the GCNet features: audio 512, text 1024, video 1024), for
each modality m and utterance i with TRUE label y_i in group g_i:

    z_i = STRENGTH[task][m] * code_m(y_i) + GROUP_NUISANCE * u_m[g_i] + e_i
    x_i = offset_m + scale_m * (z_i @ W_m / sqrt(LATENT) + SENSOR_NOISE * n_i)

with u_m[g], e_i ~ N(0, I_LATENT), n_i ~ N(0, I_dim), W_m ~ N(0, 1)^(LATENT x
dim), offset_m ~ N(0, 1)^dim and scale_m = exp(N(0, 0.5^2))^dim per dimension
(raw, unnormalised scales, like openSMILE). code_m(y) is, for classes, row y of
a random LATENT x LATENT orthogonal matrix (orthonormal class codes); for
scores, (y / SCORE_STD) * d_m with d_m a random unit vector. The modalities are
conditionally independent given y and differ only in STRENGTH: text strong,
audio medium, video weak, so a linear probe orders them text > audio > video >
chance and all three together beat text alone (mosi, ridge, Acc-2 Non0: about
0.81 / 0.73 / 0.64 / chance 0.51, all three 0.84; iemocap4 fold 1, WA: about
0.74 / 0.62 / 0.48 / majority 0.35, all three 0.82). The per-group nuisance
u_m[g] is a speaker / recording offset shared by a video or dialogue; it
carries no label information.

Native absence: in every split (every session for iemocap) exactly
round(ABSENT_VIDEO * n) utterances, drawn uniformly, have no video: the video
features are zeros and `available` is False (an empty record list on disk).

Corrupted labels, flagged in the extra int field `corrupted` (1 = corrupted,
present in every split): exactly round(CORRUPTED * n) utterances drawn
uniformly per train split (mosi, mosei) or per session (iemocap, where every
session trains in four of the five folds, so a fold's test session holds
corrupted labels too: score those on `corrupted == 0`). Valid and test labels
of mosi/mosei are never corrupted, so their evaluation stays honest. The
stored label is wrong while the features follow the true one: the classes of
a session's corrupted rows are shuffled among them so that each changes (the
class counts stay the real ones); a score becomes a fresh non-zero score of
the opposite sign (either sign for a true 0) from the score distribution.
"""

import argparse
import math
import string
import sys

import numpy as np

from data_prep import common
from data_prep import writer
from mcur_jax import schema
from mcur_jax import utterance_rows

# Bumped whenever the recipe changes, so manifests tell the versions apart.
RECIPE_VERSION = 1
DIMS = {"audio": 512, "text": 1024, "video": 1024}
LATENT = 16
# Signal strength per task and modality: a class code and a score direction
# need different amplitudes for similar accuracies.
STRENGTH = {"classification": {"audio": 1.6, "text": 2.3, "video": 1.1},
            "regression": {"audio": 0.8, "text": 1.2, "video": 0.55}}
GROUP_NUISANCE = 0.5
SENSOR_NOISE = 0.5
SCORE_STD = 1.5
ABSENT_VIDEO = 0.1
CORRUPTED = 0.1

# Split -> (utterances, videos); mosei videos: utterances / 7.
_VIDEO_SPLITS = {
    "mosi": {"train": (1284, 52), "valid": (229, 10), "test": (686, 31)},
    "mosei": {"train": (16326, 2332), "valid": (1871, 267),
              "test": (4659, 666)},
}
# Utterances per video (mosi: the real range; mosei: assumed).
_VIDEO_SIZE = {"mosi": (9, 63), "mosei": (2, 30)}
# Score grid points per unit (mean of 5 or 3 annotators' integer ratings).
_GRID = {"mosi": 5, "mosei": 3}
# 7-class weights of the scores, -3..3 (MOSI: the real counts).
_SCORE_BINS = {"mosi": (80, 385, 404, 403, 379, 463, 85),
               "mosei": (1, 6, 17, 26, 32, 15, 3)}
# Session -> class counts, dialogues per session and dialogue length range of
# the real IEMOCAP label pickles (GCNet 4-way and 6-way).
_IEMOCAP_CLASSES = {
    "iemocap4": {1: (278, 194, 384, 229), 2: (327, 197, 362, 137),
                 3: (286, 305, 320, 240), 4: (303, 143, 258, 327),
                 5: (442, 245, 384, 170)},
    "iemocap6": {1: (143, 194, 384, 229, 143, 280),
                 2: (125, 197, 362, 137, 210, 325),
                 3: (171, 305, 320, 240, 151, 382),
                 4: (65, 143, 258, 327, 238, 481),
                 5: (144, 245, 384, 170, 299, 381)},
}
_DIALOGUES = {1: 28, 2: 30, 3: 32, 4: 30, 5: 31}
_DIALOGUE_SIZE = {"iemocap4": (5, 110), "iemocap6": (8, 110)}
# Probability that the next utterance of a dialogue is the other speaker's.
_TURN_SWITCH = 0.8
_MIN_GROUPS = 3
_ID_CHARS = np.array(list(string.ascii_letters + string.digits + "-_"))


def apportion(total: int, weights) -> np.ndarray:
  """`total` cut into integers proportional to `weights` (largest remainder)."""
  weights = np.asarray(weights, np.float64)
  quota = total * weights / weights.sum()
  counts = np.floor(quota).astype(np.int64)
  order = np.argsort(counts - quota, kind="stable")
  counts[order[:total - counts.sum()]] += 1
  return counts


def group_sizes(rng, total: int, groups: int, low: int, high: int
                ) -> np.ndarray:
  """Random sizes of `groups` groups that sum to `total`, each in [low, high].

  Each group gets `low`, the rest is shared out in proportion to Gamma(2)
  weights (a right-skewed spread, like video and dialogue lengths); shares
  above `high` flow to the groups with room. The bounds widen when `total`
  cannot satisfy them.
  """
  low = min(low, total // groups)
  high = max(high, -(-total // groups))
  sizes = np.full(groups, low, np.int64)
  weights = rng.gamma(2.0, size=groups)
  rest = total - sizes.sum()
  while rest:
    room = high - sizes
    add = np.minimum(apportion(rest, weights * (room > 0)), room)
    sizes += add
    rest -= add.sum()
  return sizes


def _scaled(count: int, scale: float, minimum: int) -> int:
  return max(minimum, round(count * scale))


def _pick(rng, eligible: np.ndarray, fraction: float) -> np.ndarray:
  """A mask of exactly round(fraction * n) of the n `eligible` rows."""
  rows = np.flatnonzero(eligible)
  mask = np.zeros(len(eligible), bool)
  mask[rng.permutation(rows)[:round(fraction * len(rows))]] = True
  return mask


def _video_ids(rng, count: int) -> list[str]:
  """`count` distinct YouTube-like 11-character ids."""
  ids = {}
  while len(ids) < count:
    chars = _ID_CHARS[rng.integers(len(_ID_CHARS), size=11)]
    ids.setdefault("".join(chars), None)
  return list(ids)


def _score_grid(like: str):
  """The possible scores and their 7-class bin weights, for a score dataset."""
  steps = _GRID[like]
  grid = np.arange(-3 * steps, 3 * steps + 1) / steps
  bins = np.asarray(_SCORE_BINS[like], np.float64)
  return grid, np.round(grid).astype(np.int64) + 3, bins


def _scores(rng, like: str, count: int) -> np.ndarray:
  """`count` scores whose 7-class counts are `apportion`ed from the bin weights.

  The scores of a bin are spread uniformly over its grid points.
  """
  grid, grid_bin, bins = _score_grid(like)
  per_bin = rng.permutation(np.repeat(np.arange(7), apportion(count, bins)))
  scores = np.empty(count)
  for b in range(7):
    rows = per_bin == b
    scores[rows] = rng.choice(grid[grid_bin == b], size=rows.sum())
  return scores


def _wrong_scores(rng, like: str, score: np.ndarray) -> np.ndarray:
  """Non-zero scores of the opposite sign (either sign for 0), from the
  dataset's score distribution."""
  grid, grid_bin, bins = _score_grid(like)
  weights = bins[grid_bin] / np.bincount(grid_bin)[grid_bin] * (grid != 0)
  magnitude = np.abs(rng.choice(grid, size=len(score),
                               p=weights / weights.sum()))
  sign = np.where(score == 0, rng.choice([-1.0, 1.0], size=len(score)),
                  -np.sign(score))
  return sign * magnitude


def _other_classes(rng, label: np.ndarray, num_classes: int) -> np.ndarray:
  """Wrong classes for `label`: a shuffle of them in which every entry changes.

  A shuffle keeps the class counts; an entry the shuffle leaves unchanged
  swaps with a random entry where both end up wrong, or, where there is none
  (a class holds more than half of `label`), takes a uniformly random other
  class.
  """
  new = rng.permutation(label)
  for i in np.flatnonzero(new == label):
    if new[i] != label[i]:  # fixed by an earlier swap
      continue
    swappable = np.flatnonzero((label != new[i]) & (new != label[i]))
    if len(swappable):
      j = rng.choice(swappable)
      new[i], new[j] = new[j], new[i]
    else:
      new[i] = (label[i] + rng.integers(1, num_classes)) % num_classes
  return new


def _video_rows(rng, like: str, scale: float) -> dict[str, np.ndarray]:
  """Ids, splits and true scores of a MOSI/MOSEI-like dataset."""
  layout = {}
  for split, (count, videos) in _VIDEO_SPLITS[like].items():
    videos = _scaled(videos, scale, _MIN_GROUPS)
    layout[split] = group_sizes(rng, _scaled(count, scale, videos), videos,
                                *_VIDEO_SIZE[like])
  sizes = np.concatenate(list(layout.values()))
  video_ids = _video_ids(rng, len(sizes))
  utt_id, group_id, position = [], [], []
  for video, size in zip(video_ids, sizes):
    utt_id += [f"{video}_{k + 1}" for k in range(size)]
    group_id += [video] * size
    position += range(size)
  n = int(sizes.sum())
  return {"utt_id": np.asarray(utt_id), "group_id": np.asarray(group_id),
          "position": np.asarray(position),
          "split": np.repeat(list(layout), [s.sum() for s in layout.values()]),
          "label": _scores(rng, like, n), "session": np.zeros(n, np.int64),
          "speaker": np.full(n, "")}


def _dialogue_name(session: int, index: int) -> str:
  """A distinct IEMOCAP-like dialogue name per (session, index)."""
  gender = "FM"[index % 2]
  kind = ("impro", "script")[index // 2 % 2]
  return f"Ses{session:02d}{gender}_{kind}{index // 4 + 1:02d}"


def _speakers(rng, size: int) -> list[str]:
  """F/M turns: each utterance switches speaker with `_TURN_SWITCH`."""
  switches = np.cumsum(rng.random(size) < _TURN_SWITCH)
  first = rng.integers(2)
  return ["FM"[(first + s) % 2] for s in switches]


def _dialogue_rows(rng, like: str, scale: float) -> dict[str, np.ndarray]:
  """Ids, sessions, speakers and true classes of an IEMOCAP-like dataset."""
  columns = {k: [] for k in ("utt_id", "group_id", "position", "speaker",
                             "session", "label")}
  for session, per_class in _IEMOCAP_CLASSES[like].items():
    per_class = [_scaled(c, scale, 1) for c in per_class]
    labels = rng.permutation(np.repeat(np.arange(len(per_class)), per_class))
    dialogues = _scaled(_DIALOGUES[session], scale, _MIN_GROUPS)
    sizes = group_sizes(rng, len(labels), dialogues, *_DIALOGUE_SIZE[like])
    starts = np.concatenate([[0], np.cumsum(sizes)])
    for index, size in enumerate(sizes):
      name = _dialogue_name(session, index)
      speakers = _speakers(rng, size)
      turns = {"F": 0, "M": 0}
      for speaker in speakers:
        columns["utt_id"].append(f"{name}_{speaker}{turns[speaker]:03d}")
        turns[speaker] += 1
      columns["group_id"] += [name] * size
      columns["position"] += range(size)
      columns["speaker"] += speakers
      columns["session"] += [session] * size
      columns["label"] += labels[starts[index]:starts[index + 1]].tolist()
  rows = {k: np.asarray(v) for k, v in columns.items()}
  rows["split"] = np.full(len(rows["label"]), schema.ALL_SPLIT)
  return rows


def _codes(rng, label: np.ndarray, classes) -> np.ndarray:
  """code_m(y) of the module docstring, one [LATENT] row per utterance."""
  if classes:
    basis = np.linalg.qr(rng.standard_normal((LATENT, LATENT)))[0]
    return basis[label]
  direction = rng.standard_normal(LATENT)
  direction /= np.linalg.norm(direction)
  return np.outer(label / SCORE_STD, direction)


def _features(rng, task: str, label: np.ndarray, group_id: np.ndarray,
              classes) -> dict[str, np.ndarray]:
  """The features of every modality from the TRUE labels (module docstring)."""
  groups, group_index = np.unique(group_id, return_inverse=True)
  n = len(label)
  features = {}
  for m, dim in DIMS.items():
    nuisance = rng.standard_normal((len(groups), LATENT))[group_index]
    z = (STRENGTH[task][m] * _codes(rng, label, classes)
         + GROUP_NUISANCE * nuisance
         + rng.standard_normal((n, LATENT))).astype(np.float32)
    mixing = rng.standard_normal((LATENT, dim), np.float32) / math.sqrt(LATENT)
    x = z @ mixing
    x += SENSOR_NOISE * rng.standard_normal((n, dim), np.float32)
    x *= np.exp(0.5 * rng.standard_normal(dim, np.float32))
    x += rng.standard_normal(dim, np.float32)
    features[m] = x
  return features


def _absent_and_corrupted(rng, like: str, classes, rows: dict[str, np.ndarray]):
  """Native absence of video and corrupted labels (module docstring).

  Returns (stored labels, video-absent mask, corrupted mask); exact
  fractions per split (mosi, mosei) or per session (iemocap).
  """
  strata = rows["session"] if classes else rows["split"]
  label = rows["label"].copy()
  absent_video = np.zeros(len(label), bool)
  corrupted = np.zeros(len(label), bool)
  for stratum in np.unique(strata):
    here = strata == stratum
    absent_video |= _pick(rng, here, ABSENT_VIDEO)
    if classes or stratum == "train":
      hit = _pick(rng, here, CORRUPTED)
      corrupted |= hit
      label[hit] = (_other_classes(rng, label[hit], len(classes)) if classes
                    else _wrong_scores(rng, like, label[hit]))
  return label, absent_video, corrupted


def generate(like: str, seed: int = 0, scale: float = 1.0) -> writer.Table:
  """A synthetic dataset shaped like `like` (see the module docstring).

  Args:
    like: mosi, mosei, iemocap4 or iemocap6.
    seed: a non-negative integer; the output is a function of (like, seed,
      scale).
    scale: multiplies every utterance and group count (> 0; < 1 for tests).
  """
  if like not in common.DATASETS:
    raise schema.DataError("command line", "--like", f"unknown {like!r} "
                           f"(known: {', '.join(common.DATASETS)})")
  task, classes = common.DATASETS[like]
  if not seed >= 0:
    raise schema.DataError("command line", "--seed", f"{seed}: must be >= 0")
  if not (scale > 0 and math.isfinite(scale)):
    raise schema.DataError("command line", "--scale", f"{scale}: must be > 0")
  rng = np.random.default_rng(seed)
  rows = (_dialogue_rows if classes else _video_rows)(rng, like, scale)
  label, absent_video, corrupted = _absent_and_corrupted(rng, like, classes,
                                                         rows)
  features = _features(rng, task, rows["label"], rows["group_id"], classes)
  features["video"][absent_video] = 0
  available = np.ones((len(label), len(schema.MODALITIES)), bool)
  available[:, schema.MODALITIES.index("video")] = ~absent_video
  generator = f"data_prep.synthetic (like={like}, seed={seed}, scale={scale})"
  return writer.Table(
      dataset=like, task=task, classes=classes,
      rows=utterance_rows.make_rows(
          utt_id=rows["utt_id"], group_id=rows["group_id"],
          position=rows["position"], label=label, features=features,
          available=available, speaker=rows["speaker"],
          session=rows["session"], extras={"corrupted": corrupted}),
      split=rows["split"],
      origin={f: f"<{generator}>" for f in
              ("utt_id", "label", "split") + schema.MODALITIES},
      format="synthetic",
      split_source=f"generated: the split structure of real {like}",
      sources=[{"role": "generator", "name": "data_prep.synthetic",
                "recipe_version": RECIPE_VERSION, "like": like, "seed": seed,
                "scale": scale}],
      notes=[
          f"SYNTHETIC data from {generator}: generated features and labels "
          f"shaped like {like}, not real recordings",
          f"planted modality strengths {STRENGTH[task]} (text > audio > "
          "video)",
          f"video natively absent for {int(absent_video.sum())} utterances",
          f"{int(corrupted.sum())} labels corrupted (extra field `corrupted`"
          f" = 1; {'all sessions' if classes else 'train split only'}); "
          "the features follow the true labels",
      ],
      session_folds=bool(classes))


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m data_prep.synthetic", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--like", required=True, choices=sorted(common.DATASETS),
                 help="the real dataset whose shape to copy")
  p.add_argument("--out", required=True, help="output directory (new)")
  p.add_argument("--seed", type=int, default=0, help="random seed (>= 0)")
  p.add_argument("--scale", type=float, default=1.0,
                 help="multiplies every utterance and group count")
  p.add_argument("--overwrite", action="store_true",
                 help="replace --out if it exists")
  return p


def main(argv=None) -> int:
  args = parser().parse_args(argv)
  try:
    manifest = writer.write(generate(args.like, args.seed, args.scale),
                            args.out, overwrite=args.overwrite)
  except (schema.DataError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  counts = ", ".join(f"{s} {v['count']}" for s, v in manifest.splits.items())
  print(f"wrote {args.out}: synthetic {manifest.dataset} ({manifest.task}), "
        f"{counts}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
