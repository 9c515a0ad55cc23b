"""The losses against plain NumPy references written from DESIGN section 4."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import test_util as jtu

from mcur_jax import losses

SEEDS = (0, 1, 2)
RULES = ("class_and_combo", "class", "combo")


def ref_task_loss(pred, label, kind):
  """l_i: -log softmax(pred_i)[y_i], |pred_i - y_i| or (pred_i - y_i)^2."""
  pred = np.asarray(pred, np.float64)
  out = []
  for i, y in enumerate(label):
    if kind == "ce":
      row = pred[i]
      out.append(np.log(np.sum(np.exp(row))) - row[int(y)])
    elif kind == "l1":
      out.append(abs(pred[i, 0] - y))
    else:
      out.append((pred[i, 0] - y) ** 2)
  return np.array(out)


def ref_sugr(l, s, s_max, active, beta=0.0):
  """mean_i(exp(beta s_i) (exp(-s_i) l_i + s_i)) with s clipped, and the
  weights exp(-(1 - beta) s_i); during warm-up the plain mean, weights 1."""
  s = np.clip(np.asarray(s, np.float64), -s_max, s_max)
  if not active:
    return np.mean(l), np.ones_like(s)
  return (np.mean(np.exp(beta * s) * (np.exp(-s) * l + s)),
          np.exp(-(1 - beta) * s))


def ref_supcon(z, positive, tau, anchor_weight=None):
  """SupCon with positive(i, p) for p != i, over anchors with positives."""
  z = np.asarray(z, np.float64)
  b = len(z)
  total, anchors = 0.0, 0
  for i in range(b):
    others = [k for k in range(b) if k != i]
    pos = [p for p in others if positive(i, p)]
    if not pos:
      continue
    log_denom = np.log(sum(np.exp(z[i] @ z[k] / tau) for k in others))
    term = -np.mean([z[i] @ z[p] / tau - log_denom for p in pos])
    total += term * (1.0 if anchor_weight is None else anchor_weight[i])
    anchors += 1
  return total / anchors if anchors else 0.0


def ref_mcb(z, cat, combo, tau, rule, anchor_weight=None):
  """MCB-CL with P(i) given by the `positives` rule."""
  if rule == "class_plus_combo":
    return (ref_mcb(z, cat, combo, tau, "class", anchor_weight) +
            ref_mcb(z, cat, combo, tau, "combo", anchor_weight))
  same = {
      "class_and_combo": lambda i, p: cat[i] == cat[p] and combo[i] == combo[p],
      "class": lambda i, p: cat[i] == cat[p],
      "combo": lambda i, p: combo[i] == combo[p],
  }[rule]
  return ref_supcon(z, same, tau, anchor_weight)


def unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def random_batch(seed, b=12, p=5, classes=3):
  """Unit z, categories and combination bits with few repeats."""
  rng = np.random.default_rng(seed)
  z = unit(rng.normal(size=(b, p))).astype(np.float32)
  cat = rng.integers(0, classes, b).astype(np.int32)
  combo = rng.integers(1, 8, b).astype(np.int32)
  return z, cat, combo


@pytest.mark.parametrize("kind", ["ce", "l1", "mse"])
@pytest.mark.parametrize("seed", SEEDS)
def test_task_loss_matches_reference(kind, seed):
  """Cross-entropy, L1 and MSE per sample equal their formulas."""
  rng = np.random.default_rng(seed)
  if kind == "ce":
    pred = rng.normal(size=(9, 4)).astype(np.float32) * 3
    label = rng.integers(0, 4, 9).astype(np.int32)
  else:
    pred = rng.uniform(-3, 3, (9, 1)).astype(np.float32)
    label = rng.uniform(-3, 3, 9).astype(np.float32)
  got = losses.task_loss(jnp.asarray(pred), jnp.asarray(label), kind)
  assert got.shape == (9,)
  np.testing.assert_allclose(got, ref_task_loss(pred, label, kind),
                             rtol=1e-5, atol=1e-6)


def test_task_loss_rejects_unknown_kind():
  """An unknown task loss raises, naming it."""
  with pytest.raises(ValueError, match="huber"):
    losses.task_loss(jnp.zeros((2, 1)), jnp.zeros(2), "huber")


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("active", [True, False])
@pytest.mark.parametrize("seed", SEEDS)
def test_sugr_matches_reference(active, seed, beta):
  """Active: mean(exp(beta s) (exp(-s) l + s)) with s clipped, weights
  exp(-(1 - beta) s); warm-up: plain mean, w = 1."""
  rng = np.random.default_rng(seed)
  l = rng.uniform(0, 4, 10).astype(np.float32)
  s = rng.uniform(-6, 6, 10).astype(np.float32)  # Some beyond s_max = 3.
  assert (np.abs(s) > 3).any() and (np.abs(s) < 3).any()
  loss, w = losses.sugr(jnp.asarray(l), jnp.asarray(s), s_max=3.0,
                        active=active, beta=beta)
  ref_loss, ref_w = ref_sugr(l, s, 3.0, active, beta)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  np.testing.assert_allclose(w, ref_w, rtol=1e-5)


def test_sugr_clips_log_variance():
  """s beyond +-s_max acts as s = +-s_max, in the loss and in w."""
  l = jnp.array([1.0, 2.0])
  far, edge = jnp.array([-50.0, 50.0]), jnp.array([-2.0, 2.0])
  for active in (True, False):
    loss_far, w_far = losses.sugr(l, far, s_max=2.0, active=active)
    loss_edge, w_edge = losses.sugr(l, edge, s_max=2.0, active=active)
    np.testing.assert_allclose(loss_far, loss_edge, rtol=1e-6)
    np.testing.assert_allclose(w_far, w_edge, rtol=1e-6)
  _, w = losses.sugr(l, far, s_max=2.0, active=True)
  np.testing.assert_allclose(w, np.exp([2.0, -2.0]), rtol=1e-6)


def test_sugr_weights_high_variance_samples_down():
  """A larger s gives a smaller weight w = exp(-s)."""
  _, w = losses.sugr(jnp.ones(3), jnp.array([-1.0, 0.0, 1.0]), s_max=5.0,
                     active=True)
  assert w[0] > w[1] > w[2]
  np.testing.assert_allclose(w[1], 1.0)


def test_category():
  """Classes pass through; regression: sign (0 counts as >= 0) or round(clip)."""
  cls = losses.category(jnp.array([0, 3, 1, 3]), "classification")
  np.testing.assert_array_equal(cls, [0, 3, 1, 3])
  assert cls.dtype == jnp.int32
  y = jnp.array([-2.4, -0.1, 0.0, 0.2, 1.6, 3.7, -5.0])
  np.testing.assert_array_equal(losses.category(y, "regression"),
                                [0, 0, 1, 1, 1, 1, 0])
  np.testing.assert_array_equal(losses.category(y, "regression", "sign"),
                                [0, 0, 1, 1, 1, 1, 0])
  np.testing.assert_array_equal(losses.category(y, "regression", "seven"),
                                [-2, 0, 0, 0, 2, 3, -3])
  with pytest.raises(ValueError, match="five"):
    losses.category(y, "regression", "five")


@pytest.mark.parametrize("tau", [0.1, 0.5])
@pytest.mark.parametrize("seed", SEEDS)
def test_supcon_matches_reference(seed, tau):
  """SupCon of a random positive mask, diagonal ignored."""
  z, _, _ = random_batch(seed)
  rng = np.random.default_rng(seed + 100)
  positive = rng.random((12, 12)) < 0.15
  np.fill_diagonal(positive, True)  # Must be ignored.
  has = [positive[i, np.arange(12) != i].any() for i in range(12)]
  assert any(has) and not all(has)
  got = losses.supcon(jnp.asarray(z), jnp.asarray(positive), tau)
  want = ref_supcon(z, lambda i, p: positive[i, p], tau)
  np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("rule", RULES + ("class_plus_combo",))
@pytest.mark.parametrize("seed", SEEDS)
def test_mcb_cl_matches_reference(rule, seed):
  """Each `positives` rule; under the default one some anchors lack positives
  (excluded from the average) and some have them."""
  z, cat, combo = random_batch(seed)
  has = [any(cat[i] == cat[p] and combo[i] == combo[p]
             for p in range(12) if p != i) for i in range(12)]
  assert 0 < sum(has) < 12
  got = losses.mcb_cl(jnp.asarray(z), jnp.asarray(cat), jnp.asarray(combo),
                      tau=0.2, positives=rule)
  np.testing.assert_allclose(got, ref_mcb(z, cat, combo, 0.2, rule),
                             rtol=1e-5)


def test_class_plus_combo_is_the_sum_of_two_terms():
  """class_plus_combo = the class term + the combination term."""
  z, cat, combo = (jnp.asarray(x) for x in random_batch(7))
  terms = [losses.mcb_cl(z, cat, combo, tau=0.3, positives=r)
           for r in ("class", "combo", "class_plus_combo")]
  np.testing.assert_allclose(terms[0] + terms[1], terms[2], rtol=1e-6)


@pytest.mark.parametrize("rule", RULES + ("class_plus_combo",))
def test_anchor_weight(rule):
  """Each anchor's term is scaled by its weight (count of anchors unchanged)."""
  z, cat, combo = random_batch(3)
  w = np.random.default_rng(3).uniform(0.1, 2.0, 12).astype(np.float32)
  got = losses.mcb_cl(jnp.asarray(z), jnp.asarray(cat), jnp.asarray(combo),
                      tau=0.2, positives=rule, anchor_weight=jnp.asarray(w))
  np.testing.assert_allclose(got, ref_mcb(z, cat, combo, 0.2, rule, w),
                             rtol=1e-5)
  ones = losses.mcb_cl(jnp.asarray(z), jnp.asarray(cat), jnp.asarray(combo),
                       tau=0.2, positives=rule, anchor_weight=jnp.ones(12))
  plain = losses.mcb_cl(jnp.asarray(z), jnp.asarray(cat), jnp.asarray(combo),
                        tau=0.2, positives=rule)
  np.testing.assert_allclose(ones, plain, rtol=1e-6)


