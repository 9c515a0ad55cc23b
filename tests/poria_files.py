"""Writes small folders in the real Poria 2017 CSV layout, for tests that need no real data."""

import csv
import pathlib
import pickle

import numpy as np

DIMS = {"audio": 5, "text": 4, "video": 3}


def write(folder: pathlib.Path, *, videos: int = 8, per_video: int = 4,
          seed: int = 0):
  """Writes a Poria CSV folder plus a GCNet-style MOSI label pickle.

  Videos alternate between the Poria train and test splits. Returns
  (folder, pickle path, {utt_id: (score, {modality: vector})}).
  """
  rng = np.random.default_rng(seed)
  folder.mkdir(parents=True, exist_ok=True)
  utts, truth = [], {}
  for v in range(videos):
    for k in range(per_video):
      utt = f"vid{v:02d}_{k + 1}"
      score = float(np.round(rng.uniform(-3, 3), 1))
      truth[utt] = (score, {m: rng.normal(size=d).round(4)
                            for m, d in DIMS.items()})
      utts.append(utt)
  rows = {u: i for i, u in enumerate(utts)}
  with open(folder / "transcripts.csv", "w", newline="") as f:
    w = csv.writer(f, quoting=csv.QUOTE_ALL)
    for u in utts:
      w.writerow([u, "SOME WORDS", int(u[3:5]) + 1, int(truth[u][0] >= 0)])
  for split, parity in (("train", 0), ("test", 1)):
    members = [u for u in utts if int(u[3:5]) % 2 == parity]
    members = [members[i] for i in rng.permutation(len(members))]
    _rows(folder / f"text_{split}.csv",
          [[rows[u], *truth[u][1]["text"]] for u in members])
    for m in DIMS:
      _rows(folder / f"{m}_{split}0.csv",
            [[*truth[u][1][m], int(truth[u][0] >= 0)] for u in members])
  ids, labels = {}, {}
  for u in utts:
    vid = u.rsplit("_", 1)[0]
    ids.setdefault(vid, []).append(u)
    labels.setdefault(vid, []).append(truth[u][0])
  vids = sorted(ids)
  pkl = folder.parent / "labels.pkl"
  with open(pkl, "wb") as f:
    pickle.dump([ids, labels, {v: [""] * len(ids[v]) for v in vids},
                 {v: np.array(["S"] * len(ids[v])) for v in vids},
                 set(vids[:-2]), {vids[-2]}, {vids[-1]}], f)
  return folder, pkl, truth


def _rows(path, rows):
  with open(path, "w", newline="") as f:
    csv.writer(f, quoting=csv.QUOTE_ALL).writerows(rows)
