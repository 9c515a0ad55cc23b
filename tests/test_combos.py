"""The 7 modality combinations and the per-sample training masks (DESIGN 2)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mcur_jax import combos

LETTERS = "atv"  # Column order of a mask; bit of column m is 2**m.
# Every availability pattern: row r = the bits of r (a = 1, t = 2, v = 4).
ALL_AVAILABLE = np.array(list(itertools.product([False, True], repeat=3)))[
    :, ::-1]


def mask_of(name):
  return np.array([c in name for c in LETTERS])


def test_names_bits_masks_follow_design():
  """Order a t v at av tv atv; a = 1, t = 2, v = 4; masks agree with both."""
  assert combos.NAMES == ("a", "t", "v", "at", "av", "tv", "atv")
  np.testing.assert_array_equal(combos.BITS, [1, 2, 4, 3, 5, 6, 7])
  assert combos.MASKS.shape == (7, 3) and combos.MASKS.dtype == bool
  for c, name in enumerate(combos.NAMES):
    np.testing.assert_array_equal(combos.MASKS[c], mask_of(name))
    assert combos.BITS[c] == sum({"a": 1, "t": 2, "v": 4}[x] for x in name)


def test_a_combination_in_any_order_is_named():
  """Every order of a combination's letters names it; anything else is
  left as written, for the caller's error to quote."""
  for name in combos.NAMES:
    for order in itertools.permutations(name):
      assert combos.named("".join(order)) == name
  for text in ("", "aa", "ax", "atvv", "AT"):
    assert combos.named(text) == text


def test_bits_of():
  """Bits of every mask, on any leading shape; the empty mask is 0."""
  np.testing.assert_array_equal(combos.bits_of(jnp.asarray(ALL_AVAILABLE)),
                                np.arange(8))
  np.testing.assert_array_equal(combos.bits_of(jnp.asarray(combos.MASKS)),
                                combos.BITS)
  stacked = jnp.asarray(ALL_AVAILABLE).reshape(2, 4, 3)
  np.testing.assert_array_equal(combos.bits_of(stacked),
                                np.arange(8).reshape(2, 4))


def counts(mask):
  """How often each of the 7 combinations occurs, in NAMES order."""
  bits = np.asarray(combos.bits_of(mask))
  return np.array([(bits == b).sum() for b in combos.BITS])


@pytest.mark.parametrize("weights", [np.ones(7), np.arange(1.0, 8.0)])
def test_draw_frequencies(weights):
  """Fully available samples: combination c with frequency w_c / sum(w),
  within 5 binomial standard deviations."""
  n = 70_000
  mask = combos.sample_train_masks(jax.random.key(0), jnp.ones((n, 3), bool),
                                   jnp.asarray(weights))
  got = counts(mask)
  assert got.sum() == n
  p = weights / weights.sum()
  bound = 5 * np.sqrt(n * p * (1 - p))
  assert (np.abs(got - n * p) < bound).all(), (got, n * p)


def test_uniform_is_uniform_over_seeds():
  """Uniform weights on 7 keys of 7k samples: each combination near 1/7."""
  n = 7_000
  for seed in range(3):
    got = counts(combos.sample_train_masks(
        jax.random.key(seed), jnp.ones((n, 3), bool), jnp.ones(7)))
    assert (np.abs(got - n / 7) < 5 * np.sqrt(n / 7 * 6 / 7)).all()


def test_mask_is_a_nonempty_subset_of_availability():
  """Never a natively absent modality; empty only when nothing is available."""
  rng = np.random.default_rng(0)
  avail = jnp.asarray(rng.random((5_000, 3)) < 0.6)
  for seed in range(3):
    weights = jnp.asarray(rng.uniform(0, 1, 7))
    mask = np.asarray(combos.sample_train_masks(jax.random.key(seed), avail,
                                                weights))
    assert not (mask & ~np.asarray(avail)).any()
    np.testing.assert_array_equal(mask.any(-1), np.asarray(avail).any(-1))


def test_fallback_to_native_availability():
  """A draw that misses every available modality falls back to availability."""
  only_video = jnp.array([[False, False, True]] * 50)
  all_on_a = jnp.asarray(np.eye(7)[0])
  mask = combos.sample_train_masks(jax.random.key(1), only_video, all_on_a)
  np.testing.assert_array_equal(mask, only_video)
  audio_text = jnp.array([[True, True, False]] * 50)
  all_on_v = jnp.asarray(np.eye(7)[2])
  mask = combos.sample_train_masks(jax.random.key(2), audio_text, all_on_v)
  np.testing.assert_array_equal(mask, audio_text)
  # 'tv' against {a, v} intersects in v: no fallback.
  audio_video = jnp.array([[True, False, True]] * 50)
  all_on_tv = jnp.asarray(np.eye(7)[5])
  mask = combos.sample_train_masks(jax.random.key(3), audio_video, all_on_tv)
  np.testing.assert_array_equal(mask, jnp.array([[False, False, True]] * 50))
  # Nothing available: the mask stays empty.
  mask = combos.sample_train_masks(jax.random.key(4),
                                   jnp.zeros((50, 3), bool), jnp.ones(7))
  assert not np.asarray(mask).any()


