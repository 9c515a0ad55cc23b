"""The whole evaluation path against each utterance predicted alone.

`evaluation.make_predict` over `evaluation.Inputs` packs windows into
chunks, gathers utterances into window slots and takes each utterance's
output from the slot of the window that owns it. The pieces have their own
tests (test_groups: the layout's invariants; test_model: a window sees only
itself); this one checks what they add up to, against a reference written
without them: every utterance run through the model on its own, inside
the one window DESIGN section 7 and `groups.eval_windows` give it (windows
of W every W // 2, the last one ending at the group's end; the owner is
the window whose centre is nearest, the earlier on a tie), with its
speakers ranked by first appearance. A slip in the chunk offsets, the
owner lookup, the per-utterance mask or the per-slot gather changes some
utterance's output by far more than the tolerance.
"""

import dataclasses
import functools

import jax
import ml_collections
import numpy as np
import pytest

from mcur_jax import evaluation
from mcur_jax import model
from tests import test_groups

DIMS = {"audio": 5, "text": 7, "video": 3}
# Groups of 1 to 20 utterances: shorter than, equal to and several times
# the windows below.
LENGTHS = (1, 3, 4, 5, 9, 13, 2, 7, 20)


def config(**overrides):
  fields = dict(hidden_dim=16, num_layers=2, num_heads=2, mlp_ratio=2,
                dropout=0.1, proj_dim=8, missing_tokens="cls_only",
                context_layers=2, context_heads=2, context_max_distance=3,
                context_speakers=2, context_window=4,
                context_position_init="recency", context_means="",
                context_kind="transformer", compute_dtype="float32",
                eval_batch_size=8)
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


def make_split(seed):
  """`test_groups.random_split` (positions with gaps, three speakers, the
  rows shuffled) with random features and availability."""
  split = test_groups.random_split(LENGTHS, seed)
  rng = np.random.default_rng(seed)
  return dataclasses.replace(
      split, features={m: rng.normal(size=(len(split), d)).astype(np.float32)
                       for m, d in DIMS.items()},
      available=rng.random((len(split), 3)) < 0.85)


def owner_start(length, p, window):
  """The first rank of the window that predicts rank p, in plain Python."""
  if length <= window:
    return 0
  stride = max(window // 2, 1)
  starts = sorted(set(range(0, length - window, stride)) | {length - window})
  return min(starts, key=lambda s: (abs(p - (s + (window - 1) / 2)), s))


def perturbed_params(cfg):
  """Initial parameters moved off their init (the position bias starts at
  zero and the embeddings small), so that every part of the model shows."""
  graphdef, init = model.create(cfg, DIMS, 3)
  leaves, tree = jax.tree.flatten(init(jax.random.key(1)))
  keys = jax.random.split(jax.random.key(9), len(leaves))
  return graphdef, jax.tree.unflatten(tree, [
      x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


@pytest.mark.parametrize("overrides", [
    {},
    {"context_kind": "gru"},
    pytest.param({"context_means": "audio,text"}, marks=pytest.mark.extended),
    pytest.param({"context_kind": "gru", "context_means": "text",
                  "context_window": 5, "eval_batch_size": 6},
                 marks=pytest.mark.extended),
    {"context_window": 3, "eval_batch_size": 16},
])
def test_predict_equals_each_utterance_alone_in_its_window(overrides):
  cfg = config(**overrides)
  split = make_split(0)
  rng = np.random.default_rng(1)
  graphdef, params = perturbed_params(cfg)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  inputs = evaluation.Inputs.of(split, cfg, mesh)
  predict = evaluation.make_predict(graphdef, mesh, 2, "float32")
  masks = (rng.random((2, len(split), 3)) < 0.7) & split.available
  got = predict(jax.tree.map(lambda x: x[None], params), inputs, masks,
                keys=("pred", "h"))
  alone = jax.jit(functools.partial(model.apply, graphdef))
  window = cfg.context_window
  for c, mask in enumerate(masks):
    want = np.zeros(got["h"].shape[2:], np.float32)
    pred = np.zeros(got["pred"].shape[2:], np.float32)
    for g in np.unique(split.group_id):
      rows = np.flatnonzero(split.group_id == g)
      rows = rows[np.argsort(split.position[rows])]
      # Speakers ranked by first appearance (the model clips the ranks
      # past context_speakers - 1 to the last embedding).
      seen = list(dict.fromkeys(split.speaker[rows]))
      speaker = np.array([seen.index(split.speaker[r]) for r in rows])
      starts = [owner_start(len(rows), p, window) for p in range(len(rows))]
      for start in set(starts):
        win = rows[start:start + window]
        out = alone(params, {
            **{m: split.features[m][win] for m in DIMS},
            "segment": np.zeros(len(win), np.int32),
            "rank": np.arange(start, start + len(win), dtype=np.int32),
            "speaker": speaker[start:start + window].astype(np.int32)},
                    mask[win])
        for p in np.flatnonzero(np.array(starts) == start):
          want[rows[p]] = np.asarray(out["h"])[p - start]
          pred[rows[p]] = np.asarray(out["pred"])[p - start]
    # float32 sums in another order (batched against alone): about 1e-6 on
    # values of order 1.
    np.testing.assert_allclose(got["h"][c, 0], want, atol=2e-5)
    np.testing.assert_allclose(got["pred"][c, 0], pred, atol=2e-5)
