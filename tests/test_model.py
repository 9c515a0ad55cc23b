"""The MCUR network used functionally: `create` -> (graphdef, init), `apply`."""

import functools

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from mcur_jax import attention
from mcur_jax import context
from mcur_jax import groups
from mcur_jax import model

# About 1.4 minutes on 2 cores: conftest schedules the slow modules first.
pytestmark = pytest.mark.slow(minutes=1.4)

DIMS = {"audio": 5, "text": 7, "video": 3}
B, K, D, P = 6, 3, 16, 8
MODES = ("cls_only", "masked", "visible")
# Rows: all, no audio, no text, no video, video only, none.
MASK = np.array([[1, 1, 1], [0, 1, 1], [1, 0, 1], [1, 1, 0], [0, 0, 1],
                 [0, 0, 0]], bool)


def config(**overrides):
  """A small model config; context_layers 0 = the per-utterance model."""
  fields = dict(hidden_dim=D, num_layers=2, num_heads=2, mlp_ratio=2,
                dropout=0.1, proj_dim=P, missing_tokens="cls_only",
                context_layers=0, context_heads=2, context_max_distance=4,
                context_speakers=2, context_window=0,
                context_position_init="zero", context_means="",
                context_kind="transformer", compute_dtype="float32")
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


@functools.cache
def graphdef(mode):
  return model.create(config(missing_tokens=mode), DIMS, K)[0]


@functools.cache
def forward(mode):
  """jit(apply) for one `missing_tokens` mode (its params are the same)."""
  return jax.jit(functools.partial(model.apply, graphdef(mode)))


def loss(mode, params, features, mask, key):
  """A scalar of every head's output, through `apply`; also the outputs."""
  out = model.apply(graphdef(mode), params, features, mask, key)
  return (jnp.sum(out["pred"] ** 2) + jnp.sum(out["s"]) +
          jnp.sum(out["z"][:, 0])), out


@functools.cache
def train_grad(mode):
  """jit(grad) w.r.t. all parameters, with a dropout key: (grads, outputs)."""
  return jax.jit(jax.grad(functools.partial(loss, mode), has_aux=True))


@functools.cache
def missing_grad(mode):
  """jit(grad) w.r.t. the missing embeddings only (added as `delta`)."""
  def f(delta, params, features, mask):
    return loss(mode, shift(params, "missing_embedding", delta), features,
                mask, None)[0]
  return jax.jit(jax.grad(f))


def features(seed, scale=1.0, b=B, dims=None):
  rng = np.random.default_rng(seed)
  return {m: jnp.asarray(scale * rng.normal(size=(b, d)), jnp.float32)
          for m, d in (DIMS if dims is None else dims).items()}


def prefix(name):
  """"a/b" -> "['a']['b']", the start of that parameter's key path."""
  return "".join(f"['{part}']" for part in name.split("/"))


def paths(state):
  """The key paths of a params/grads state, as strings."""
  return [jax.tree_util.keystr(path)
          for path, _ in jax.tree_util.tree_leaves_with_path(state)]


def leaf(state, name):
  """The array of the parameter `name` ("cls", "context/distance_bias")."""
  (value,) = [x for path, x in jax.tree_util.tree_leaves_with_path(state)
              if jax.tree_util.keystr(path).startswith(prefix(name))]
  return np.asarray(value)


def shift(state, name, delta):
  """`state` with `delta` added to the parameter `name`."""
  return jax.tree_util.tree_map_with_path(
      lambda path, x: x + delta
      if jax.tree_util.keystr(path).startswith(prefix(name)) else x, state)


@pytest.fixture(scope="module")
def stacked():
  """Two parameter sets, initialised under jit(vmap(init)) over two keys."""
  _, init = model.create(config(), DIMS, K)
  return jax.jit(jax.vmap(init))(jax.random.split(jax.random.key(42), 2))


@pytest.fixture(scope="module")
def params(stacked):
  return jax.tree_util.tree_map(lambda x: x[0], stacked)


def assert_outputs_equal(a, b):
  for k in ("pred", "z", "s", "h"):
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_output_shapes_and_unit_z(params):
  """Shapes of every head; z has unit norm; all outputs finite."""
  out = forward("cls_only")(params, features(0), jnp.asarray(MASK), None)
  assert out["pred"].shape == (B, K)
  assert out["z"].shape == (B, P)
  assert out["s"].shape == (B,)
  assert out["h"].shape == (B, D)
  np.testing.assert_allclose(jnp.linalg.norm(out["z"], axis=-1), 1.0,
                             rtol=1e-5)
  assert all(np.isfinite(v).all() for v in out.values())


@pytest.mark.parametrize("mode", MODES)
def test_masked_out_features_do_not_matter(params, mode):
  """Changing an absent modality's values changes no output; changing a
  present one's does."""
  f = forward(mode)
  x, noise, mask = features(1), features(2, scale=50.0), jnp.asarray(MASK)
  perturbed = {m: jnp.where(mask[:, j:j + 1], x[m], noise[m])
               for j, m in enumerate(DIMS)}
  base = f(params, x, mask, None)
  assert_outputs_equal(base, f(params, perturbed, mask, None))
  present = {m: jnp.where(mask[:, j:j + 1], noise[m], x[m])
             for j, m in enumerate(DIMS)}
  moved = f(params, present, mask, None)
  changed = np.abs(np.asarray(moved["pred"] - base["pred"])).max(-1) > 1e-4
  np.testing.assert_array_equal(changed, MASK.any(-1))