@pytest.mark.parametrize("rule", RULES + ("class_plus_combo",))
def test_no_positive_anywhere_gives_zero(rule):
  """All categories and all combinations distinct: no anchor, loss 0."""
  z, _, _ = random_batch(0, b=8)
  cat, combo = jnp.arange(8), jnp.arange(8)
  got = losses.mcb_cl(jnp.asarray(z), cat, combo, tau=0.2, positives=rule)
  assert float(got) == 0.0
  grad = jax.jit(jax.grad(lambda z: losses.mcb_cl(
      z, cat, combo, tau=0.2, positives=rule)))(jnp.asarray(z))
  np.testing.assert_array_equal(grad, 0.0)


def test_mcb_cl_rejects_unknown_rule():
  """An unknown `positives` rule raises, naming it."""
  with pytest.raises(ValueError, match="speaker"):
    losses.mcb_cl(jnp.eye(3), jnp.zeros(3, int), jnp.zeros(3, int), tau=0.1,
                  positives="speaker")


@pytest.mark.parametrize("active", [True, False])
def test_sugr_gradients(active):
  """Reverse-mode gradients of SUGR w.r.t. l and s match finite differences."""
  rng = np.random.default_rng(0)
  with jax.enable_x64(True):
    l = jnp.asarray(rng.uniform(0.1, 3, 6))
    s = jnp.asarray(rng.uniform(-1.5, 1.5, 6))  # Inside the clip bounds.
    f = lambda l, s: losses.sugr(l, s, s_max=2.0, active=active)[0]
    jtu.check_grads(jax.jit(f), (l, s), order=1, modes=("rev",))


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_sugr_beta_gradients(beta):
  """The beta form's gradients (its stop_gradient is no finite difference):
  d/dl_i = exp(-(1 - beta) s_i) / n, d/ds_i = exp(beta s_i)(1 - exp(-s_i)
  l_i) / n inside the clip and 0 beyond it. So beta 1 gives every sample
  the plain mean's task gradient, and every beta keeps s_i = log l_i as the
  uncertainty head's optimum (its gradient 0 there)."""
  l = np.array([0.5, 2.0, 0.1, 1.0, 3.0])
  s = np.array([0.3, -1.0, 2.0, 0.0, 5.0])  # The last beyond s_max = 3.
  inside = np.abs(s) < 3
  with jax.enable_x64(True):
    grad_l, grad_s = jax.grad(
        lambda l, s: losses.sugr(l, s, s_max=3.0, active=True, beta=beta)[0],
        argnums=(0, 1))(jnp.asarray(l), jnp.asarray(s))
    clipped = np.clip(s, -3, 3)
    np.testing.assert_allclose(grad_l, np.exp(-(1 - beta) * clipped) / 5,
                               rtol=1e-12)
    np.testing.assert_allclose(
        grad_s, inside * np.exp(beta * s) * (1 - np.exp(-s) * l) / 5,
        rtol=1e-12, atol=1e-15)
    at_optimum = jax.grad(
        lambda s: losses.sugr(jnp.asarray(l), s, s_max=3.0, active=True,
                              beta=beta)[0])(jnp.log(jnp.asarray(l)))
    np.testing.assert_allclose(at_optimum, 0.0, atol=1e-15)


