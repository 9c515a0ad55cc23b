"""Groups and windows (DESIGN sections 1 and 7): the group structure of a
split, the training epoch's windows and batches, the evaluation layout."""

import functools

import jax
import numpy as np
import pytest

from mcur_jax import data
from mcur_jax import groups
from mcur_jax import schema

PAD = groups.PAD


def split_of(group_id, position, speaker) -> data.Split:
  """A Split with the given id columns (features and labels are unused)."""
  n = len(group_id)
  return data.Split(
      features={m: np.zeros((n, 1), np.float32) for m in schema.MODALITIES},
      available=np.ones((n, 3), bool), label=np.zeros(n, np.float32),
      utt_id=np.array([f"u{i}" for i in range(n)]),
      group_id=np.asarray(group_id), speaker=np.asarray(speaker),
      position=np.asarray(position, np.int64),
      session=np.zeros(n, np.int64))


def random_split(lengths, seed) -> data.Split:
  """Groups of the given lengths, positions with gaps, three speakers, the
  rows in random order."""
  rng = np.random.default_rng(seed)
  group_id, position, speaker = [], [], []
  for g, length in enumerate(lengths):
    group_id += [f"g{g:03d}"] * length
    position += list(rng.choice(10 * length + 5, length, replace=False))
    speaker += list(rng.choice(["F", "M", "X"], length))
  perm = rng.permutation(len(group_id))
  return split_of(np.array(group_id)[perm], np.array(position)[perm],
                  np.array(speaker)[perm])


def ref_groups(split):
  """group id -> (rows in position order, their speaker ranks), in plain
  Python: speakers ranked by first appearance in position order."""
  out = {}
  for g in dict.fromkeys(split.group_id.tolist()):
    rows = [i for i in range(len(split)) if split.group_id[i] == g]
    rows.sort(key=lambda i: split.position[i])
    seen = []
    for i in rows:
      if split.speaker[i] not in seen:
        seen.append(split.speaker[i])
    out[g] = (np.array(rows), np.array([seen.index(split.speaker[i])
                                        for i in rows]))
  return out


def group_of_row(grp: groups.Groups) -> np.ndarray:
  """[N] the group index (into grp.start) of each row."""
  out = np.empty(len(grp.order), np.int64)
  out[grp.order] = np.repeat(np.arange(len(grp)), grp.length)
  return out


# Groups.of.


def test_groups_of_a_small_split():
  """Rows in any order, positions with gaps: each group's rows in position
  order; speakers ranked by first appearance (M first -> M = 0)."""
  split = split_of(
      group_id=["b", "a", "b", "a", "b", "a", "c", "b"],
      position=[30, 9, 10, 2, 20, 5, 7, 0],
      speaker=["F", "M", "M", "F", "F", "M", "C", "F"])
  grp = groups.Groups.of(split)
  by_group = {split.group_id[rows[0]]: rows.tolist()
              for rows in grp.index_arrays()}
  assert by_group == {"a": [3, 5, 1], "b": [7, 2, 4, 0], "c": [6]}
  assert len(grp) == 3 and sorted(grp.length.tolist()) == [1, 3, 4]
  np.testing.assert_array_equal(grp.rank[[3, 5, 1]], [0, 1, 2])
  np.testing.assert_array_equal(grp.rank[[7, 2, 4, 0]], [0, 1, 2, 3])
  # Group a: F speaks first (position 2), then M.
  np.testing.assert_array_equal(grp.speaker[[3, 5, 1]], [0, 1, 1])
  # Group b: F at position 0, then M: F = 0, M = 1.
  np.testing.assert_array_equal(grp.speaker[[7, 2, 4, 0]], [0, 1, 0, 0])
  assert grp.speaker[6] == 0