@pytest.mark.parametrize("mode, matters", [("cls_only", True),
                                           ("masked", False),
                                           ("visible", True)])
def test_empty_mask_prediction_and_missing_embeddings(params, mode, matters):
  """A sample without any modality is predicted; it depends on the missing
  embeddings unless they are masked from every query."""
  f, x, mask = forward(mode), features(3), jnp.asarray(MASK)
  base = f(params, x, mask, None)
  assert np.isfinite(base["pred"][-1]).all()
  noise = np.random.default_rng(0).normal(0, 0.5, (3, D))
  moved = f(shift(params, "missing_embedding", noise), x, mask, None)
  delta = np.abs(np.asarray(moved["pred"] - base["pred"])).max(-1)
  assert (delta[-1] > 1e-4) == matters
  # A fully available sample never uses a missing embedding.
  assert delta[0] == 0.0


def test_missing_embedding_gradient(params):
  """'cls_only': a non-zero gradient for each modality's missing embedding
  (each is absent somewhere); 'masked': exactly zero."""
  x, mask = features(4), jnp.asarray(MASK)
  grads, _ = train_grad("cls_only")(params, x, mask, jax.random.key(7))
  missing = leaf(grads, "missing_embedding")
  assert missing.shape == (3, D)
  assert (np.abs(missing).max(-1) > 0).all()
  # `shift` reaches the missing embeddings: see the test above.
  np.testing.assert_array_equal(
      missing_grad("masked")(jnp.zeros((3, D)), params, x, mask), 0.0)


def test_batch_independence(params):
  """'cls_only': a sample's outputs ignore the other samples of the batch."""
  f = forward("cls_only")
  x, other = features(5), features(6)
  rng = np.random.default_rng(0)
  a = f(params, x, jnp.asarray(MASK), None)
  for i in range(B):
    keep = jnp.arange(B)[:, None] == i
    mixed = {m: jnp.where(keep, x[m], other[m]) for m in DIMS}
    mask = np.where(np.asarray(keep), MASK, rng.random((B, 3)) < 0.5)
    b = f(params, mixed, jnp.asarray(mask), None)
    for k in ("pred", "z", "s", "h"):
      np.testing.assert_allclose(a[k][i], b[k][i], atol=1e-6, err_msg=k)


def test_dropout_keys(params):
  """key=None is deterministic; with a key (in a jitted training gradient)
  the outputs depend on that key and only on it."""
  f, x, mask = forward("cls_only"), features(7), jnp.asarray(MASK)
  assert_outputs_equal(f(params, x, mask, None), f(params, x, mask, None))
  g = train_grad("cls_only")
  k1, k2 = jax.random.key(1), jax.random.key(2)
  _, one = g(params, x, mask, k1)
  assert_outputs_equal(one, g(params, x, mask, k1)[1])
  for other in (g(params, x, mask, k2)[1], f(params, x, mask, None)):
    assert np.abs(np.asarray(one["pred"] - other["pred"])).max() > 1e-4


def test_init_under_vmap(stacked, params):
  """vmap(init) stacks one distinct parameter set per key, and each set
  runs through apply."""
  assert all(x.shape[0] == 2 for x in jax.tree_util.tree_leaves(stacked))
  assert jax.tree_util.tree_structure(stacked) == (
      jax.tree_util.tree_structure(params))
  for name in ("missing_embedding", "type_embedding", "cls"):
    a = leaf(stacked, name)
    assert np.abs(a[0] - a[1]).max() > 1e-3
  second = jax.tree_util.tree_map(lambda x: x[1], stacked)
  x, mask = features(8), jnp.asarray(MASK)
  a = forward("cls_only")(params, x, mask, None)
  b = forward("cls_only")(second, x, mask, None)
  assert np.abs(np.asarray(a["pred"] - b["pred"])).max() > 1e-4


def test_jit_grad_with_dropout_key(params):
  """jit(grad) through apply with a dropout key: finite, key-dependent."""
  grad = train_grad("cls_only")
  x, mask = features(9), jnp.asarray(MASK)
  g1, _ = grad(params, x, mask, jax.random.key(1))
  g2, _ = grad(params, x, mask, jax.random.key(2))
  flat1, flat2 = (np.concatenate([np.ravel(v) for v in
                                  jax.tree_util.tree_leaves(g)])
                  for g in (g1, g2))
  assert np.isfinite(flat1).all() and np.abs(flat1).max() > 0
  assert np.abs(flat1 - flat2).max() > 1e-6
  assert jax.tree_util.tree_structure(g1) == jax.tree_util.tree_structure(
      params)


def test_invalid_config_raises():
  """Unknown missing_tokens, compute_dtype or context_kind, and heads
  (fusion or context) not dividing the hidden size, are refused when the
  model is built."""
  with pytest.raises(ValueError, match="missing_tokens"):
    model.create(config(missing_tokens="zeros"), DIMS, K)
  with pytest.raises(ValueError, match="compute_dtype"):
    model.create(config(compute_dtype="float16"), DIMS, K)
  with pytest.raises(ValueError, match="divisible"):
    model.create(config(hidden_dim=15), DIMS, K)
  with pytest.raises(ValueError, match="divisible"):
    model.create(config(context_layers=1, context_heads=3), DIMS, K)
  with pytest.raises(ValueError, match="context_kind='lstm'"):
    model.create(config(context_layers=1, context_kind="lstm"), DIMS, K)


