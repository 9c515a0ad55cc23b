"""The MCUR network used functionally: `create` -> (graphdef, init), `apply`."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mcur_jax import model

DIMS = {"audio": 5, "text": 7, "video": 3}
B, K, D, P = 6, 3, 16, 8
MODES = ("cls_only", "masked", "visible")
# Rows: all, no audio, no text, no video, video only, none.
MASK = np.array([[1, 1, 1], [0, 1, 1], [1, 0, 1], [1, 1, 0], [0, 0, 1],
                 [0, 0, 0]], bool)


def config(**overrides):
  fields = dict(hidden_dim=D, num_layers=2, num_heads=2, mlp_ratio=2,
                dropout=0.1, proj_dim=P, missing_tokens="cls_only")
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


def features(seed, scale=1.0):
  rng = np.random.default_rng(seed)
  return {m: jnp.asarray(scale * rng.normal(size=(B, d)), jnp.float32)
          for m, d in DIMS.items()}


def leaf(state, name):
  """The array of a top-level parameter of a params/grads state."""
  (value,) = [x for path, x in jax.tree_util.tree_leaves_with_path(state)
              if jax.tree_util.keystr(path).startswith(f"['{name}']")]
  return np.asarray(value)


def shift(state, name, delta):
  """`state` with `delta` added to the top-level parameter `name`."""
  return jax.tree_util.tree_map_with_path(
      lambda path, x: x + delta
      if jax.tree_util.keystr(path).startswith(f"['{name}']") else x, state)


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
  with pytest.raises(ValueError, match="missing_tokens"):
    model.create(config(missing_tokens="zeros"), DIMS, K)
  with pytest.raises(ValueError, match="divisible"):
    model.create(config(hidden_dim=15), DIMS, K)
