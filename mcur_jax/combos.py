"""The 7 modality combinations and the per-sample masks drawn from them.

A combination is a bit mask over `schema.MODALITIES`: audio = 1, text = 2,
video = 4. `NAMES` lists them in the fixed report order `a t v at av tv atv`.
A mask is a boolean [..., 3] array (column m = modality m is used); the model
replaces a masked-out modality by a learned missing embedding.

Everything here is a pure function of arrays, so the mask is data: one
compiled training step serves every combination.
"""

import jax
import jax.numpy as jnp
import numpy as np

NAMES = ("a", "t", "v", "at", "av", "tv", "atv")
BITS = np.array([1, 2, 4, 3, 5, 6, 7], np.int32)
# [7, 3] bool: row c = the modalities of combination NAMES[c].
MASKS = (BITS[:, None] >> np.arange(3)) & 1 == 1


def bits_of(mask: jax.Array) -> jax.Array:
  """[..., 3] bool -> int bit mask (0 = no modality)."""
  return (mask.astype(jnp.int32) * jnp.array([1, 2, 4])).sum(-1)


def restrict(combo_mask: jax.Array, available: jax.Array) -> jax.Array:
  """The modalities of a combination that a sample natively has.

  A sample natively lacking every modality of the combination keeps an empty
  mask: it is predicted from the missing embeddings alone.
  """
  return combo_mask & available


def sample_train_masks(key: jax.Array, available: jax.Array,
                       weights: jax.Array) -> jax.Array:
  """Draws one combination per sample, intersected with native availability.

  Args:
    key: PRNG key.
    available: [B, 3] bool native availability.
    weights: [7] non-negative weights of the combinations in `NAMES` order
      (uniform by default in the configs).

  Returns:
    [B, 3] bool mask. Where the drawn combination and the native availability
    do not intersect, the sample falls back to its native availability.
  """
  logits = jnp.log(jnp.asarray(weights, jnp.float32))
  drawn = jax.random.categorical(key, logits, shape=available.shape[:1])
  mask = jnp.asarray(MASKS)[drawn] & available
  return jnp.where(mask.any(-1, keepdims=True), mask, available)


MISSING_RATES = tuple(round(0.1 * i, 1) for i in range(8))


def missing_rate_mask(rng: np.random.Generator, n: int,
                      rate: float) -> np.ndarray:
  """GCNet's random missing-rate mask for n samples: [n, 3] bool.

  The fraction of dropped (False) entries is `rate`, every row keeps at
  least one modality, and the kept entries are otherwise uniform:
  * 1 - rate <= 1/3: exactly one random modality per row (so rate 0.7 gives
    2/3, as in GCNet);
  * rate 0: all kept;
  * otherwise one guaranteed random modality per row, plus
    round(3 n (1 - rate)) - n more entries drawn without replacement among
    the other 2n. GCNet redraws Bernoulli masks until the realised rate is
    within 0.005 of `rate`; fixing the count gives the same distribution
    conditioned on the count, and a realised rate within 1 / (3n) of it.

  Raises:
    ValueError: rate outside [0, 0.7] (GCNet asserts the same range).
  """
  if not 0 <= rate <= 0.7 + 1e-9:
    raise ValueError(f"missing rate {rate} outside [0, 0.7]")
  keep = 1.0 - rate
  if keep >= 1:
    return np.ones((n, 3), bool)
  mask = np.zeros((n, 3), bool)
  mask[np.arange(n), rng.integers(0, 3, n)] = True
  if keep > 1 / 3 + 1e-9:
    extra = int(round(3 * n * keep)) - n
    free = np.flatnonzero(~mask.ravel())
    mask.ravel()[rng.choice(free, extra, replace=False)] = True
  return mask