# Context over windows.

PAD = groups.PAD
BC = 12  # Context batch: windows 3, 7 and 1 of 3, 2 and 4 utterances, and
# 3 padding positions; ranks as in their groups, speakers by first turn.
SEGMENT = np.array([3, 3, 3, 7, 7, 1, 1, 1, 1, PAD, PAD, PAD], np.int32)
RANK = np.array([4, 5, 6, 0, 1, 10, 11, 12, 13, 0, 0, 0], np.int32)
SPEAKER = np.array([0, 1, 0, 1, 1, 0, 0, 1, 1, 0, 0, 0], np.int32)
REAL = SEGMENT != PAD
CTX_MASK = np.array([[1, 1, 1], [0, 1, 1], [0, 0, 0], [1, 0, 1], [1, 1, 0],
                     [0, 0, 1], [1, 1, 1], [0, 1, 0], [1, 0, 0], [1, 1, 1],
                     [0, 0, 0], [1, 0, 1]], bool)
DIMS_NO_VIDEO = {"audio": 5, "text": 7, "video": 0}


# config.context_means of the context tests run both ways.
MEANS = ("", "audio,text")


# config.context_kind x context_means: the context tests that hold for
# every context module.
KINDS_MEANS = [(k, m) for k in context.CONTEXT_KINDS for m in MEANS]


@functools.cache
def context_model(max_distance=4, dims=tuple(DIMS.items()), means="",
                  kind="transformer"):
  """(graphdef, params, jit(apply)) of a 2-layer context model."""
  graphdef, init = model.create(
      config(context_layers=2, context_max_distance=max_distance,
             context_means=means, context_kind=kind), dict(dims), K)
  return (graphdef, init(jax.random.key(3)),
          jax.jit(functools.partial(model.apply, graphdef)))


def ctx_inputs(seed, scale=1.0, dims=None, **fields):
  """Features of the context batch with its window fields (overridable)."""
  window = dict(segment=SEGMENT, rank=RANK, speaker=SPEAKER)
  window.update(fields)
  return {**features(seed, scale, BC, dims),
          **{k: jnp.asarray(v, jnp.int32) for k, v in window.items()}}


def real_loss(graphdef, params, inputs, mask, key):
  """A scalar of every head's outputs at the real positions."""
  out = model.apply(graphdef, params, inputs, mask, key)
  real = jnp.asarray(REAL)
  return (jnp.sum(jnp.where(real[:, None], out["pred"] ** 2, 0.0)) +
          jnp.sum(jnp.where(real, out["s"] + out["z"][:, 0], 0.0)))


def max_change(a, b, where=REAL):
  """Per output, the largest absolute change at the positions `where`."""
  return {k: float(np.abs(np.asarray(a[k] - b[k]))[where].max())
          for k in ("pred", "z", "s", "h")}


def test_no_context_parameters_or_window_fields_without_context(params):
  """context_layers 0: no context parameter; the window fields are neither
  needed nor read."""
  assert not [p for p in paths(params) if p.startswith("['context']")]
  f, x, mask = forward("cls_only"), features(10), jnp.asarray(MASK)
  rng = np.random.default_rng(0)
  window = {k: jnp.asarray(rng.integers(0, 5, B), jnp.int32)
            for k in ("segment", "rank", "speaker")}
  assert_outputs_equal(f(params, x, mask, None),
                       f(params, {**x, **window}, mask, None))


def test_context_parameters():
  """With context: a speaker table [context_speakers, D], a per-head
  distance bias [H, 2 * max_distance + 1] starting at zero, blocks."""
  _, params, _ = context_model()
  assert leaf(params, "context/speaker_embedding").shape == (2, D)
  np.testing.assert_array_equal(leaf(params, "context/distance_bias"),
                                np.zeros((2, 9)))
  assert any(p.startswith("['context']['blocks'][1]") for p in paths(params))


@pytest.mark.parametrize("kind,means", KINDS_MEANS)
def test_context_sees_its_own_window_only(kind, means):
  """An utterance's outputs do not move (to 1e-6) when everything of the
  other windows (features, mask, rank, speaker) or of the padding changes;
  changing one utterance of its own window moves them. The same with
  window means, and with the GRU context."""
  _, params, f = context_model(means=means, kind=kind)
  x, mask = ctx_inputs(0), jnp.asarray(CTX_MASK)
  base = f(params, x, mask, None)
  assert all(np.isfinite(v).all() for v in base.values())
  noise = features(1, scale=10.0, b=BC)
  rng = np.random.default_rng(0)
  # Masked attention weights are exactly 0, so the kept outputs are equal
  # up to rounding at most; 1e-6 on O(1) float32 values allows for that.
  for keep in [SEGMENT == s for s in (3, 7, 1)] + [REAL]:
    other = ~keep
    changed = ctx_inputs(
        0, rank=np.where(other, rng.integers(0, 30, BC), RANK),
        speaker=np.where(other, rng.integers(0, 2, BC), SPEAKER))
    changed.update({m: jnp.where(other[:, None], noise[m], x[m])
                    for m in DIMS})
    other_mask = np.where(other[:, None], rng.random((BC, 3)) < 0.5,
                          CTX_MASK)
    out = f(params, changed, jnp.asarray(other_mask), None)
    for k, v in max_change(base, out, keep).items():
      assert v <= 1e-6, (k, v)
  # Within a window, the other utterances do matter.
  for s in (3, 7, 1):
    (first, *rest) = np.flatnonzero(SEGMENT == s)
    moved = {**x, **{m: x[m].at[first].set(noise[m][first]) for m in DIMS}}
    out = f(params, moved, mask, None)
    where = np.isin(np.arange(BC), rest)
    assert max_change(base, out, where)["h"] > 1e-3


