"""The MCUR losses: task loss, SUGR weighting and MCB-CL, as pure JAX functions.

* Task loss per sample `l_i`: cross-entropy (classification), L1 or MSE
  (regression).
* SUGR (sample-wise uncertainty-guided regularisation, the heteroscedastic
  form of Kendall & Gal 2017): `mean_i(exp(-s_i) * l_i + s_i)` with the
  predicted log-variance `s_i` clipped to [-s_max, s_max]. An ambiguous,
  high-loss sample learns a large `s_i`, hence a small weight
  `w_i = exp(-s_i)`. During warm-up `w_i = 1` (plain mean of `l_i`).
  Option `beta` (the beta-NLL of Seitzer et al. 2022): each sample's term
  is scaled by stop_grad(exp(beta * s_i)), so the task gradient's weight is
  `exp(-(1 - beta) s_i)` (beta 0: the form above; 1: the plain task
  gradient) while `s_i` keeps its optimum, log of the expected `l_i`.
* MCB-CL (modality-combination- and category-based contrastive loss, the
  SupCon form of Khosla et al. 2020) over the whole global batch:
  `L_i = -1/|P(i)| sum_{p in P(i)} log(exp(z_i.z_p/tau) / sum_{k != i}
  exp(z_i.z_k/tau))`, averaged over anchors with a non-empty P(i). P(i) is
  set by `positives`: same category and same combination (default), same
  category, same combination, or the sum of the class and combination terms;
  `exclude` removes pairs from the positives (the same-group option).

The batch losses (SUGR, SupCon, MCB-CL) take an optional `valid` [B]
mask: padding positions of a batch (`groups.py`) contribute nothing,
neither to sums nor to counts, and are no contrastive key.

`tests/test_losses.py` checks each against a plain NumPy reference.
"""

import jax
import jax.numpy as jnp
import optax

from mcur_jax import metrics

# The task losses (config.task_loss) that train each task (schema.TASKS).
TASK_LOSSES = {"regression": ("l1", "mse"), "classification": ("ce",)}
POSITIVES = ("class_and_combo", "class", "combo", "class_plus_combo")
REGRESSION_CATEGORIES = ("sign", "seven")


def task_loss(pred: jax.Array, label: jax.Array, kind: str) -> jax.Array:
  """Per-sample loss [B] of predictions [B, K] against labels [B]."""
  if kind == "ce":
    return optax.softmax_cross_entropy_with_integer_labels(pred, label)
  error = pred[:, 0] - label
  if kind == "l1":
    return jnp.abs(error)
  if kind == "mse":
    return jnp.square(error)
  raise ValueError(f"task loss {kind!r} not in "
                   f"{sum(TASK_LOSSES.values(), ())}")


def masked_mean(x: jax.Array, valid: jax.Array | None) -> jax.Array:
  """Mean of x [B] over the valid entries (all when `valid` is None); 0
  when none is valid."""
  if valid is None:
    return x.mean()
  return jnp.sum(jnp.where(valid, x, 0.0)) / jnp.maximum(valid.sum(), 1)


def sugr(per_sample: jax.Array, s: jax.Array, *, s_max: float,
         active, valid: jax.Array | None = None, beta: float = 0.0
         ) -> tuple[jax.Array, jax.Array]:
  """Uncertainty-weighted task loss and the per-sample weights w_i.

  Args:
    per_sample: [B] task losses l_i.
    s: [B] predicted log-variances (clipped here to [-s_max, s_max]).
    s_max: the clipping bound.
    active: bool scalar (may be traced); False = warm-up, w_i = 1.
    valid: [B] bool, the real utterances (None: all).
    beta: in [0, 1]; each term scaled by stop_grad(exp(beta * s)).

  Returns:
    (loss, w) with w = exp(-(1 - beta) s), the weight of each sample's task
    gradient, when active, else ones; the loss is the mean over the valid
    entries.
  """
  # s = 0 during warm-up gives w = 1 and the plain mean, with no path from
  # the uncertainty head into the loss: selecting between two finished losses
  # instead would still backpropagate 0 * d exp(-s), NaN for a NaN s.
  s = jnp.where(active, jnp.clip(s, -s_max, s_max), 0.0)
  term = jnp.exp(-s) * per_sample + s
  if beta:
    term = jax.lax.stop_gradient(jnp.exp(beta * s)) * term
  return masked_mean(term, valid), jnp.exp(-(1.0 - beta) * s)


def category(label: jax.Array, task: str, rule: str = "sign") -> jax.Array:
  """Integer category of each label for MCB-CL: the class, or for
  regression the sign (y >= 0 vs y < 0) or the 7 classes of Acc-7."""
  if task == "classification":
    return label.astype(jnp.int32)
  if rule == "sign":
    return (label >= 0).astype(jnp.int32)
  if rule == "seven":
    return metrics.seven(label, jnp).astype(jnp.int32)
  raise ValueError(f"regression category {rule!r} not in "
                   f"{REGRESSION_CATEGORIES}")


def supcon(z: jax.Array, positives: jax.Array, tau: float,
           anchor_weight: jax.Array | None = None,
           valid: jax.Array | None = None) -> jax.Array:
  """SupCon loss of unit vectors z [B, P] with a [B, B] positive-pair mask.

  The diagonal of `positives` is ignored (p != i), as is k = i in the
  denominator. Anchors without positives contribute nothing; the result is
  the (optionally `anchor_weight`-ed) sum over the others divided by their
  count, and 0 when no anchor has a positive. Invalid entries (`valid`
  False) are neither anchors, positives nor in any denominator.
  """
  b = z.shape[0]
  excluded = jnp.eye(b, dtype=bool)
  if valid is not None:
    excluded = excluded | ~valid[None, :]
    positives = positives & valid[:, None]
  logits = jnp.where(excluded, -1e9, z @ z.T / tau)
  log_prob = logits - jax.nn.logsumexp(logits, axis=1, keepdims=True)
  positives = positives & ~excluded
  count = positives.sum(1)
  per_anchor = -jnp.where(positives, log_prob, 0.0).sum(1) / jnp.maximum(
      count, 1)
  has = count > 0
  weight = has if anchor_weight is None else has * anchor_weight
  return jnp.sum(weight * per_anchor) / jnp.maximum(has.sum(), 1)


def mcb_cl(z: jax.Array, cat: jax.Array, combo: jax.Array, *, tau: float,
           positives: str = "class_and_combo",
           anchor_weight: jax.Array | None = None,
           valid: jax.Array | None = None,
           exclude: jax.Array | None = None) -> jax.Array:
  """MCB-CL for categories `cat` [B] and combination bits `combo` [B].

  `exclude` [B, B] bool removes pairs from the positives (they stay in the
  denominators), e.g. the pairs of one group."""
  same_class = cat[:, None] == cat[None, :]
  same_combo = combo[:, None] == combo[None, :]
  terms = {"class_and_combo": [same_class & same_combo],
           "class": [same_class], "combo": [same_combo],
           "class_plus_combo": [same_class, same_combo]}
  if positives not in terms:
    raise ValueError(f"positives {positives!r} not in {POSITIVES}")
  keep = True if exclude is None else ~exclude
  return sum(supcon(z, p & keep, tau, anchor_weight, valid)
             for p in terms[positives])
