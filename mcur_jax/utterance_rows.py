"""Raw utterance rows from columns, and their checks.

What `data_prep`'s format readers and `predict`'s npz input share: ids as
text, positions within a group, the NaN policy on feature matrices, the
checks that tell rows apart, and the raw `data.Split` they make. Every
error is a `schema.DataError` naming the file and field.
"""

import tokenize

import numpy as np

from mcur_jax import data
from mcur_jax import schema

# What `np.lib.format.read_array` raises on a damaged .npy: ValueError (bad
# magic, header or size), EOFError (cut short), and from parsing the header
# literal SyntaxError, TypeError (keys of mixed types) or TokenError (its
# fallback for Python 2 headers).
NPY_ERRORS = (ValueError, EOFError, SyntaxError, TypeError,
              tokenize.TokenError)


def text(value, file, field: str) -> str:
  """An id or name: a str, or bytes decoded as UTF-8; DataError otherwise."""
  if isinstance(value, bytes):
    try:
      return value.decode()
    except UnicodeDecodeError:
      raise schema.DataError(file, field, f"{value!r} is not UTF-8 text"
                             ) from None
  if not isinstance(value, str):
    raise schema.DataError(file, field, f"{value!r} is a "
                           f"{type(value).__name__}, expected a string")
  return value


def text_column(values: np.ndarray, file, field: str) -> np.ndarray:
  """A 1-D array of ids as a str array: NumPy str as is, integers in decimal,
  bytes (or an object array of str and bytes) through `text`."""
  if values.dtype.kind in "Uiu":
    return values.astype(str)
  return np.array([text(v, file, field) for v in values.tolist()], str)


def positions_in_group(group_id: np.ndarray, order_key: np.ndarray
                       ) -> np.ndarray:
  """0-based rank of each row within its group, ordered by `order_key`
  (clip number, utterance suffix, or row index)."""
  order = np.lexsort((order_key, group_id))
  sorted_groups = group_id[order]
  starts = np.r_[True, sorted_groups[1:] != sorted_groups[:-1]]
  first = np.maximum.accumulate(np.where(starts, np.arange(len(order)), 0))
  positions = np.empty(len(order), np.int64)
  positions[order] = np.arange(len(order)) - first
  return positions


def apply_nan_policy(matrix: np.ndarray, available: np.ndarray, policy: str,
                     file, field: str, ids=None,
                     remedy: str = "see --nan_policy"):
  """Enforces the NaN policy on the rows of `matrix` marked available.

  `file` is the path the matrix came from, or a sequence of one path per row.
  Returns (matrix, available, notes): with policy "zero", non-finite rows
  become zeros marked absent and `notes` says how many; with "error", the
  first such row raises DataError naming its file, `field` and utterance,
  and ending with `remedy`: what the caller's user can do about it (the
  converters' --nan_policy; `predict`, which has no such flag, says how to
  mark the rows absent).
  """
  bad = available & ~np.isfinite(matrix).all(axis=1)
  if not bad.any():
    return matrix, available, []
  i = int(np.flatnonzero(bad)[0])
  if policy == "error":
    who = f"utterance {str(ids[i])!r}" if ids is not None else f"row {i}"
    raise schema.DataError(file if isinstance(file, str) else file[i], field,
                           f"NaN or inf in {int(bad.sum())} vectors, first at "
                           f"{who} (a value beyond float32's range reads as "
                           f"inf; {remedy})")
  matrix = np.where(bad[:, None], 0, matrix).astype(np.float32)
  note = (f"{field}: {int(bad.sum())} vectors with NaN/inf zeroed and marked "
          "absent (--nan_policy zero)")
  return matrix, available & ~bad, [note]


def check_ids(rows: data.Split, origin: dict[str, str]) -> None:
  """Raises `schema.DataError` for rows that cannot be told apart: none at
  all, two with one utt_id, or two at one position of a group (positions
  order a group's utterances for the context). `origin` names the file of
  each field (`utt_id` required)."""
  if len(rows) == 0:
    raise schema.DataError(origin["utt_id"], "utt_id", "no utterances found")
  # Positions first: a converter may derive missing ids from group and
  # position, so a repeated position would read as a repeated id.
  order = np.lexsort((rows.position, rows.group_id))
  group, position = rows.group_id[order], rows.position[order]
  twice = np.flatnonzero((group[1:] == group[:-1])
                         & (position[1:] == position[:-1]))
  if len(twice):
    i, j = order[twice[0]], order[twice[0] + 1]
    ids = (str(rows.utt_id[i]), str(rows.utt_id[j]))
    which = f"{ids[0]!r} and {ids[1]!r}" if ids[0] != ids[1] else "two"
    raise schema.DataError(
        origin.get("position", origin["utt_id"]), "position",
        f"{len(twice)} utterances share their group's position with another, "
        f"e.g. {which} at position {rows.position[i]} of group "
        f"{str(rows.group_id[i])!r} (positions order a group's utterances "
        "for the context)")
  ids, counts = np.unique(rows.utt_id, return_counts=True)
  if (counts > 1).any():
    dup = ids[counts > 1]
    raise schema.DataError(origin["utt_id"], "utt_id",
                           f"{len(dup)} duplicate ids, e.g. {str(dup[0])!r}")


def make_rows(*, utt_id, group_id, position, label, features, available,
              speaker=None, session=None, extras=None) -> data.Split:
  """A raw `data.Split` from columns; speaker '' and session 0 by default."""
  n = len(utt_id)
  return data.Split(
      features={m: np.asarray(features[m], np.float32)
                for m in schema.MODALITIES},
      available=np.asarray(available, bool), label=np.asarray(label),
      utt_id=np.asarray(utt_id, str), group_id=np.asarray(group_id, str),
      speaker=np.asarray(speaker if speaker is not None else [""] * n, str),
      position=np.asarray(position, np.int64),
      session=np.asarray(session if session is not None else np.zeros(n),
                         np.int64),
      extras={k: np.asarray(v, np.int64) for k, v in (extras or {}).items()})