def contiguous_windows(size, window, seed):
  """Window fields of `size` positions laid out as training and evaluation
  lay them out: contiguous windows of 1..`window` positions, a run of
  padding here and there, ranks running on from a random start."""
  rng = np.random.default_rng(seed)
  segment, rank = np.full(size, PAD, np.int32), np.zeros(size, np.int32)
  at, s = 0, 0
  while at < size:
    n = min(int(rng.integers(1, window + 1)), size - at)
    if rng.random() < 0.2:  # padding
      at += n
      continue
    segment[at:at + n] = s
    rank[at:at + n] = rng.integers(0, 20) + np.arange(n)
    at, s = at + n, s + 1
  return dict(segment=segment, rank=rank,
              speaker=rng.integers(0, 3, size).astype(np.int32))


@pytest.mark.parametrize(
    "means", ["", pytest.param("audio,text", marks=pytest.mark.extended)])
def test_block_local_attention_equals_whole_batch_attention(means):
  """On a batch longer than 3 windows the context attends block-locally
  (context.Context): outputs and parameter gradients at the real positions
  equal those of whole-batch attention (context_window 0), here with 42
  positions in windows of at most 4 (not a multiple of 4: padded inside).
  The masked keys weigh exactly 0 in both, so only the order of the
  attention sums differs: 1e-5 on O(1) values, as in the equivariance test
  below; a gradient entry sums such terms over all positions, so 1e-5 of
  its leaf's largest entry (a small entry beside large ones carries their
  rounding)."""
  size, window = 42, 4
  fields = contiguous_windows(size, window, seed=0)
  real = fields["segment"] != PAD
  x = {**features(6, 1.0, size),
       **{k: jnp.asarray(v) for k, v in fields.items()}}
  mask = jnp.asarray(np.random.default_rng(1).random((size, 3)) < 0.7)
  outs, grads, graphdefs = [], [], []
  for w in (window, 0):
    graphdef, init = model.create(config(context_layers=2, context_window=w,
                                         context_means=means), DIMS, K)
    params = init(jax.random.key(3))  # The same for both.
    graphdefs.append(graphdef)
    outs.append(jax.jit(functools.partial(model.apply, graphdef))(
        params, x, mask))

    def loss(params):
      out = model.apply(graphdef, params, x, mask)
      keep = jnp.asarray(real)[:, None]
      return (jnp.sum(jnp.where(keep, out["pred"] ** 2, 0.0))
              + jnp.sum(jnp.where(keep, out["z"], 0.0)))
    grads.append(jax.jit(jax.grad(loss))(params))
  for k in ("pred", "z", "s", "h"):
    np.testing.assert_allclose(np.asarray(outs[0][k])[real],
                               np.asarray(outs[1][k])[real], atol=1e-5,
                               err_msg=k)
  for a, b in zip(jax.tree_util.tree_leaves(grads[0]),
                  jax.tree_util.tree_leaves(grads[1])):
    np.testing.assert_allclose(a, b, atol=1e-5 * np.abs(b).max())
  # The block-local path is the one taken: a window of 16 positions breaks
  # its contract (at most `window` long) and so changes its outputs.
  long = {**x, "segment": jnp.asarray(np.where(np.arange(size) < 16, 0,
                                               fields["segment"] + 1))}
  found = [model.apply(g, params, long, mask)["h"] for g in graphdefs]
  assert np.abs(np.asarray(found[0] - found[1]))[:16].max() > 1e-3


@pytest.mark.parametrize("kind,means", KINDS_MEANS)
def test_context_is_equivariant_to_the_batch_order(kind, means):
  """Permuting the batch positions (all inputs alike) permutes the outputs:
  only segment, rank and speaker place an utterance, not its slot (nor do
  the window means, nor the GRU, which sorts by window and rank, need a
  window's positions to be adjacent). 1e-5: the attention and the means
  sum in another order (float32 rounding)."""
  _, params, f = context_model(means=means, kind=kind)
  perm = np.random.default_rng(1).permutation(BC)
  x, mask = ctx_inputs(2), CTX_MASK
  base = f(params, x, jnp.asarray(mask), None)
  out = f(params, {k: v[perm] for k, v in x.items()}, jnp.asarray(mask[perm]),
          None)
  for k in ("pred", "z", "s", "h"):
    np.testing.assert_allclose(out[k][REAL[perm]],
                               np.asarray(base[k])[perm][REAL[perm]],
                               atol=1e-5, err_msg=k)