def test_speaker_rank_follows_first_appearance_not_the_alphabet():
  """A group whose first speaker is M gets M = 0, F = 1; three speakers
  C, A, B in that order of appearance get 0, 1, 2."""
  split = split_of(group_id=["x"] * 4 + ["y"] * 5,
                   position=[3, 1, 2, 0, 8, 6, 4, 2, 0],
                   speaker=["F", "F", "M", "M", "A", "B", "A", "A", "C"])
  grp = groups.Groups.of(split)
  np.testing.assert_array_equal(grp.speaker[:4], [1, 1, 0, 0])
  # y in position order: C(0) A(2) A(4) B(6) A(8).
  np.testing.assert_array_equal(grp.speaker[4:], [1, 2, 1, 1, 0])


@pytest.mark.parametrize("seed", range(3))
def test_groups_of_matches_a_reference(seed):
  """Random groups in shuffled rows: index_arrays, start/length, rank and
  speaker equal a plain-Python reference; `order` is every row once."""
  rng = np.random.default_rng(seed)
  split = random_split(rng.integers(1, 12, 15), seed)
  grp = groups.Groups.of(split)
  ref = ref_groups(split)
  np.testing.assert_array_equal(np.sort(grp.order), np.arange(len(split)))
  arrays = grp.index_arrays()
  assert len(arrays) == len(ref)
  for s, length, rows in zip(grp.start, grp.length, arrays):
    np.testing.assert_array_equal(rows, grp.order[s:s + length])
    want_rows, want_speaker = ref[split.group_id[rows[0]]]
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_array_equal(grp.rank[rows], np.arange(length))
    np.testing.assert_array_equal(grp.speaker[rows], want_speaker)


# train_plan.


@functools.cache
def plan_fn():
  return jax.jit(groups.train_plan, static_argnums=(2, 3, 4))


def draw(grp, window, steps, batch, key):
  tables = groups.TrainTables.of(grp, window).arrays()
  plan = plan_fn()(key, tables, window, steps, batch)
  return {k: np.asarray(v) for k, v in plan.items()}