def test_sugr_warm_up_gives_the_uncertainty_head_no_gradient():
  """During warm-up s gets an exactly zero gradient and l the plain mean's,
  even for a non-finite s or s_max (no 0 * NaN from an unused branch)."""
  l = jnp.array([1.0, 2.0, 4.0])
  for s, s_max in ((jnp.array([0.3, -0.2, 9.0]), float("nan")),
                   (jnp.array([jnp.nan, 0.0, jnp.inf]), 3.0)):
    grad_l, grad_s = jax.grad(
        lambda l, s: losses.sugr(l, s, s_max=s_max, active=False)[0],
        argnums=(0, 1))(l, s)
    np.testing.assert_array_equal(grad_s, 0.0)
    np.testing.assert_allclose(grad_l, 1 / 3)


@pytest.mark.parametrize("rule", RULES + ("class_plus_combo",))
def test_mcb_cl_gradients(rule):
  """Gradients through a normalisation of unconstrained vectors (z unit-norm),
  with and without anchor weights."""
  _, cat, combo = random_batch(1)
  rng = np.random.default_rng(1)
  with jax.enable_x64(True):
    x = jnp.asarray(rng.normal(size=(12, 5)))
    w = jnp.asarray(rng.uniform(0.5, 1.5, 12))
    def f(x, w):
      z = x / jnp.linalg.norm(x, axis=-1, keepdims=True)
      return losses.mcb_cl(z, jnp.asarray(cat), jnp.asarray(combo), tau=0.3,
                           positives=rule, anchor_weight=w)
    jtu.check_grads(jax.jit(f), (x, w), order=1, modes=("rev",))


