"""What the format readers share besides `mcur_jax.utterance_rows`: dataset
definitions, the NaN policies, split files, pickles, required flags."""

import json
import pickle

import numpy as np

from mcur_jax import schema

# Dataset name -> task and class names (None for regression in [-3, 3]).
DATASETS = {
    "mosi": ("regression", None),
    "mosei": ("regression", None),
    "iemocap4": ("classification", ["happy", "sad", "neutral", "angry"]),
    "iemocap6": ("classification", ["happy", "sad", "neutral", "angry",
                                    "excited", "frustrated"]),
}
# What to do with a feature vector holding NaN or inf: fail naming it
# ("error"), or zero it and mark the modality absent for that utterance.
NAN_POLICIES = ("error", "zero")


TASKS = ("regression", "classification")


def dataset_task(dataset: str, task: str | None = None,
                 classes: str | None = None):
  """(task, class names or None) of a dataset: one of the field's
  (DATASETS) by its name, or one of your own (an npz file, `--format npz`)
  by `classes` ("neg,neu,pos": classification) or `task` "regression"
  (scores in writer.LABEL_RANGE). DataError naming the flag otherwise."""
  names = None
  if classes is not None:
    names = [c.strip() for c in classes.split(",")]
    if len(names) < 2 or not all(names) or len(set(names)) < len(names):
      raise schema.DataError("command line", "--classes", f"{classes!r}: "
                             "give two or more distinct names, comma-separated")
  task = task or ("classification" if names else None)
  if task is not None and task not in TASKS:
    raise schema.DataError("command line", "--task", f"{task!r}, not one of "
                           f"{TASKS}")
  if dataset in DATASETS:
    known, known_names = DATASETS[dataset]
    if (task and task != known) or (names and names != known_names):
      raise schema.DataError(
          "command line", "--classes" if names else "--task",
          f"{dataset} is {known}" + (f" over {','.join(known_names)}"
                                     if known_names else "")
          + "; a dataset of your own needs a name of its own")
    return DATASETS[dataset]
  if task is None:
    raise schema.DataError(
        "command line", "--dataset", f"unknown {dataset!r} (known: "
        f"{', '.join(DATASETS)}); a dataset of your own (--format npz) "
        "needs --classes NAME,NAME,... (classification) or --task regression")
  if task == "classification" and names is None:
    raise schema.DataError("command line", "--classes", "missing: a "
                           "classification dataset of your own names its "
                           "classes, in the order of their indices")
  if task == "regression" and names is not None:
    raise schema.DataError("command line", "--classes", "given with --task "
                           "regression: scores have no classes")
  return task, names


# What unpickling a damaged or foreign file raises: pickle's own error and
# what its opcodes raise on a truncated stream or bad arguments (the pickle
# docs list AttributeError, EOFError, ImportError and IndexError "but not
# necessarily limited to"; a damaged length asks for a huge buffer).
PICKLE_ERRORS = (pickle.UnpicklingError, EOFError, AttributeError,
                 ImportError, IndexError, KeyError, TypeError, ValueError,
                 OverflowError, MemoryError)


def load_pickle(path: str, flag: str, **kwargs):
  """Unpickles the file `path` given with command-line `flag`; DataError if
  it is unreadable or not a pickle. Only load pickles you trust: unpickling
  can run code."""
  try:
    with open(path, "rb") as f:
      return pickle.load(f, **kwargs)
  except OSError as e:
    raise schema.DataError(path, flag, f"unreadable ({e.strerror})") from None
  except PICKLE_ERRORS as e:
    raise schema.DataError(path, "pickle", f"not a readable pickle ({e!r})"
                           ) from None


def require(value, fmt: str, flag: str, usage: str):
  """`value` of a command-line flag the format needs; DataError if unset."""
  if not value:
    raise schema.DataError("command line", flag,
                           f"the {fmt} format needs {flag} {usage}")
  return value


def read_split_file(path: str) -> dict[str, str]:
  """`{"train": [group ids], "valid": [...], "test": [...]}` -> group -> split."""
  try:
    with open(path) as f:
      raw = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise schema.DataError(path, "split_file", f"unreadable ({e})") from None
  if not isinstance(raw, dict):
    raise schema.DataError(path, "split_file", "not a JSON object")
  unknown = sorted(set(raw) - set(schema.SPLITS))
  if unknown:
    raise schema.DataError(path, "split_file", f"unknown split names "
                           f"{unknown} (known: {', '.join(schema.SPLITS)})")
  assignment = {}
  for split in schema.SPLITS:
    groups = raw.get(split)
    if not isinstance(groups, list) or not groups:
      raise schema.DataError(path, split, "missing or not a non-empty list "
                             "of group ids")
    for g in groups:
      if not isinstance(g, (str, int)) or isinstance(g, bool):
        raise schema.DataError(path, split, f"{g!r} is not a group id (a "
                               "string or an integer)")
      if str(g) in assignment:
        raise schema.DataError(path, split, f"group {str(g)!r} is also in "
                               f"{assignment[str(g)]!r}")
      assignment[str(g)] = split
  for key in sorted(raw.keys() - set(schema.SPLITS)):
    raise schema.DataError(path, key, "unknown split (use train/valid/test)")
  return assignment


def split_from_file(path: str, group_id: np.ndarray) -> np.ndarray:
  """The split of each row, from a split file that must name every group."""
  assignment = read_split_file(path)
  present = set(group_id.tolist())
  unlisted = sorted(present - assignment.keys())
  if unlisted:
    raise schema.DataError(path, "split_file", f"{len(unlisted)} groups of "
                           f"the data are in no split, e.g. {unlisted[0]!r}")
  unknown = sorted(assignment.keys() - present)
  if unknown:
    raise schema.DataError(path, "split_file", f"{len(unknown)} groups are "
                           f"not in the data, e.g. {unknown[0]!r} (or have "
                           "no utterance left: all unlabelled for the task)")
  return np.array([assignment[g] for g in group_id.tolist()])
