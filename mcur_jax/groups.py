"""Groups and windows: which utterances the model sees together (DESIGN sections 1 and 7).

A group is a video (MOSI/MOSEI) or a dialogue (IEMOCAP). Utterances are
predicted in the context of their group, never across groups or splits. A
window is a run of at most W = `context_window` consecutive utterances of
one group; the context module reads within a window only.

* `Groups.of(split)`: per group, the split's row indices in position order
  (the index arrays into the utterance table), each row's rank in its group
  and its speaker's rank of first appearance in the group.
* Training (`TrainTables`, `train_plan`): every epoch each group longer
  than W is cut into windows at a random offset (so no utterance always sits
  at a window edge); the windows of all groups are shuffled and laid end to
  end, and the stream is cut into steps of at most `batch_size` utterances.
  A step is a flat batch of utterances with a window id ("segment") each;
  the context reads within the same segment, so a step holds many windows
  without padding between them. A window that would straddle two steps is
  cut there (one more moving cut point). The epoch's padding, spread evenly
  over its steps, is `steps * batch_size - N` positions.
  Everything is a pure function of a PRNG key with fixed shapes, so it runs
  inside the compiled epoch, keyed by (seed, epoch).
* Evaluation (`EvalLayout`): each group of at most W utterances is one
  window; a longer one gets windows of W every W/2 utterances, and each
  utterance is predicted by the window whose centre is nearest to it, so it
  is predicted exactly once, with context on both sides where its group has
  it. Windows are packed whole into chunks of the evaluation batch; a chunk
  holds each of its utterances once and its windows' slots gather them for
  the context. The per-utterance model runs once per utterance, or once per
  slot with window means (`model.MCUR`), and a chunk's sizes follow that
  cost (`EvalLayout.of`).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from mcur_jax import data as data_lib

# Segment id of a padding position (no window).
PAD = -1


@dataclasses.dataclass(frozen=True)
class Groups:
  """The group structure of one split."""

  # [N] the split's rows, group after group, each group in position order.
  order: np.ndarray
  # [G] offset of each group's first row in `order`, and its length.
  start: np.ndarray
  length: np.ndarray
  # [N] per row: its rank in its group (0 = first) and its speaker's rank
  # of first appearance in the group (0 = who speaks first).
  rank: np.ndarray
  speaker: np.ndarray

  @classmethod
  def of(cls, split: data_lib.Split) -> "Groups":
    n = len(split)
    order = np.lexsort((np.arange(n), split.position, split.group_id))
    ordered = split.group_id[order]
    first = np.r_[True, ordered[1:] != ordered[:-1]] if n else np.zeros(0, bool)
    start = np.flatnonzero(first)
    length = np.diff(np.r_[start, n])
    rank = np.empty(n, np.int32)
    speaker = np.empty(n, np.int32)
    for s, l in zip(start, length):
      rows = order[s:s + l]
      rank[rows] = np.arange(l)
      _, first_seen, inverse = np.unique(split.speaker[rows],
                                         return_index=True, return_inverse=True)
      speaker[rows] = np.argsort(np.argsort(first_seen))[inverse]
    return cls(order=order, start=start, length=length, rank=rank,
               speaker=speaker)

  def __len__(self) -> int:
    return len(self.start)

  def index_arrays(self) -> list[np.ndarray]:
    """Per group, its rows in position order."""
    return [self.order[s:s + l] for s, l in zip(self.start, self.length)]


def context_window(config) -> int:
  """The window W of a config: `context_window`, or single utterances
  without a context module (`context_layers` 0: the per-utterance model,
  trained on batches of random utterances as before context existed)."""
  return config.context_window if config.context_layers else 1


def train_steps(num_rows: int, batch_size: int) -> int:
  """Steps of a training epoch: every utterance once, at most `batch_size`
  per step."""
  return -(-num_rows // batch_size)


@dataclasses.dataclass(frozen=True)
class TrainTables:
  """The static arrays `train_plan` draws an epoch from (NumPy; put them on
  the devices as they are)."""

  order: np.ndarray   # [N] Groups.order
  start: np.ndarray   # [G] Groups.start
  length: np.ndarray  # [G] Groups.length
  # [S] window slots: the group of each, and its index k in the group. A
  # group of L > W utterances has ceil(L / W) + 1 slots (a cut at offset o
  # gives windows [kW - o, (k + 1)W - o) clipped to the group, some empty).
  slot_group: np.ndarray
  slot_k: np.ndarray

  @classmethod
  def of(cls, groups: Groups, window: int) -> "TrainTables":
    slots = -(-groups.length // window) + (groups.length > window)
    return cls(order=groups.order.astype(np.int32),
               start=groups.start.astype(np.int32),
               length=groups.length.astype(np.int32),
               slot_group=np.repeat(np.arange(len(groups)), slots
                                    ).astype(np.int32),
               slot_k=np.concatenate([np.arange(k) for k in slots]
                                     ).astype(np.int32))

  def arrays(self) -> dict[str, np.ndarray]:
    return dataclasses.asdict(self)


def train_plan(key: jax.Array, tables: dict, window: int, steps: int,
               batch_size: int) -> dict[str, jax.Array]:
  """One epoch's batches (see the module docstring), from `key`.

  Args:
    key: PRNG key of (seed, epoch).
    tables: `TrainTables.arrays()` (as device arrays).
    window: W.
    steps, batch_size: the epoch's shape; steps * batch_size >= N.

  Returns:
    [steps, batch_size] arrays: "index" (row of the utterance table, 0 at
    padding), "segment" (window id, unique in the epoch; PAD at padding),
    "group" (group id) and "rank" (position in the group).
  """
  n = tables["order"].shape[0]
  num_slots = tables["slot_group"].shape[0]
  offset_key, order_key = jax.random.split(key)
  length = tables["length"]
  offset = jnp.where(length > window, jax.random.randint(
      offset_key, length.shape, 0, window), 0)
  group = tables["slot_group"]
  first = tables["slot_k"] * window - offset[group]
  begin = jnp.clip(first, 0, length[group])
  size = jnp.clip(first + window, 0, length[group]) - begin
  perm = jax.random.permutation(order_key, num_slots)
  ends = jnp.cumsum(size[perm])  # ends[-1] == n
  # Step j takes stream positions [floor(j n / steps), floor((j+1) n / steps)):
  # the padding is spread evenly over the steps.
  j = jnp.arange(steps)[:, None]
  lo, hi = j * n // steps, (j + 1) * n // steps
  position = lo + jnp.arange(batch_size)[None]
  real = position < hi
  w = jnp.minimum(jnp.searchsorted(ends, position, side="right"),
                  num_slots - 1)
  slot = perm[w]
  g = group[slot]
  rank = begin[slot] + position - (ends[w] - size[slot])
  row = tables["order"][jnp.clip(tables["start"][g] + rank, 0, n - 1)]
  return {"index": jnp.where(real, row, 0),
          "segment": jnp.where(real, w, PAD).astype(jnp.int32),
          "group": jnp.where(real, g, PAD).astype(jnp.int32),
          "rank": jnp.where(real, rank, 0).astype(jnp.int32)}


def eval_windows(length: int, window: int) -> tuple[np.ndarray, np.ndarray]:
  """(starts of the windows of a group of `length`, the window that
  predicts each utterance): windows of `window` every window // 2, each
  utterance owned by the window whose centre is nearest (the earlier on a
  tie)."""
  if length <= window:
    return np.zeros(1, np.int64), np.zeros(length, np.int64)
  stride = max(window // 2, 1)
  starts = np.unique(np.r_[np.arange(0, length - window, stride),
                           length - window])
  centre = starts + (window - 1) / 2
  owner = np.argmin(np.abs(np.arange(length)[:, None] - centre[None]), 1)
  return starts, owner


@dataclasses.dataclass(frozen=True)
class EvalLayout:
  """Every utterance of a split in its evaluation window, in chunks.

  A chunk holds up to `utterances` utterances (each once) and up to `slots`
  window slots (the context module's positions: an utterance of a long
  group sits in every window that covers it). Windows are packed whole into
  chunks.
  """

  utterances: int
  slots: int
  # The per-utterance model runs once per slot (window means), not once
  # per utterance: the slots are the positions that cost.
  per_slot: bool
  # [C * utterances] the split row of each utterance position (PAD at
  # padding).
  rows: np.ndarray
  # [C * slots] per window slot: the split row it holds (PAD at padding),
  # the position of that row among its chunk's utterances (0 at padding),
  # its window id (PAD at padding), the row's rank in its group and its
  # speaker rank.
  index: np.ndarray
  local: np.ndarray
  segment: np.ndarray
  rank: np.ndarray
  speaker: np.ndarray
  # [N] the slot whose prediction is row i's.
  owner: np.ndarray

  @classmethod
  def of(cls, groups: Groups, window: int, chunk: int,
         per_slot: bool = False) -> "EvalLayout":
    """The layout of `groups` for windows of `window` in chunks of `chunk`
    utterances and `chunk` slots; twice as many slots when windows may
    overlap (W > 1) and the per-utterance model runs once per utterance, so
    that a chunk of overlapping windows still fills its utterances. With
    `per_slot` (window means: every slot runs the whole model) a chunk is
    `chunk` slots, which then hold fewer distinct utterances where windows
    overlap (IEMOCAP's validation: 3 chunks of 512 slots instead of 2 of
    1,024, a quarter less work); without overlap (every MOSI video fits
    its window) half the slots of 2 * chunk would be padding."""
    if window > chunk:
      raise ValueError(f"context_window {window} exceeds the evaluation "
                       f"chunk of {chunk} utterances (eval_batch_size)")
    slots = chunk if window == 1 or per_slot else 2 * chunk
    chunks = []  # Per chunk: (its rows, its slots' (row, window id)).
    windows = 0
    owner = np.zeros(len(groups.order), np.int64)
    for rows in groups.index_arrays():
      starts, owned_by = eval_windows(len(rows), window)
      for w, s in enumerate(starts):
        part = rows[s:s + window]
        seen, taken = chunks[-1] if chunks else ({}, [])
        new = sum(r not in seen for r in part)
        if (not chunks or len(seen) + new > chunk
            or len(taken) + len(part) > slots):
          chunks.append(({}, []))
        seen, taken = chunks[-1]
        for r in part:
          seen.setdefault(r, len(seen))
        mine = owned_by[s:s + len(part)] == w
        owner[part[mine]] = ((len(chunks) - 1) * slots + len(taken)
                             + np.flatnonzero(mine))
        taken.extend((r, windows) for r in part)
        windows += 1
    n = max(len(chunks), 1)
    out = {k: np.full(n * slots, PAD, np.int32)
           for k in ("index", "local", "segment", "rank", "speaker")}
    all_rows = np.full(n * chunk, PAD, np.int32)
    for c, (seen, taken) in enumerate(chunks):
      all_rows[c * chunk:c * chunk + len(seen)] = list(seen)
      if taken:
        row, segment = np.array(taken).T
        at = slice(c * slots, c * slots + len(taken))
        out["index"][at] = row
        out["local"][at] = [seen[r] for r in row]
        out["segment"][at] = segment
        out["rank"][at] = groups.rank[row]
        out["speaker"][at] = groups.speaker[row]
    real = out["index"] >= 0
    for k in ("local", "rank", "speaker"):
      out[k] = np.where(real, out[k], 0).astype(np.int32)
    return cls(utterances=chunk, slots=slots, per_slot=per_slot,
               rows=all_rows, owner=owner, **out)

  def padding(self) -> float:
    """Fraction of the positions that cost (the slots with `per_slot`, else
    the utterance positions) that hold no utterance."""
    return float(np.mean((self.index if self.per_slot else self.rows) < 0))