def test_supcon_gradients():
  """SupCon gradients through a normalisation match finite differences."""
  rng = np.random.default_rng(2)
  positive = jnp.asarray(rng.random((8, 8)) < 0.3)
  with jax.enable_x64(True):
    x = jnp.asarray(rng.normal(size=(8, 5)))
    f = lambda x: losses.supcon(
        x / jnp.linalg.norm(x, axis=-1, keepdims=True), positive, 0.2)
    jtu.check_grads(jax.jit(f), (x,), order=1, modes=("rev",))


def test_gradients_finite_for_ties_and_identical_vectors():
  """Identical z, tied labels and s exactly at the clip bound stay finite."""
  x = jnp.tile(jnp.array([[0.3, -1.2, 0.5, 0.0, 2.0]]), (8, 1))
  cat = jnp.array([0, 0, 1, 1, 0, 1, 2, 2])
  combo = jnp.array([7, 7, 7, 3, 3, 3, 7, 1])
  for rule in RULES + ("class_plus_combo",):
    def f(x, rule=rule):
      z = x / jnp.linalg.norm(x, axis=-1, keepdims=True)
      return losses.mcb_cl(z, cat, combo, tau=0.05, positives=rule)
    value, grad = jax.jit(jax.value_and_grad(f))(x)
    assert np.isfinite(value) and np.isfinite(grad).all()
    # All similarities equal: every log-probability is -log(B - 1).
    np.testing.assert_allclose(value, (2 if rule == "class_plus_combo" else 1)
                               * np.log(7), rtol=1e-5)
  s = jnp.array([2.0, -2.0, 2.0, 0.0])
  grads = jax.grad(lambda l, s: losses.sugr(l, s, s_max=2.0, active=True)[0],
                   argnums=(0, 1))(jnp.ones(4), s)
  assert all(np.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("rule", RULES + ("class_plus_combo",))
def test_jit_gives_the_same_values(rule):
  """Under jax.jit (with `active` traced) the losses equal the eager ones."""
  z, cat, combo = (jnp.asarray(x) for x in random_batch(5))
  w = jnp.linspace(0.5, 1.5, 12)
  f = functools.partial(losses.mcb_cl, tau=0.2, positives=rule)
  np.testing.assert_allclose(jax.jit(f)(z, cat, combo, anchor_weight=w),
                             f(z, cat, combo, anchor_weight=w), rtol=1e-6)
  l, s = jnp.linspace(0.1, 2.0, 12), jnp.linspace(-4.0, 4.0, 12)
  sugr = jax.jit(lambda l, s, a: losses.sugr(l, s, s_max=3.0, active=a))
  for active in (True, False):
    for got, want in zip(sugr(l, s, jnp.asarray(active)),
                         losses.sugr(l, s, s_max=3.0, active=active)):
      np.testing.assert_allclose(got, want, rtol=1e-6)
  pred = jnp.stack([l, s], 1)
  for kind in ("ce", "l1", "mse"):
    label = (combo % 2) if kind == "ce" else s
    np.testing.assert_allclose(
        jax.jit(losses.task_loss, static_argnums=2)(pred, label, kind),
        losses.task_loss(pred, label, kind), rtol=1e-6)
  np.testing.assert_allclose(
      jax.jit(losses.category, static_argnums=(1, 2))(s, "regression",
                                                      "seven"),
      losses.category(s, "regression", "seven"))


# Padding (`valid`) and excluded pairs (`exclude`).
#
# The references run on the valid rows alone; float32 against float64 over
# batches of ~12: rtol 1e-5 holds the few ulps of a logsumexp and a mean.


def batch_with_padding(seed, b=14):
  """random_batch plus a `valid` mask with 3 to 5 padding rows scattered,
  and a group id per row (for `exclude`)."""
  z, cat, combo = random_batch(seed, b=b, classes=2)
  rng = np.random.default_rng(seed + 50)
  valid = np.ones(b, bool)
  valid[rng.choice(b, rng.integers(3, 6), replace=False)] = False
  group = rng.integers(0, 4, b)
  return z, cat, combo, valid, group


def ref_mcb_excluding(z, cat, combo, tau, rule, exclude, anchor_weight=None):
  """MCB-CL whose positives lose the pairs of `exclude` [B, B]; the
  denominators keep every other row."""
  if rule == "class_plus_combo":
    return sum(ref_mcb_excluding(z, cat, combo, tau, r, exclude,
                                 anchor_weight) for r in ("class", "combo"))
  same = {
      "class_and_combo": lambda i, p: cat[i] == cat[p] and combo[i] == combo[p],
      "class": lambda i, p: cat[i] == cat[p],
      "combo": lambda i, p: combo[i] == combo[p],
  }[rule]
  return ref_supcon(z, lambda i, p: same(i, p) and not exclude[i, p], tau,
                    anchor_weight)


def test_masked_mean():
  """The mean over the valid entries; all with None; 0 when none is valid;
  invalid values (even NaN) change nothing and get a zero gradient."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=10).astype(np.float32)
  valid = rng.random(10) < 0.6
  assert 0 < valid.sum() < 10
  got = losses.masked_mean(jnp.asarray(x), jnp.asarray(valid))
  np.testing.assert_allclose(got, x[valid].astype(np.float64).mean(),
                             rtol=1e-6)
  np.testing.assert_allclose(losses.masked_mean(jnp.asarray(x), None),
                             x.astype(np.float64).mean(), rtol=1e-6)
  assert float(losses.masked_mean(jnp.asarray(x), jnp.zeros(10, bool))) == 0
  junk = np.where(valid, x, np.nan).astype(np.float32)
  assert float(losses.masked_mean(jnp.asarray(junk), jnp.asarray(valid))) == (
      float(got))
  grad = jax.grad(losses.masked_mean)(jnp.asarray(x), jnp.asarray(valid))
  np.testing.assert_allclose(grad, valid / valid.sum(), rtol=1e-6)


@pytest.mark.parametrize("active", [True, False])
@pytest.mark.parametrize("seed", SEEDS)
def test_sugr_with_valid(active, seed):
  """The loss is the reference over the valid entries only; w is still
  given for every entry; padding values change nothing and get zero
  gradients."""
  rng = np.random.default_rng(seed)
  l = rng.uniform(0, 4, 12).astype(np.float32)
  s = rng.uniform(-6, 6, 12).astype(np.float32)
  valid = rng.random(12) < 0.6
  loss, w = losses.sugr(jnp.asarray(l), jnp.asarray(s), s_max=3.0,
                        active=active, valid=jnp.asarray(valid))
  ref_loss, _ = ref_sugr(l[valid], s[valid], 3.0, active)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  np.testing.assert_allclose(w, ref_sugr(l, s, 3.0, active)[1], rtol=1e-5)
  other_l = np.where(valid, l, 1e6).astype(np.float32)
  other_s = np.where(valid, s, -2.0).astype(np.float32)
  loss2, _ = losses.sugr(jnp.asarray(other_l), jnp.asarray(other_s),
                         s_max=3.0, active=active, valid=jnp.asarray(valid))
  assert float(loss2) == float(loss)
  grads = jax.grad(lambda l, s: losses.sugr(
      l, s, s_max=3.0, active=active, valid=jnp.asarray(valid))[0],
                   argnums=(0, 1))(jnp.asarray(l), jnp.asarray(s))
  for g in grads:
    np.testing.assert_array_equal(np.asarray(g)[~valid], 0.0)
  np.testing.assert_allclose(np.asarray(grads[0])[valid],
                             ref_sugr(l[valid], s[valid], 3.0,
                                      active)[1] / valid.sum(), rtol=1e-5)


@pytest.mark.parametrize("seed", SEEDS)
def test_supcon_with_valid_is_supcon_of_the_valid_rows(seed):
  """supcon with `valid` equals the reference on the valid rows alone (with
  and without anchor weights), whatever the padding rows hold."""
  z, _, _, valid, _ = batch_with_padding(seed)
  rng = np.random.default_rng(seed + 7)
  positive = rng.random((14, 14)) < 0.25
  weight = rng.uniform(0.2, 2.0, 14).astype(np.float32)
  keep = np.ix_(valid, valid)
  for w in (None, weight):
    got = losses.supcon(jnp.asarray(z), jnp.asarray(positive), 0.2,
                        None if w is None else jnp.asarray(w),
                        jnp.asarray(valid))
    want = ref_supcon(z[valid], lambda i, p: positive[keep][i, p], 0.2,
                      None if w is None else w[valid])
    assert want != 0.0
    np.testing.assert_allclose(got, want, rtol=1e-5)
  moved = np.where(valid[:, None], z, unit(rng.normal(size=z.shape)))
  np.testing.assert_allclose(
      losses.supcon(jnp.asarray(moved.astype(np.float32)),
                    jnp.asarray(positive), 0.2, valid=jnp.asarray(valid)),
      losses.supcon(jnp.asarray(z), jnp.asarray(positive), 0.2,
                    valid=jnp.asarray(valid)), rtol=1e-6)


@pytest.mark.parametrize("rule", RULES + ("class_plus_combo",))
@pytest.mark.parametrize("seed", SEEDS)
def test_mcb_cl_with_valid(rule, seed):
  """mcb_cl with `valid` equals the reference MCB-CL of the valid rows."""
  z, cat, combo, valid, _ = batch_with_padding(seed)
  got = losses.mcb_cl(jnp.asarray(z), jnp.asarray(cat), jnp.asarray(combo),
                      tau=0.2, positives=rule, valid=jnp.asarray(valid))
  want = ref_mcb(z[valid], cat[valid], combo[valid], 0.2, rule)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  full = ref_mcb(z, cat, combo, 0.2, rule)
  assert abs(full - want) > 1e-4  # The padding would have counted.


@pytest.mark.parametrize("rule", RULES + ("class_plus_combo",))
@pytest.mark.parametrize("seed", SEEDS)
def test_mcb_cl_exclude(rule, seed):
  """`exclude` (here: same group) removes pairs from the positives but
  keeps them in the denominators, alone and with `valid` and weights."""
  z, cat, combo, valid, group = batch_with_padding(seed)
  exclude = group[:, None] == group[None, :]
  w = np.random.default_rng(seed).uniform(0.5, 1.5, 14).astype(np.float32)
  args = (jnp.asarray(z), jnp.asarray(cat), jnp.asarray(combo))
  got = losses.mcb_cl(*args, tau=0.2, positives=rule,
                      exclude=jnp.asarray(exclude))
  want = ref_mcb_excluding(z, cat, combo, 0.2, rule, exclude)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert abs(want - ref_mcb(z, cat, combo, 0.2, rule)) > 1e-4
  got = losses.mcb_cl(*args, tau=0.2, positives=rule,
                      exclude=jnp.asarray(exclude), valid=jnp.asarray(valid),
                      anchor_weight=jnp.asarray(w))
  want = ref_mcb_excluding(z[valid], cat[valid], combo[valid], 0.2, rule,
                           exclude[np.ix_(valid, valid)], w[valid])
  np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("rule", RULES + ("class_plus_combo",))
def test_mcb_cl_gradients_with_valid(rule):
  """Invalid rows get exactly zero gradient; the valid rows get the
  gradient of the loss of the valid rows alone."""
  x, cat, combo, valid, group = batch_with_padding(4)
  exclude = group[:, None] == group[None, :]

  def f(x, cat, combo, valid, exclude):
    z = x / jnp.linalg.norm(x, axis=-1, keepdims=True)
    return losses.mcb_cl(z, cat, combo, tau=0.3, positives=rule,
                         valid=valid, exclude=exclude)

  grad = jax.grad(f)(*(jnp.asarray(a)
                       for a in (x, cat, combo, valid, exclude)))
  np.testing.assert_array_equal(np.asarray(grad)[~valid], 0.0)
  alone = jax.grad(f)(jnp.asarray(x[valid]), jnp.asarray(cat[valid]),
                      jnp.asarray(combo[valid]), None,
                      jnp.asarray(exclude[np.ix_(valid, valid)]))
  assert np.abs(np.asarray(alone)).max() > 0
  # float32 gradients of the same sums over differently sized batches.
  np.testing.assert_allclose(np.asarray(grad)[valid], alone, rtol=1e-4,
                             atol=1e-6)


def test_nothing_valid_gives_zero():
  """No valid row: every loss is 0 with zero gradients."""
  z, cat, combo = (jnp.asarray(x) for x in random_batch(0))
  none = jnp.zeros(12, bool)
  value, grad = jax.value_and_grad(lambda z: losses.mcb_cl(
      z, cat, combo, tau=0.2, valid=none))(z)
  assert float(value) == 0.0
  np.testing.assert_array_equal(grad, 0.0)
  loss, _ = losses.sugr(jnp.ones(12), jnp.zeros(12), s_max=3.0, active=True,
                        valid=none)
  assert float(loss) == 0.0