@pytest.mark.parametrize("c", range(7))
def test_one_hot_weights_give_that_combination(c):
  """Weight only on combination c: c & availability, or availability when
  that is empty, for every availability pattern."""
  avail = np.repeat(ALL_AVAILABLE, 20, axis=0)
  mask = np.asarray(combos.sample_train_masks(
      jax.random.key(c), jnp.asarray(avail), jnp.asarray(np.eye(7)[c])))
  for row, a in zip(mask, avail):
    want = combos.MASKS[c] & a
    np.testing.assert_array_equal(row, want if want.any() else a)
  full = mask[avail.all(-1)]
  np.testing.assert_array_equal(full, np.broadcast_to(combos.MASKS[c],
                                                      full.shape))


def test_deterministic_for_a_key_and_jittable():
  """Same key, same masks (also under jit); another key, other masks."""
  avail, weights = jnp.ones((500, 3), bool), jnp.ones(7)
  one = combos.sample_train_masks(jax.random.key(5), avail, weights)
  np.testing.assert_array_equal(
      one, combos.sample_train_masks(jax.random.key(5), avail, weights))
  np.testing.assert_array_equal(
      one, jax.jit(combos.sample_train_masks)(jax.random.key(5), avail,
                                              weights))
  other = combos.sample_train_masks(jax.random.key(6), avail, weights)
  assert (np.asarray(one) != np.asarray(other)).any()
  assert one.shape == (500, 3) and one.dtype == jnp.bool_


# Missing-rate masks (GCNet semantics)
# ------------------------------------


RATES = tuple(np.round(np.arange(0.0, 0.8, 0.1), 1))  # GCNet's 0.0 ... 0.7.


@pytest.mark.parametrize("rate", RATES)
def test_missing_rate_realised_and_at_least_one_kept(rate):
  """Over many samples the fraction of dropped entries is within 0.01 of r
  (r = 0.7 gives 2/3, as GCNet), every sample keeps a modality, and each
  modality is dropped equally often."""
  mask = combos.missing_rate_mask(np.random.default_rng(0), 3000, rate)
  assert mask.shape == (3000, 3) and mask.dtype == bool
  assert mask.any(1).all()
  want = 2 / 3 if rate == 0.7 else rate
  assert abs((~mask).mean() - want) <= 0.01
  # Each column's dropped fraction: a mean of 3000 draws of about p = want,
  # so within 4 standard deviations of it, 0.022 to 0.037 over the rates
  # above 0 (seeded: no flakes; a column biased by 0.04 fails at every
  # rate).
  np.testing.assert_allclose((~mask).mean(0), want,
                             atol=4 * np.sqrt(want * (1 - want) / 3000))


def test_missing_rate_mask_is_random_and_seeded():
  """The same seed gives the same mask, another seed another one; rate 0.7
  keeps exactly one modality per sample."""
  draw = lambda seed, rate: combos.missing_rate_mask(
      np.random.default_rng(seed), 500, rate)
  np.testing.assert_array_equal(draw(1, 0.4), draw(1, 0.4))
  assert (draw(1, 0.4) != draw(2, 0.4)).any()
  assert (draw(3, 0.7).sum(1) == 1).all()
  assert draw(3, 0.0).all()


@pytest.mark.parametrize("rate", [-0.1, 0.75, 1.0])
def test_missing_rate_outside_gcnet_range_is_refused(rate):
  """Rates outside GCNet's [0, 0.7] raise."""
  with pytest.raises(ValueError, match="outside"):
    combos.missing_rate_mask(np.random.default_rng(0), 10, rate)


# Realisable combinations.


def test_realisable():
  """All present: all 7; no video: a, t, at; only text: t; nothing: none;
  in general c is realisable iff every modality of c is present."""
  names = lambda present: [combos.NAMES[c] for c in combos.realisable(present)]
  assert names([True, True, True]) == list(combos.NAMES)
  assert names([True, True, False]) == ["a", "t", "at"]
  assert names(np.array([False, True, False])) == ["t"]
  assert names([False, False, False]) == []
  for present in ALL_AVAILABLE:
    want = [c for c in range(7) if all(present[m] or not combos.MASKS[c, m]
                                       for m in range(3))]
    np.testing.assert_array_equal(combos.realisable(present), want)