def test_window_means():
  """model.window_means against a NumPy loop: per row, the mean over the
  kept rows with its window id (ids in any order, PAD never counted), 0
  where the window keeps none. 1e-6: float32 means of a few O(1) values."""
  rng = np.random.default_rng(0)
  segment = rng.choice([PAD, 4, 9, 17, 30], size=40).astype(np.int32)
  keep = rng.random(40) < 0.6
  keep[segment == 30] = False  # A window that keeps nothing.
  x = rng.normal(size=(40, 5)).astype(np.float32)
  mean = jax.jit(model.window_means)(x, keep, segment)
  for i, s in enumerate(segment):
    rows = (segment == s) & keep & (s != PAD)
    np.testing.assert_allclose(
        mean[i], x[rows].mean(0) if rows.any() else np.zeros(5), atol=1e-6)


def test_window_means_read_what_the_mask_lets_them_only():
  """context_means: only with context, the encoder of each listed modality
  the dataset has reads twice its features. The features of a modality
  the mask hides move no output at all (exactly), while a kept one moves
  the other utterances of its window (even with the context Transformer's
  attention switched off, which leaves the mean the only path between
  utterances) that keep the modality too, and no other window."""
  means = "audio,text"
  graphdef, params, f = context_model(means=means)
  fc1 = lambda p, m: p["encoders"][m]["fc1"]["kernel"].shape[0]
  assert [fc1(params, m) for m in DIMS] == [10, 14, 3]
  _, per_utterance = model.create(config(context_means=means), DIMS, K)
  assert fc1(per_utterance(jax.random.key(0)), "text") == 7
  _, no_video = model.create(config(context_layers=1, context_means="video"),
                             DIMS_NO_VIDEO, K)
  assert "video" not in no_video(jax.random.key(0))["encoders"]
  with pytest.raises(ValueError, match="'voice'"):
    model.create(config(context_layers=1, context_means="voice"), DIMS, K)
  x, mask = ctx_inputs(7), jnp.asarray(CTX_MASK)
  base = f(params, x, mask, None)
  hidden = {m: jnp.where(mask[:, j:j + 1], x[m], 100.0)
            for j, m in enumerate(DIMS)}
  assert_outputs_equal(base, f(params, {**x, **hidden}, mask, None))
  # No attention between utterances: zero the context blocks' attention
  # output projections; then only the window means connect a window.
  def alone(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, v: jnp.zeros_like(v)
        if "['context']" in (k := jax.tree_util.keystr(path))
        and "['attn']['out']" in k else v, params)
  before = f(alone(params), x, mask, None)
  # Window 1 (positions 5-8): 6 and 7 keep text.
  text_keeper, other = 6, 7
  moved = {**x, "text": x["text"].at[text_keeper].set(features(8, b=BC)[
      "text"][text_keeper])}
  after = f(alone(params), moved, mask, None)
  assert max_change(before, after, np.arange(BC) == other)["h"] > 1e-3
  for v in max_change(before, after, REAL & (SEGMENT != 1)).values():
    assert v <= 1e-6
  # Without the means, the same change moves nothing else.
  _, plain, g = context_model()
  plain = alone(plain)
  for v in max_change(g(plain, x, mask, None), g(plain, moved, mask, None),
                      REAL & (np.arange(BC) != text_keeper)).values():
    assert v <= 1e-6


def test_position_bias_and_speaker_embedding_gradients():
  """Both get gradients; the distance bias exactly where a pair of one
  window is that far apart (|j - i| <= 3 here), 0 at +-4: attention across
  windows or padding sends no gradient."""
  graphdef, params, _ = context_model()
  grads = jax.jit(jax.grad(functools.partial(real_loss, graphdef)))(
      params, ctx_inputs(3), jnp.asarray(CTX_MASK), None)
  bias = leaf(grads, "context/distance_bias")
  assert bias.shape == (2, 9)
  assert (np.abs(bias[:, 1:8]) > 0).all()
  np.testing.assert_array_equal(bias[:, [0, 8]], 0.0)
  speaker = leaf(grads, "context/speaker_embedding")
  assert (np.abs(speaker).max(-1) > 0).all()
  assert all(np.isfinite(g).all() for g in jax.tree_util.tree_leaves(grads))


def test_max_distance_zero_has_no_position_information():
  """context_max_distance 0: no distance_bias parameter, and the ranks do
  not matter at all (any change gives the same outputs)."""
  _, params, f = context_model(max_distance=0)
  assert not [p for p in paths(params) if "distance_bias" in p]
  mask = jnp.asarray(CTX_MASK)
  base = f(params, ctx_inputs(4), mask, None)
  rank = np.random.default_rng(0).integers(0, 50, BC)
  assert_outputs_equal(base, f(params, ctx_inputs(4, rank=rank), mask, None))