def check_plan(plan, grp, window, steps, batch):
  """Asserts the epoch invariants; returns the step segments as a list of
  (segment id, step, group, ranks) and the whole windows as
  {segment id: (group, ranks)}."""
  n = len(grp.order)
  index, segment, group, rank = (plan[k] for k in ("index", "segment",
                                                   "group", "rank"))
  for x in (index, segment, group, rank):
    assert x.shape == (steps, batch)
  real = segment != PAD
  # Every utterance exactly once; the padding is what the shape leaves.
  np.testing.assert_array_equal(np.sort(index[real]), np.arange(n))
  assert (~real).sum() == steps * batch - n
  assert set(real.sum(1).tolist()) <= {n // steps, -(-n // steps)}
  # Padding fields (documented: index 0, group PAD, rank 0).
  assert (index[~real] == 0).all() and (group[~real] == PAD).all()
  assert (rank[~real] == 0).all()
  # Real fields agree with the group structure.
  np.testing.assert_array_equal(group[real], group_of_row(grp)[index[real]])
  np.testing.assert_array_equal(rank[real], grp.rank[index[real]])
  pieces, windows = [], {}
  for j in range(steps):
    for s in np.unique(segment[j][real[j]]):
      pos = np.flatnonzero(segment[j] == s)
      # Contiguous in the step (one run: `combos.run_starts` draws one
      # combination per run), consecutive ranks of one group, <= W.
      assert (np.diff(pos) == 1).all()
      assert len(set(group[j, pos].tolist())) == 1
      ranks = rank[j, pos]
      assert (np.diff(ranks) == 1).all() and len(pos) <= window
      pieces.append((s, j, group[j, pos[0]], ranks))
      if s in windows:  # A window cut by a step boundary continues.
        g, before = windows[s]
        assert g == group[j, pos[0]] and ranks[0] == before[-1] + 1
        ranks = np.r_[before, ranks]
      windows[s] = (group[j, pos[0]], ranks)
  for g, ranks in windows.values():
    assert len(ranks) <= window
  return pieces, windows


CASES = [  # (window, batch, group lengths, extra steps)
    (4, 16, [1, 2, 3, 4, 5, 9, 13, 17, 4, 8, 2, 30], 0),
    (5, 7, [6, 1, 11, 5, 23, 2, 3], 0),
    (8, 5, [20, 3, 8, 9, 1], 0),    # W > batch: windows cut by steps.
    (1, 8, [3, 1, 7, 2, 12], 0),    # W = 1: single utterances.
    (6, 10, [12, 12, 12, 2], 0),    # N = 38, a multiple of nothing.
    (4, 10, [10, 10, 10, 10], 3),   # N = 40 = 4 * 10, plus 3 padded steps.
]


@pytest.mark.parametrize("window, batch, lengths, extra", CASES)
def test_train_plan_epoch_invariants(window, batch, lengths, extra):
  """Each of several epochs: every utterance once, padding spread evenly,
  segments = consecutive utterances of one group, at most W, with their
  group and rank; whole windows tile each group at cut points W apart."""
  grp = groups.Groups.of(random_split(lengths, seed=window))
  steps = groups.train_steps(len(grp.order), batch) + extra
  for epoch in range(4):
    plan = draw(grp, window, steps, batch, jax.random.key(epoch))
    _, windows = check_plan(plan, grp, window, steps, batch)
    by_group = {}
    for g, ranks in windows.values():
      by_group.setdefault(g, []).append(ranks)
    for g, parts in by_group.items():
      length = grp.length[g]
      parts.sort(key=lambda r: r[0])
      np.testing.assert_array_equal(np.concatenate(parts), np.arange(length))
      if length <= window:
        assert len(parts) == 1
      else:  # Windows [kW - o, (k + 1)W - o): every start but 0 is -o mod W.
        cuts = {r[0] % window for r in parts[1:]}
        assert len(cuts) <= 1
        assert all(len(r) == window for r in parts[1:-1])
    if window == 1:
      assert len(windows) == len(grp.order)


def test_train_plan_is_a_function_of_the_key():
  """The same key gives the same epoch; another key another order."""
  grp = groups.Groups.of(random_split([5, 9, 3, 12], seed=0))
  steps = groups.train_steps(len(grp.order), 8)
  one = draw(grp, 4, steps, 8, jax.random.key(3))
  again = draw(grp, 4, steps, 8, jax.random.key(3))
  other = draw(grp, 4, steps, 8, jax.random.key(4))
  for k in one:
    np.testing.assert_array_equal(one[k], again[k])
  assert (one["index"] != other["index"]).any()


def test_train_plan_cut_points_move_between_epochs():
  """Over 16 epochs, in groups longer than W = 4, every interior utterance
  (neither the group's first nor last) sits inside a segment (neither its
  first nor its last utterance) in some epoch, and some utterance starts a
  segment in one epoch and is interior in another."""
  window, batch = 4, 12
  grp = groups.Groups.of(random_split([15, 22, 3, 9], seed=5))
  steps = groups.train_steps(len(grp.order), batch)
  first, interior = set(), set()
  for epoch in range(16):
    plan = draw(grp, window, steps, batch, jax.random.key(100 + epoch))
    pieces, _ = check_plan(plan, grp, window, steps, batch)
    for _, _, g, ranks in pieces:
      first.add((g, ranks[0]))
      interior |= {(g, r) for r in ranks[1:-1]}
  long_groups = np.flatnonzero(grp.length > window)
  want = {(g, r) for g in long_groups for r in range(1, grp.length[g] - 1)}
  assert want <= interior
  assert {x for x in first if x[0] in long_groups} & interior


# eval_windows and EvalLayout.


def ref_owner(length, starts, window):
  """The window whose centre is nearest to each utterance (earlier on a
  tie), by a plain loop."""
  out = []
  for r in range(length):
    dist = [abs(r - (s + (window - 1) / 2)) for s in starts]
    out.append(dist.index(min(dist)))
  return np.array(out)


@pytest.mark.parametrize("window", [1, 2, 3, 4, 5, 8, 9, 16])
def test_eval_windows(window):
  """Short groups: one window. Longer: windows of W starting every W // 2
  (the last one ending at the group's end), owner = nearest centre, and
  each utterance has min(W // 4, what its group has) context each side."""
  for length in range(1, 4 * window + 7):
    starts, owner = groups.eval_windows(length, window)
    assert owner.shape == (length,)
    if length <= window:
      np.testing.assert_array_equal(starts, [0])
      np.testing.assert_array_equal(owner, 0)
      continue
    stride = max(window // 2, 1)
    assert starts[0] == 0 and starts[-1] == length - window
    assert (np.diff(starts)[:-1] == stride).all()
    assert 0 < np.diff(starts)[-1] <= stride
    np.testing.assert_array_equal(owner, ref_owner(length, starts, window))
    r = np.arange(length)
    left, right = r - starts[owner], starts[owner] + window - 1 - r
    assert (left >= 0).all() and (right >= 0).all()
    assert (left >= np.minimum(window // 4, r)).all()
    assert (right >= np.minimum(window // 4, length - 1 - r)).all()


LAYOUTS = [  # (window, chunk, group lengths)
    (4, 8, [1, 3, 4, 5, 9, 2, 13, 8]),
    (6, 6, [6, 6, 1, 14, 5]),        # W = chunk.
    (5, 12, [40, 2, 2, 2, 7, 11]),
    (1, 4, [3, 1, 5]),
    (8, 32, [3, 4, 30, 1, 17, 2, 9, 8]),
]


@pytest.mark.parametrize("per_slot", [False, True])
@pytest.mark.parametrize("window, chunk, lengths", LAYOUTS)
def test_eval_layout(window, chunk, lengths, per_slot):
  """Every utterance in the utterance positions (once per chunk) and owned
  by exactly one slot, which holds it; a chunk holds at most `chunk` utterances, and
  each of its slots points (`local`) at one of them; `chunk` slots per
  chunk without context or with `per_slot`, else 2 * chunk; windows whole
  in one chunk, contiguous, consecutive utterances of one group, at most
  W; short groups are one window; long ones as `eval_windows`;
  rank/speaker per slot; padding() is the PAD fraction of the slots with
  `per_slot`, else of the utterance positions."""
  grp = groups.Groups.of(random_split(lengths, seed=chunk))
  layout = groups.EvalLayout.of(grp, window, chunk, per_slot)
  n, slots = len(grp.order), len(layout.index)
  per_chunk = layout.slots
  assert layout.utterances == chunk
  assert per_chunk == (chunk if window == 1 or per_slot else 2 * chunk)
  chunks = len(layout.rows) // chunk
  assert len(layout.rows) == chunks * chunk and slots == chunks * per_chunk
  # Each utterance among the utterance positions, at most once per chunk
  # (a long group's windows may continue in the next chunk, which then
  # holds the rows they share).
  used = layout.rows[layout.rows != PAD]
  assert set(used.tolist()) == set(range(n))
  for c in range(chunks):
    part = layout.rows[c * chunk:(c + 1) * chunk]
    part = part[part != PAD]
    assert len(set(part.tolist())) == len(part)
  assert layout.padding() == pytest.approx(
      np.mean((layout.index if per_slot else layout.rows) == PAD))
  for x in (layout.local, layout.segment, layout.rank, layout.speaker):
    assert x.shape == (slots,)
  real = layout.index != PAD
  np.testing.assert_array_equal(layout.segment != PAD, real)
  # A slot's local index points at its row within its own chunk.
  chunk_of = np.arange(slots) // per_chunk
  assert (layout.local[real] < chunk).all()
  np.testing.assert_array_equal(
      layout.rows[chunk_of[real] * chunk + layout.local[real]],
      layout.index[real])
  assert (layout.local[~real] == 0).all()
  assert set(layout.index[real].tolist()) == set(range(n))
  # Ownership: one distinct slot per utterance, holding that utterance.
  assert layout.owner.shape == (n,) and len(set(layout.owner)) == n
  np.testing.assert_array_equal(layout.index[layout.owner], np.arange(n))
  np.testing.assert_array_equal(layout.rank[real],
                                grp.rank[layout.index[real]])
  np.testing.assert_array_equal(layout.speaker[real],
                                grp.speaker[layout.index[real]])
  assert (layout.rank[~real] == 0).all() and (layout.speaker[~real] == 0).all()
  row_group = group_of_row(grp)
  seen = {}  # group -> list of (window start rank, rows)
  for s in np.unique(layout.segment[real]):
    pos = np.flatnonzero(layout.segment == s)
    assert (np.diff(pos) == 1).all() and len(pos) <= window
    assert len(set((pos // per_chunk).tolist())) == 1  # One chunk.
    rows = layout.index[pos]
    assert len(set(row_group[rows].tolist())) == 1
    assert (np.diff(grp.rank[rows]) == 1).all()
    seen.setdefault(row_group[rows[0]], []).append(grp.rank[rows[0]])
  for g, starts in seen.items():
    length = grp.length[g]
    want, owned_by = groups.eval_windows(length, window)
    np.testing.assert_array_equal(sorted(starts), want)
    if length <= window:
      continue
    # Each owned utterance has min(W // 4, available) context each side.
    rows = grp.order[grp.start[g]:grp.start[g] + length]
    slot = layout.owner[rows]
    seg = layout.segment[slot]
    r = np.arange(length)
    first = np.array([np.flatnonzero(layout.segment == x)[0] for x in seg])
    left = slot - first
    right = np.array([np.flatnonzero(layout.segment == x)[-1]
                      for x in seg]) - slot
    assert (left >= np.minimum(window // 4, r)).all()
    assert (right >= np.minimum(window // 4, length - 1 - r)).all()
    np.testing.assert_array_equal(layout.rank[first], want[owned_by])


def test_eval_layout_padding_and_window_larger_than_chunk():
  """Groups that fill chunks exactly need no padding; a window that cannot
  fit a chunk is refused; overlapping windows hold an utterance once per
  window but once among the chunk's utterances."""
  grp = groups.Groups.of(random_split([4, 4, 2, 2, 4], seed=1))
  layout = groups.EvalLayout.of(grp, 4, 4)
  assert layout.padding() == 0.0 and len(layout.rows) == 16
  # 3 + 3 + 3: the second group does not fit the rest of the first chunk.
  grp = groups.Groups.of(random_split([3, 3, 3], seed=2))
  layout = groups.EvalLayout.of(grp, 4, 4)
  assert layout.padding() == pytest.approx(3 / 12)
  with pytest.raises(ValueError, match="exceeds"):
    groups.EvalLayout.of(grp, 5, 4)
  # One group of 8 with W = 4: windows at 0, 2, 4 (12 slots), 8 utterances.
  grp = groups.Groups.of(random_split([8], seed=3))
  layout = groups.EvalLayout.of(grp, 4, 8)
  assert layout.padding() == 0.0 and (layout.index != PAD).sum() == 12
  # Per slot: chunks of 8 slots, the first with two windows, the second
  # with the third (12 slots of 16); the padding is counted over slots.
  layout = groups.EvalLayout.of(grp, 4, 8, per_slot=True)
  assert layout.slots == 8 and len(layout.index) == 16
  assert layout.padding() == pytest.approx(4 / 16)
  # Groups that each fit a window: as many slots as utterances (3 + 4 + 1,
  # then 4 + 3).
  grp = groups.Groups.of(random_split([3, 4, 1, 4, 3], seed=4))
  layout = groups.EvalLayout.of(grp, 4, 8, per_slot=True)
  assert len(layout.index) == len(layout.rows) == 16
  assert layout.padding() == pytest.approx(1 / 16)
  np.testing.assert_array_equal(layout.index != PAD, layout.rows != PAD)


def test_context_window_and_train_steps():
  """W is 1 without a context module; steps = ceil(N / batch)."""
  class Config:
    context_window, context_layers = 7, 2
  assert groups.context_window(Config) == 7
  Config.context_layers = 0
  assert groups.context_window(Config) == 1
  assert [groups.train_steps(n, 8) for n in (1, 8, 9, 16, 17)] == [
      1, 1, 2, 2, 3]
