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


def named(text: str) -> str:
  """The name in `NAMES` of a combination written in any order ("ta" ->
  "at"); `text` unchanged where it names none (the caller's error)."""
  if len(set(text)) == len(text) and set(text) <= set(NAMES[-1]):
    return "".join(m for m in NAMES[-1] if m in text)
  return text


def bits_of(mask: jax.Array) -> jax.Array:
  """[..., 3] bool -> int bit mask (0 = no modality); NumPy in, NumPy out
  (no device work for the host's masks)."""
  return (mask.astype(jnp.int32) * np.array([1, 2, 4], np.int32)).sum(-1)


def realisable(present: np.ndarray) -> np.ndarray:
  """Indices into `NAMES` of the combinations a dataset can realise: those
  whose every modality it has ([3] bool `present`: for some utterance).
  A combination needing a modality the dataset lacks entirely (IEMOCAP's
  video here) is left out of training draws, tables and Avg."""
  return np.flatnonzero(~(MASKS & ~np.asarray(present, bool)).any(1))


def run_starts(segment: jax.Array) -> jax.Array:
  """[B] index of the first position of each position's run of equal
  consecutive `segment` values (a window's first utterance)."""
  i = jnp.arange(segment.shape[0])
  new = jnp.concatenate([jnp.ones(1, bool), segment[1:] != segment[:-1]])
  return jax.lax.cummax(jnp.where(new, i, 0))


def sample_train_masks(key: jax.Array, available: jax.Array,
                       weights: jax.Array,
                       segment: jax.Array | None = None) -> jax.Array:
  """Draws one combination per sample, intersected with native availability.

  Args:
    key: PRNG key.
    available: [B, 3] bool native availability.
    weights: [7] non-negative weights of the combinations in `NAMES` order
      (uniform by default in the configs).
    segment: [B] window ids; when given, one draw per window (per run of
      equal consecutive ids) instead of one per sample.

  Returns:
    [B, 3] bool mask. Where the drawn combination and the native availability
    do not intersect, the sample falls back to its native availability.
  """
  logits = jnp.log(jnp.asarray(weights, jnp.float32))
  drawn = jax.random.categorical(key, logits, shape=available.shape[:1])
  if segment is not None:
    drawn = drawn[run_starts(segment)]
  mask = jnp.asarray(MASKS)[drawn] & available
  return jnp.where(mask.any(-1, keepdims=True), mask, available)


def rate_name(rate: float) -> str:
  """A missing rate as results.json names it: one decimal where that is
  exact ("0.3"), else up to 12 significant digits ("0.35"); rates that
  would share a name are refused by `validate.check`."""
  return f"{rate:.1f}" if _one_decimal(rate) else f"{rate:.12g}"


def _one_decimal(rate: float) -> bool:
  return abs(rate - round(rate, 1)) < 1e-9


def rate_seed(rate: float) -> int:
  """The entry of `rate`'s missing-rate draws in their NumPy seed, a
  function of the rate alone, so a rate gets the same masks whatever other
  rates a run or an evaluation lists: 10 r for a one-decimal rate (0.0 ...
  0.7 -> 0 ... 7, their positions in the default `missing_rates`, which
  earlier versions seeded by position, so the published draws stand), else
  the bytes of its `rate_name` read as one integer (distinct names give
  distinct entries, never below 48)."""
  if _one_decimal(rate):
    return round(rate * 10)
  return int.from_bytes(rate_name(rate).encode(), "big")


def missing_rate_mask(rng: np.random.Generator, n: int, rate: float,
                      present: np.ndarray | None = None) -> np.ndarray:
  """GCNet's random missing-rate mask for n samples: [n, 3] bool.

  Over the k modalities the dataset has (`present`, default all 3): the
  fraction of dropped (False) entries is `rate`, every row keeps at least
  one modality, and the kept entries are otherwise uniform:
  * 1 - rate <= 1/k: exactly one random modality per row (so rate 0.7 gives
    2/3 with 3 modalities, as in GCNet, and 1/2 with 2);
  * rate 0: all kept;
  * otherwise one guaranteed random modality per row, plus
    round(k n (1 - rate)) - n more entries drawn without replacement among
    the other (k - 1) n. GCNet redraws Bernoulli masks until the realised
    rate is within 0.005 of `rate`; fixing the count gives the same
    distribution conditioned on the count, and a realised rate within
    1 / (k n) of it.
  The columns of modalities the dataset lacks are False.

  Raises:
    ValueError: rate outside [0, 0.7] (GCNet asserts the same range).
  """
  if not 0 <= rate <= 0.7 + 1e-9:
    raise ValueError(f"missing rate {rate} outside [0, 0.7]")
  columns = np.flatnonzero(np.ones(3, bool) if present is None else present)
  k = len(columns)
  keep = 1.0 - rate
  mask = np.zeros((n, k), bool)
  if keep >= 1:
    mask[:] = True
  else:
    mask[np.arange(n), rng.integers(0, k, n)] = True
    if keep > 1 / k + 1e-9:
      extra = int(round(k * n * keep)) - n
      free = np.flatnonzero(~mask.ravel())
      mask.ravel()[rng.choice(free, extra, replace=False)] = True
  full = np.zeros((n, 3), bool)
  full[:, columns] = mask
  return full