@pytest.mark.parametrize("heads", [2, 4])
def test_position_init(heads):
  """"recency" starts head h of H at ALiBi's -2^(-8(h+1)/H) per step of
  clipped distance (exact: powers of two times small integers); "zero" at
  0; anything else is refused, naming the field."""
  def bias(init):
    _, make = model.create(config(context_layers=1, context_heads=heads,
                                  context_max_distance=3,
                                  context_position_init=init), DIMS, K)
    return np.asarray(make(jax.random.key(0))["context"]["distance_bias"][...])
  slopes = 2.0 ** (-8.0 * np.arange(1, heads + 1) / heads)
  np.testing.assert_array_equal(
      bias("recency"), -slopes[:, None] * np.abs(np.arange(-3, 4))[None, :])
  np.testing.assert_array_equal(bias("zero"), np.zeros((heads, 7)))
  with pytest.raises(ValueError, match="context_position_init='alibi'"):
    bias("alibi")


def test_relative_positions():
  """With a (non-zero) distance bias, outputs depend on rank differences
  only: shifting a window's ranks by a constant changes nothing, distances
  past max_distance act as max_distance, and reversing a window's ranks
  moves that window's outputs only."""
  _, params, f = context_model()
  mask = jnp.asarray(CTX_MASK)
  noise = np.random.default_rng(0).normal(0, 1.0, (2, 9))
  params = shift(params, "context/distance_bias", noise)
  base = f(params, ctx_inputs(5), mask, None)
  shifted = RANK + np.select([SEGMENT == 3, SEGMENT == 7, SEGMENT == 1],
                             [7, 3, 100], 5)
  # The same bias entries are gathered, so equal up to rounding (1e-6).
  for v in max_change(base, f(params, ctx_inputs(5, rank=shifted), mask,
                              None)).values():
    assert v <= 1e-6
  # Window 7 = ranks (0, 1); (0, 6) and (0, 9) both clip to distance 4.
  far = []
  for r in (6, 9):
    rank = RANK.copy()
    rank[4] = r
    far.append(f(params, ctx_inputs(5, rank=rank), mask, None))
  in_7 = SEGMENT == 7
  for v in max_change(far[0], far[1], in_7).values():
    assert v <= 1e-6
  assert max_change(base, far[0], in_7)["h"] > 1e-4
  assert_reversing_a_window_moves_it_only(params, f)


def assert_reversing_a_window_moves_it_only(params, f):
  """Reversed ranks in window 1: its outputs move (by more than 1e-4), the
  other windows' do not (to 1e-6)."""
  mask = jnp.asarray(CTX_MASK)
  base = f(params, ctx_inputs(5), mask, None)
  in_1 = SEGMENT == 1
  out = f(params, ctx_inputs(5, rank=np.where(in_1, 23 - RANK, RANK)), mask,
          None)
  assert max_change(base, out, in_1)["h"] > 1e-4
  for v in max_change(base, out, REAL & ~in_1).values():
    assert v <= 1e-6


def numpy_layer_norm(x, norm):
  """flax's LayerNorm (epsilon 1e-6) in float64."""
  mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return ((x - mean) / np.sqrt(var + 1e-6) * np.asarray(norm.scale[...])
          + np.asarray(norm.bias[...]))


def numpy_gru(x, inputs, hidden):
  """One GRU direction over the rows of x [T, D] from a zero state, in
  float64 (PyTorch's cell: the reset gate scales the hidden projection
  with its bias)."""
  sigmoid = lambda v: 1 / (1 + np.exp(-v))
  w_i, b_i = np.asarray(inputs.kernel[...]), np.asarray(inputs.bias[...])
  w_h, b_h = np.asarray(hidden.kernel[...]), np.asarray(hidden.bias[...])
  h, states = np.zeros(x.shape[1]), []
  for row in x:
    xr, xz, xn = np.split(row @ w_i + b_i, 3)
    hr, hz, hn = np.split(h @ w_h + b_h, 3)
    r, z = sigmoid(xr + hr), sigmoid(xz + hz)
    h = (1 - z) * np.tanh(xn + r * hn) + z * h
    states.append(h)
  return np.array(states)