# Runs of windows and one draw per window.


def ref_run_starts(segment):
  """The first position of each position's run, by a plain loop."""
  out, start = [], 0
  for i, s in enumerate(segment):
    if i and s != segment[i - 1]:
      start = i
    out.append(start)
  return np.array(out)


def test_run_starts():
  """Each position -> its run's first position; a later run of an id seen
  before is a new run; matches a loop on random segments, also under jit."""
  segment = jnp.array([5, 5, 1, 1, 1, -1, -1, 5])
  np.testing.assert_array_equal(combos.run_starts(segment),
                                [0, 0, 2, 2, 2, 5, 5, 7])
  np.testing.assert_array_equal(combos.run_starts(jnp.zeros(4, int)), 0)
  np.testing.assert_array_equal(combos.run_starts(jnp.arange(6)),
                                np.arange(6))
  rng = np.random.default_rng(0)
  for _ in range(5):
    segment = np.repeat(rng.integers(-1, 4, 30), rng.integers(1, 4, 30))
    np.testing.assert_array_equal(
        jax.jit(combos.run_starts)(jnp.asarray(segment)),
        ref_run_starts(segment))


def windows_of(lengths):
  """Segment ids for windows of the given lengths, laid end to end."""
  return np.repeat(np.arange(len(lengths)), lengths).astype(np.int32)


@pytest.mark.parametrize("weights", [np.ones(7), np.arange(1.0, 8.0)])
def test_draw_frequencies_per_window(weights):
  """With `segment`, each window has one combination (all its utterances
  alike when fully available), at frequency w_c / sum(w) over windows,
  within 5 binomial standard deviations."""
  n = 20_000
  lengths = np.random.default_rng(0).integers(1, 7, n)
  segment = windows_of(lengths)
  mask = np.asarray(combos.sample_train_masks(
      jax.random.key(0), jnp.ones((len(segment), 3), bool),
      jnp.asarray(weights), jnp.asarray(segment)))
  starts = np.r_[0, np.cumsum(lengths)[:-1]]
  np.testing.assert_array_equal(mask, mask[starts][segment])
  got = counts(mask[starts])
  assert got.sum() == n
  p = weights / weights.sum()
  bound = 5 * np.sqrt(n * p * (1 - p))
  assert (np.abs(got - n * p) < bound).all(), (got, n * p)


def test_window_draw_meets_each_utterances_availability():
  """Per window: the window's combination & each utterance's availability,
  that availability where the two do not intersect. Distinct segment ids
  at every position give exactly the per-sample draws."""
  rng = np.random.default_rng(1)
  segment = jnp.asarray(windows_of(rng.integers(1, 6, 400)))
  b = segment.shape[0]
  avail = jnp.asarray(rng.random((b, 3)) < 0.6)
  weights = jnp.asarray(rng.uniform(0.1, 1.0, 7))
  key = jax.random.key(2)
  full = np.asarray(combos.sample_train_masks(key, jnp.ones((b, 3), bool),
                                              weights, segment))
  got = np.asarray(combos.sample_train_masks(key, avail, weights, segment))
  want = full & np.asarray(avail)
  want = np.where(want.any(-1, keepdims=True), want, np.asarray(avail))
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(
      combos.sample_train_masks(key, avail, weights, jnp.arange(b)),
      combos.sample_train_masks(key, avail, weights))


# Missing-rate masks over the modalities a dataset has.


PRESENT = [[True, True, True], [True, True, False], [True, False, True],
           [False, True, False]]


@pytest.mark.parametrize("present", PRESENT)
@pytest.mark.parametrize("rate", RATES)
def test_missing_rate_over_present_modalities(present, rate):
  """Absent columns all False, at least one kept per row; over the k
  present columns the dropped fraction is within 1 / (k n) of r for
  r <= (k - 1) / k, and above that exactly one is kept per row."""
  n = 1000
  present = np.array(present)
  k = present.sum()
  mask = combos.missing_rate_mask(np.random.default_rng(3), n, rate, present)
  assert mask.shape == (n, 3) and mask.dtype == bool
  assert not mask[:, ~present].any()
  assert mask.any(1).all()
  dropped = (~mask[:, present]).mean()
  if rate <= (k - 1) / k + 1e-9:
    assert abs(dropped - rate) <= 1 / (k * n) + 1e-12, dropped
  else:
    assert (mask.sum(1) == 1).all()
  if k > 1 and 0 < rate:  # The present modalities are dropped alike.
    # Each column a mean of n draws of about p = dropped: 4 standard
    # deviations (seeded: no flakes).
    np.testing.assert_allclose((~mask[:, present]).mean(0), dropped,
                               atol=4 * np.sqrt(dropped * (1 - dropped) / n))