def test_gru_context_against_numpy():
  """context_kind gru: each window, in rank order (here stored shuffled),
  through 2 pre-LN residual bidirectional GRU layers and a LayerNorm, as a
  float64 NumPy loop computes it; padding rows are not compared. 1e-5:
  float32 rounding through two recurrent layers of O(1) values."""
  gru = context.Context(D, 2, 2, 2, 0.1, 4, 2, kind="gru",
                        rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  u = rng.normal(size=(BC, D)).astype(np.float32)
  perm = rng.permutation(BC)
  found = np.asarray(gru(jnp.asarray(u[perm]), jnp.asarray(SEGMENT[perm]),
                         jnp.asarray(RANK[perm]), jnp.asarray(SPEAKER[perm]),
                         None))
  found = found[np.argsort(perm)]
  table = np.asarray(gru.speaker_embedding[...])
  for s in (3, 7, 1):
    rows = np.flatnonzero(SEGMENT == s)
    rows = rows[np.argsort(RANK[rows])]
    x = u[rows].astype(np.float64) + table[SPEAKER[rows]]
    for layer in gru.grus:
      y = numpy_layer_norm(x, layer.norm)
      both = np.concatenate(
          [numpy_gru(y, layer.inputs[0], layer.hidden[0]),
           numpy_gru(y[::-1], layer.inputs[1], layer.hidden[1])[::-1]], -1)
      x = x + both @ np.asarray(layer.out.kernel[...]) + np.asarray(
          layer.out.bias[...])
    np.testing.assert_allclose(found[rows], numpy_layer_norm(x, gru.norm),
                               atol=1e-5, err_msg=f"window {s}")


def test_gru_context_reads_order():
  """The GRU's position information is the order of ranks: reversing a
  window's ranks moves its outputs (and no other window's, to 1e-6)."""
  _, params, f = context_model(kind="gru")
  assert_reversing_a_window_moves_it_only(params, f)


def test_speaker_embedding():
  """Speaker ranks change the outputs; ranks past context_speakers - 1
  share the last row (2 speakers: rank 5 acts as rank 1)."""
  _, params, f = context_model()
  mask = jnp.asarray(CTX_MASK)
  base = f(params, ctx_inputs(6), mask, None)
  five = f(params, ctx_inputs(6, speaker=np.where(SPEAKER == 1, 5, SPEAKER)),
           mask, None)
  for v in max_change(base, five).values():
    assert v <= 1e-6
  swapped = f(params, ctx_inputs(6, speaker=1 - SPEAKER), mask, None)
  assert max_change(base, swapped)["h"] > 1e-4


def test_inputs_of_the_wrong_shape_are_named():
  """A mask, features or window fields the model cannot take are a
  ValueError naming the input, not an XLA broadcasting error."""
  graphdef, params, _ = context_model(dims=tuple(DIMS_NO_VIDEO.items()))
  x, mask = ctx_inputs(7, dims=DIMS_NO_VIDEO), jnp.asarray(CTX_MASK)
  apply = lambda x, mask: model.apply(graphdef, params, x, mask)
  wide = {**x, "audio": jnp.ones((BC, 6))}
  no_rank = {k: v for k, v in x.items() if k != "rank"}
  no_text = {k: v for k, v in x.items() if k != "text"}
  stacked = jax.tree_util.tree_map(lambda v: jnp.stack([v, v]), params)
  with pytest.raises(ValueError, match=r"params: missing_embedding of shape "
                     r"\(2, 3, 16\), expected \[3, hidden\]: parameters with "
                     "a leading member axis"):
    model.apply(graphdef, stacked, x, mask)
  for inputs, m, message in [
      (x, mask[:, :2], r"mask: shape \(12, 2\), expected \[B, 3\]"),
      (wide, mask, r"inputs\['audio'\]: shape \(12, 6\), expected \[12, "
       r"5\]"),
      (no_text, mask, r"inputs\['text'\]: missing; the model reads \[B, 7\]"),
      (no_rank, mask, "inputs: no rank; a model with context needs"),
      (x, mask.astype(jnp.float32), "mask: dtype float32, expected bool"),
      ({**x, "segment": x["segment"][:3]}, mask,
       r"inputs\['segment'\]: shape \(3,\), dtype int32; expected \[12\] "
       r"int \(B from the mask\)"),
      ({**x, "rank": x["rank"][:, None]}, mask,
       r"inputs\['rank'\]: shape \(12, 1\)"),
      ({**x, "speaker": x["speaker"].astype(jnp.float32)}, mask,
       r"inputs\['speaker'\]: shape \(12,\), dtype float32; expected")]:
    with pytest.raises(ValueError, match=message):
      apply(inputs, m)
  apply(x, mask)


@pytest.mark.parametrize("kind", context.CONTEXT_KINDS)
def test_numpy_inputs_under_jit(kind):
  """Inputs given as NumPy arrays closed over by a jitted function (as
  `normalization.standardize` gives them) predict what jax arrays do: the
  GRU sorts the batch with a traced order, which cannot index a NumPy
  array."""
  graphdef, params, _ = context_model(kind=kind)
  x = {k: np.asarray(v) for k, v in ctx_inputs(4).items()}
  out = jax.jit(lambda p: model.apply(graphdef, p, x, CTX_MASK))(params)
  want = model.apply(graphdef, params, ctx_inputs(4), jnp.asarray(CTX_MASK))
  for k in ("pred", "s"):
    np.testing.assert_allclose(out[k], want[k], rtol=1e-5, atol=1e-6)


def test_nan_in_masked_features_reaches_no_gradient(params):
  """Features of a masked modality are not read: NaN there leaves the
  outputs and the gradient finite, and equal to those with zeros (exactly:
  the encoder reads zeros either way)."""
  grad = train_grad("cls_only")
  x, mask = features(9), jnp.asarray(MASK)
  nan = {m: jnp.where(mask[:, j:j + 1], x[m], jnp.nan)
         for j, m in enumerate(DIMS)}
  zero = {m: jnp.where(mask[:, j:j + 1], x[m], 0.0)
          for j, m in enumerate(DIMS)}
  g_nan, _ = grad(params, nan, mask, jax.random.key(1))
  g_zero, _ = grad(params, zero, mask, jax.random.key(1))
  assert all(np.isfinite(v).all() for v in jax.tree_util.tree_leaves(g_nan))
  jax.tree_util.tree_map(np.testing.assert_array_equal, g_nan, g_zero)


def test_modality_the_dataset_lacks():
  """dims[video] 0: no video encoder; the outputs do not read inputs
  ["video"] (a [B, 0] array, another array, or none at all) nor the mask's
  video bit (a caller's mask that sets it once moved predictions by 0.36);
  the model trains: finite gradients, the video missing embedding learns,
  and 40 Adam steps on random targets with dropout cut the loss by half."""
  graphdef, params, f = context_model(dims=tuple(DIMS_NO_VIDEO.items()))
  names = paths(params)
  for m in ("audio", "text"):
    assert any(p.startswith(f"['encoders']['{m}']") for p in names)
  assert not any(p.startswith("['encoders']['video']") for p in names)
  x = ctx_inputs(7, dims=DIMS_NO_VIDEO)
  assert x["video"].shape == (BC, 0)
  unset = f(params, x, jnp.asarray(CTX_MASK).at[:, 2].set(False), None)
  for column in (False, True):
    mask = jnp.asarray(CTX_MASK).at[:, 2].set(column)
    base = f(params, x, mask, None)
    assert_outputs_equal(unset, base)
    assert all(np.isfinite(v).all() for v in base.values())
    without = {k: v for k, v in x.items() if k != "video"}
    assert_outputs_equal(base, f(params, without, mask, None))
    other = {**x, "video": jnp.ones((BC, 3))}
    assert_outputs_equal(base, f(params, other, mask, None))
  mask = jnp.asarray(CTX_MASK).at[:, 2].set(False)
  target = jnp.asarray(np.random.default_rng(0).normal(size=(BC, K)),
                       jnp.float32)

  def mse(params, key):
    out = model.apply(graphdef, params, x, mask, key)
    return jnp.sum(jnp.where(jnp.asarray(REAL)[:, None],
                             (out["pred"] - target) ** 2, 0.0)) / REAL.sum()

  tx = optax.adam(1e-2)

  @jax.jit
  def step(params, opt_state, key):
    loss, grads = jax.value_and_grad(mse)(params, key)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, grads

  evaluate = jax.jit(lambda params: mse(params, None))
  start = float(evaluate(params))
  opt_state = tx.init(params)
  for i in range(40):
    params, opt_state, loss, grads = step(params, opt_state,
                                          jax.random.key(i))
    assert np.isfinite(loss)
    assert all(np.isfinite(g).all() for g in jax.tree_util.tree_leaves(grads))
    if not i:
      assert np.abs(leaf(grads, "missing_embedding")[2]).max() > 0
      assert np.abs(leaf(grads, "encoders/audio/fc1/kernel")).max() > 0
  assert float(evaluate(params)) < 0.5 * start


# Mixed precision.


def test_attention_logits_of_bfloat16_inputs_are_float32():
  """attention.attention_logits of bfloat16 queries and keys equals the float32
  dot products of the same values: a product of two bfloat16 numbers is
  exact in float32 and 16 of them sum with float32 rounding (1e-6 of the
  logits' scale), whereas logits rounded to bfloat16 (a step of 0.25 at
  40) would be off by up to 2^-9 of it."""
  rng = np.random.default_rng(0)
  q, k = (jnp.asarray(rng.normal(0, 3, (2, 5, 2, 16)), jnp.bfloat16)
          for _ in range(2))
  found = attention.attention_logits(q, k)
  assert found.dtype == jnp.float32
  want = np.einsum("bqhd,bkhd->bhqk", np.asarray(q, np.float64),
                   np.asarray(k, np.float64)) / 4.0
  np.testing.assert_allclose(found, want, rtol=0,
                             atol=1e-6 * np.abs(want).max())


def test_bfloat16_compute_keeps_float32_parameters_outputs_and_gradients():
  """compute_dtype bfloat16: the same float32 parameters (one init for
  both), the matmuls in bfloat16, every output and gradient float32 and
  close to float32's. Tolerance: bfloat16 keeps 8 mantissa bits (relative
  rounding 2^-9 per product), and about 10 matmul layers compound it, so a
  few percent of an output's scale, while a wrong path (a dropped layer, a
  float16 overflow) would differ by its whole scale."""
  inputs, mask = ctx_inputs(4), jnp.asarray(CTX_MASK)
  found = {}
  for dtype in ("float32", "bfloat16"):
    graphdef, init = model.create(config(context_layers=1,
                                         compute_dtype=dtype), DIMS, K)
    params = init(jax.random.key(3))
    float32 = {jnp.dtype("float32")}
    assert {x.dtype for x in jax.tree.leaves(params)} == float32
    apply = functools.partial(model.apply, graphdef)
    jaxpr = str(jax.make_jaxpr(apply)(params, inputs, mask))
    assert ("bf16[" in jaxpr) == (dtype == "bfloat16")
    def loss_and_outputs(params):
      return real_loss(graphdef, params, inputs, mask, None), apply(
          params, inputs, mask)
    grads, out = jax.jit(jax.grad(loss_and_outputs, has_aux=True))(params)
    assert {v.dtype for v in out.values()} == float32
    assert {x.dtype for x in jax.tree.leaves(grads)} == float32
    found[dtype] = out, jnp.concatenate(
        [x.ravel() for x in jax.tree.leaves(grads)])
  (out32, g32), (out16, g16) = found["float32"], found["bfloat16"]
  for k in ("pred", "z", "s", "h"):
    scale = float(jnp.abs(out32[k][REAL]).max())
    assert 0 < max_change(out32, out16)[k] < 0.05 * scale, k
  cosine = jnp.dot(g32, g16) / (jnp.linalg.norm(g32) * jnp.linalg.norm(g16))
  assert cosine > 0.99
