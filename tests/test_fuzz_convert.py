"""Fuzzing every converter's input (hypothesis): `data_prep.convert.main`.

Each variant below is a small valid input of one format, written once per
module; each example copies it, damages it as hypothesis draws, and runs
the conversion in-process. The outcome must be clean: status 2 with exactly
one stderr line `error: FILE: FIELD: problem` naming a file of the input,
and neither the output directory nor its temporary sibling left behind
(`tests.cli.assert_failed_cleanly`); or, where the test allows it (the
damage may leave a valid input, e.g. a flip inside a feature value), status
0 with an output that `data_prep.inspect` verifies. Never a traceback,
another status, or a hang.
"""

import csv
import io
import os
import pathlib
import pickle
import shutil
import tempfile

import numpy as np
import pytest
from hypothesis import assume
from hypothesis import event
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from data_prep import convert
from data_prep import inspect
from data_prep.formats import gcnet
from tests import cli
from tests import fuzz_inputs
from tests.fuzz_inputs import node_at
from tests.fuzz_inputs import node_paths
from tests import poria_files
from tests import test_format_gcnet
from tests import test_format_npz

FUZZ = fuzz_inputs.FUZZ
# A warning would be a second line on the command line's stderr: fail.
pytestmark = pytest.mark.filterwarnings("error")
# MMSA pickle: frames per utterance, feature dims, videos per split (two
# clips each).
MMSA_FRAMES = 6
MMSA_DIMS = {"text": 4, "audio": 3, "vision": 5}
MMSA_VIDEOS = {"train": 3, "valid": 2, "test": 2}


def _poria(folder: pathlib.Path) -> None:
  poria_files.write(folder / "csv", videos=6, per_video=3)


def _gcnet(dataset: str):
  def build(folder: pathlib.Path) -> None:
    labels = test_format_gcnet._tiny_labels(dataset)
    table = test_format_gcnet._table(dataset, labels,
                                     test_format_gcnet.TINY_DIMS,
                                     video_absent=0)
    gcnet.write_layout(table, folder)
  return build


def _mmsa_content(seed: int = 0) -> dict:
  """A small MMSA pickle's content: ids, labels, BERT mask, lengths."""
  rng = np.random.default_rng(seed)
  content = {}
  for split, videos in MMSA_VIDEOS.items():
    ids = [f"{split}{v}$_${c}" for v in range(videos) for c in (1, 2)]
    n, t = len(ids), MMSA_FRAMES
    tokens = np.zeros((n, 3, t), np.float32)
    tokens[:, 1] = np.arange(t) < rng.integers(1, t + 1, n)[:, None]
    part = {"id": np.array(ids, object), "text_bert": tokens,
            "regression_labels": rng.uniform(-3, 3, n).astype(np.float32),
            "text": rng.normal(size=(n, t, MMSA_DIMS["text"])).astype(
                np.float32)}
    for key in ("audio", "vision"):
      lengths = rng.integers(1, t + 1, n)
      frames = rng.normal(size=(n, t, MMSA_DIMS[key])).astype(np.float32)
      frames[np.arange(t) >= lengths[:, None]] = 0
      part[key], part[f"{key}_lengths"] = frames, lengths
    content[split] = part
  return content


def _mmsa(folder: pathlib.Path) -> None:
  folder.mkdir()
  with open(folder / "data.pkl", "wb") as f:
    pickle.dump(_mmsa_content(), f)


def _npz_columns(dataset: str) -> dict[str, np.ndarray]:
  """A valid npz content with every optional key, ids as bytes."""
  columns = (test_format_npz._iemocap_columns()
             if dataset.startswith("iemocap") else test_format_npz._columns())
  n = len(columns["label"])
  rng = np.random.default_rng(1)
  columns.update(utt_id=np.array([f"utt{i}" for i in range(n)], "S"),
                 speaker=np.where(np.arange(n) % 2, "F", "M"),
                 available_audio=rng.random(n) < 0.8)
  return columns


def _npz(dataset: str):
  def build(folder: pathlib.Path) -> None:
    folder.mkdir()
    np.savez(folder / "data.npz", **_npz_columns(dataset))
  return build


# Variant -> (writes a valid input into a folder, the convert arguments for
# an input folder).
VARIANTS = {
    "poria": (_poria, lambda d: ["--format", "poria", "--dataset", "mosi",
                                 "--input", f"{d}/csv"]),
    "poria+labels": (_poria, lambda d: [
        "--format", "poria", "--dataset", "mosi", "--input", f"{d}/csv",
        "--labels", f"{d}/labels.pkl"]),
    "gcnet-mosi": (_gcnet("mosi"), lambda d: [
        "--format", "gcnet", "--dataset", "mosi",
        "--labels", f"{d}/mosi_labels.pkl", "--features_dir",
        f"{d}/features"]),
    "gcnet-iemocap4": (_gcnet("iemocap4"), lambda d: [
        "--format", "gcnet", "--dataset", "iemocap4",
        "--labels", f"{d}/iemocap4_labels.pkl", "--features_dir",
        f"{d}/features"]),
    "mmsa": (_mmsa, lambda d: ["--format", "mmsa", "--dataset", "mosi",
                               "--input", f"{d}/data.pkl"]),
    "npz-mosi": (_npz("mosi"), lambda d: [
        "--format", "npz", "--dataset", "mosi", "--input",
        f"{d}/data.npz"]),
    "npz-iemocap4": (_npz("iemocap4"), lambda d: [
        "--format", "npz", "--dataset", "iemocap4", "--input",
        f"{d}/data.npz"]),
}
# The label pickle of a variant, relative to its input folder.
LABEL_PICKLES = {"poria+labels": "labels.pkl",
                 "gcnet-mosi": "mosi_labels.pkl",
                 "gcnet-iemocap4": "iemocap4_labels.pkl"}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
  """Variant -> its valid input folder, written once and never changed."""
  root = tmp_path_factory.mktemp("pristine")
  folders = {}
  for name, (build, _) in VARIANTS.items():
    build(root / name)
    folders[name] = root / name
  return folders


def _files(folder: pathlib.Path, suffix: str = "") -> list[str]:
  """The files under `folder` ending in `suffix`, relative to it."""
  return sorted(str(p.relative_to(folder))
                for p in folder.rglob(f"*{suffix}") if p.is_file())


def _is_read(variant: str, name: str) -> bool:
  """Whether converting `variant` reads its input file `name`: all but the
  label pickle beside the Poria CSVs without --labels, and the faces of the
  other speaker in an IEMOCAP video folder `<utt>/compress_<S>.npy` (`<utt>`
  ends in `_<speaker><position>`)."""
  if variant == "poria":
    return name != "labels.pkl"
  folder, file = os.path.split(name)
  if not file.startswith("compress_"):
    return True
  speaker = os.path.basename(folder).rsplit("_", 1)[1][0]
  return file == f"compress_{speaker}.npy"


def _convert(capsys, pristine, variant: str, changes: dict[str, bytes],
             allowed=(2,)) -> None:
  """Converts a scratch copy of `variant`'s input with `changes` (file
  relative to the input -> new content); checks that the status is in
  `allowed` and that the outcome is clean."""
  root = pathlib.Path(tempfile.mkdtemp())
  try:
    source, out = root / "input", root / "out"
    shutil.copytree(pristine[variant], source)
    for name, content in changes.items():
      (source / name).write_bytes(content)
    capsys.readouterr()
    with fuzz_inputs.no_hang():
      status = convert.main([*VARIANTS[variant][1](source), "--out",
                             str(out)])
    assert status in allowed, (status, capsys.readouterr())
    event(f"exit {status}")
    if status == 2:
      line = cli.assert_failed_cleanly(capsys, out)
      event(f"error in field {fuzz_inputs.parse_error(line, source)[1]}")
    else:
      with fuzz_inputs.no_hang():
        inspect.verify(str(out))
      assert sorted(p.name for p in root.iterdir()) == ["input", "out"], (
          "temporary output left")
  finally:
    shutil.rmtree(root)


def _bad_text():
  """Ids that are not valid text: bytes that do not decode as UTF-8, or a
  str with a lone surrogate (what undecodable bytes become under
  surrogateescape)."""
  return (st.binary(max_size=6).map(lambda b: b + b"\xff")
          | st.text(max_size=4).map(lambda s: s + "\udcff"))


@FUZZ
@given(variant=st.sampled_from(sorted(VARIANTS)),
       how=st.sampled_from(("empty", "truncate", "flip")), data=st.data())
def test_damaged_input_files(pristine, capsys, variant, how, data):
  """Any input file emptied, cut short, or with 1..4 bytes changed. An
  empty file is always an error, and so is a truncated pickle (it loses
  its STOP opcode), .npy (its data) or .npz (its zip directory); a cut CSV
  file may still parse, and a changed byte may land in a value, so those
  may also convert (to a valid output).

  Pickles are not byte-flipped: a flipped byte in a pickled NumPy array's
  state crashes NumPy itself (a segfault in `ndarray.__setstate__` when an
  object array's shape exceeds its item list, NumPy 2.4), beyond any
  reader's reach; pickles are trusted input (unpickling runs code).
  """
  files = [f for f in _files(pristine[variant]) if _is_read(variant, f)
           and not (how == "flip" and f.endswith(".pkl"))]
  assume(files)  # mmsa has nothing but its pickle
  name = data.draw(st.sampled_from(files), label="file")
  content = bytearray((pristine[variant] / name).read_bytes())
  allowed = (2,)
  if how == "empty":
    content = b""
  elif how == "truncate":
    content = content[:data.draw(st.integers(0, len(content) - 1),
                                 label="new size")]
    if name.endswith(".csv"):
      allowed = (0, 2)
  else:
    flips = data.draw(st.dictionaries(st.integers(0, len(content) - 1),
                                      st.integers(1, 255), min_size=1,
                                      max_size=4), label="offset -> xor mask")
    for offset, mask in flips.items():
      content[offset] ^= mask
    allowed = (0, 2)
  _convert(capsys, pristine, variant, {name: bytes(content)}, allowed)


def _read_rows(path) -> list[list[str]]:
  with open(path, newline="") as f:
    return list(csv.reader(f))


def _csv(rows) -> bytes:
  """`rows` as CSV text, every field quoted (as the Poria files are)."""
  text = io.StringIO(newline="")
  csv.writer(text, quoting=csv.QUOTE_ALL).writerows(rows)
  return text.getvalue().encode()


def _non_numeric(text: str) -> bool:
  try:
    np.array([text], np.float64)
  except ValueError:
    return True
  return False


@FUZZ
@given(how=st.sampled_from(("drop field", "add field", "not a number",
                            "drop row", "not UTF-8", "new id")),
       labels=st.booleans(), data=st.data())
def test_poria_csv_rows(pristine, capsys, how, labels, data):
  """A Poria CSV row that loses or gains a field, a feature or index cell
  that is no number, a feature or index row dropped, or bytes that are not
  UTF-8: always an error. A transcripts.csv row dropped or an utterance id
  replaced by any text may still convert (the ids are only names)."""
  variant = "poria+labels" if labels else "poria"
  csv_files = _files(pristine[variant], ".csv")
  if how == "new id":
    name = "csv/transcripts.csv"
  elif how == "drop row":
    name = data.draw(st.sampled_from(csv_files), label="file")
  else:
    name = data.draw(st.sampled_from(
        csv_files if how in ("drop field", "add field", "not UTF-8") else
        [f for f in csv_files if not f.endswith("transcripts.csv")]),
                     label="file")
  path = pristine[variant] / name
  allowed = (2,)
  if how == "not UTF-8":
    content = path.read_bytes()
    at = data.draw(st.integers(0, len(content)), label="offset")
    content = content[:at] + b"\xff\xfe" + content[at:]
  else:
    rows = _read_rows(path)
    r = data.draw(st.integers(0, len(rows) - 1), label="row")
    row = rows[r]
    if how == "drop field":
      del row[data.draw(st.integers(0, len(row) - 1), label="field")]
    elif how == "add field":
      row.insert(data.draw(st.integers(0, len(row)), label="at"),
                 data.draw(st.text(max_size=6), label="value"))
    elif how == "not a number":
      row[data.draw(st.integers(0, len(row) - 1), label="field")] = (
          data.draw(st.text(max_size=6).filter(_non_numeric), label="value"))
    elif how == "drop row":
      del rows[r]
      allowed = (0, 2) if name.endswith("transcripts.csv") else (2,)
    else:
      row[0] = data.draw(st.text(max_size=12), label="utterance id")
      allowed = (0, 2)
    content = _csv(rows)
  _convert(capsys, pristine, variant, {name: content}, allowed)


_SCALARS = (st.none() | st.booleans() | st.integers() | st.floats()
            | st.text(max_size=6) | st.binary(max_size=6))
_ARRAYS = hnp.arrays(
    dtype=st.sampled_from([np.float32, np.int64, np.bool_, np.complex64,
                           np.dtype("<U3"), np.dtype("S3")]),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=3))
# Python values of every type a pickle may hold where another is expected.
_FOREIGN = st.recursive(
    _SCALARS | _ARRAYS,
    lambda inner: st.lists(inner, max_size=3) | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=4) | st.integers(), inner,
                      max_size=3)
    | st.frozensets(st.text(max_size=4) | st.integers(), max_size=3),
    max_leaves=6)


def _load(path):
  with open(path, "rb") as f:
    return pickle.load(f)


def _label_pickle_strict(draw, content):
  """A label pickle damage that must fail: the list replaced, a video's
  entry dropped from videoLabels or videoSpeakers, or an id that is not
  text."""
  how = draw(st.sampled_from(("root", "drop entry", "utterance id",
                              "video id")), label="how")
  ids = content[0]
  video = draw(st.sampled_from(sorted(ids)), label="video")
  if how == "root":
    return draw(_FOREIGN.filter(lambda v: not isinstance(v, (list, tuple))),
                label="not a list")
  if how == "drop entry":
    del content[draw(st.sampled_from((1, 2)), label="dict")][video]
  elif how == "utterance id":
    utts = ids[video]
    utts[draw(st.integers(0, len(utts) - 1), label="utterance")] = draw(
        _bad_text(), label="id")
  else:
    bad = draw(_bad_text(), label="id")
    for d in content[:4]:
      d[bad] = d.pop(video)
  return content


def _mmsa_strict(draw, content):
  """An MMSA pickle damage that must fail: the dict replaced, a split or a
  required key dropped, or an id that is not text."""
  how = draw(st.sampled_from(("root", "drop split", "drop key", "id")),
             label="how")
  split = draw(st.sampled_from(sorted(content)), label="split")
  if how == "root":
    return draw(_FOREIGN.filter(lambda v: not isinstance(v, dict)),
                label="not a dict")
  if how == "drop split":
    del content[split]
  elif how == "drop key":
    del content[split][draw(st.sampled_from(
        ("id", "regression_labels", "text", "audio", "vision")),
                            label="key")]
  else:
    ids = content[split]["id"]
    ids[draw(st.integers(0, len(ids) - 1), label="row")] = draw(
        _bad_text(), label="id")
  return content


@FUZZ
@given(variant=st.sampled_from(sorted(LABEL_PICKLES) + ["mmsa"]),
       how=st.sampled_from(("strict", "replace", "delete")), data=st.data())
def test_pickles_of_the_wrong_structure(pristine, capsys, variant, how,
                                        data):
  """A label pickle (gcnet, poria --labels) or MMSA pickle whose content is
  damaged: the strict damages (`_label_pickle_strict`, `_mmsa_strict`) must
  fail; any node replaced by a value of any type (containers, arrays of
  any dtype, bytes, NaN, huge ints) or deleted from its dict or list may
  still convert (a changed sentence or speaker, a dropped video), else it
  fails cleanly."""
  name = LABEL_PICKLES.get(variant, "data.pkl")
  content = _load(pristine[variant] / name)
  allowed = (0, 2)
  if how == "strict":
    content = (_mmsa_strict if variant == "mmsa" else _label_pickle_strict)(
        data.draw, content)
    allowed = (2,)
  else:
    node = data.draw(st.sampled_from(list(node_paths(content))[1:]),
                     label="path")
    parent = node_at(content, node[:-1])
    if how == "replace":
      parent[node[-1]] = data.draw(_FOREIGN, label="new value")
    else:
      del parent[node[-1]]
  _convert(capsys, pristine, variant, {name: pickle.dumps(content)},
           allowed)


# The npz keys the converter reads, with the dtype kinds it accepts.
_NPZ_KINDS = {
    **{m: "biuf" for m in ("audio", "text", "video", "label")},
    **{k: "USiu" for k in ("group_id", "utt_id", "speaker", "split")},
    **{k: "biu" for k in ("position", "session", "available_audio")},
}
_DTYPES = ("f2", "f4", "f8", "i1", "i8", "u2", "?", "c8", "U3", "S3",
           "M8[s]", "m8[s]", "V4", "O")
# The dtypes hypothesis can fill with random values.
_RANDOM_DTYPES = st.sampled_from([np.dtype(d) for d in _DTYPES
                                  if d not in ("V4", "O")])
# Keys whose loss fails a conversion: `audio` because `available_audio`
# marks it present (a missing modality key otherwise means "no such
# modality"), and `split` without which iemocap gets session folds.
_REQUIRED = {"npz-mosi": ("label", "group_id", "audio", "split"),
             "npz-iemocap4": ("label", "group_id", "audio")}


def _npz_strict(draw, columns, variant) -> None:
  """Damages a column (or drops a required one) so that it must fail."""
  how = draw(st.sampled_from(("dtype", "extra dim", "rows", "scalar",
                              "drop", "id")), label="how")
  keys = (_REQUIRED[variant] if how == "drop" else
          [k for k in columns if _NPZ_KINDS.get(k) == "USiu"] if how == "id"
          else [k for k in columns if k in _NPZ_KINDS])
  key = draw(st.sampled_from(sorted(keys)), label="key")
  value = columns[key]
  if how == "dtype":
    dtype = draw(st.sampled_from(
        [d for d in _DTYPES if np.dtype(d).kind not in _NPZ_KINDS[key]]),
                 label="dtype")
    columns[key] = (value.astype(object) if dtype == "O" else
                    np.zeros(value.shape, dtype))
  elif how == "extra dim":
    columns[key] = np.stack([value] * draw(st.integers(1, 2),
                                           label="size"), -1)
  elif how == "rows":  # cut from `label`, the other keys have too many
    columns[key] = value[:draw(st.integers(1, len(value) - 1),
                               label="rows kept")]
  elif how == "scalar":
    columns[key] = value[0]
  elif how == "drop":
    del columns[key]
  else:  # one id that is not text, in a bytes or a str array
    ids = value.astype(str).tolist()
    row = draw(st.integers(0, len(ids) - 1), label="row")
    if draw(st.booleans(), label="as bytes"):
      ids = [i.encode() for i in ids]
      ids[row] = draw(st.binary(max_size=5), label="id") + b"\xff"
    else:
      ids[row] = draw(st.text(max_size=4), label="id") + "\udcff"
    columns[key] = np.array(ids)


@FUZZ
@given(variant=st.sampled_from(("npz-mosi", "npz-iemocap4")),
       how=st.sampled_from(("strict", "replace", "add key")),
       data=st.data())
def test_npz_arrays_of_the_wrong_kind(pristine, capsys, variant, how, data):
  """An npz column of a dtype kind its field does not take (complex,
  datetime, void, object, or numbers for ids), with an extra dimension,
  the wrong number of rows, a scalar, a required key dropped, or an id that
  is not text: always an error. Any column replaced by a random array of
  any dtype and shape, or a new key added, may still convert."""
  with np.load(pristine[variant] / "data.npz") as archive:
    columns = dict(archive)
  allowed = (2,)
  if how == "strict":
    _npz_strict(data.draw, columns, variant)
  elif how == "replace":
    key = data.draw(st.sampled_from(sorted(columns)), label="key")
    columns[key] = data.draw(hnp.arrays(
        dtype=_RANDOM_DTYPES,
        shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0,
                               max_side=40)), label="array")
    allowed = (0, 2)
  else:
    columns[data.draw(st.text(min_size=1, max_size=6).filter(
        lambda k: k not in columns and k not in ("file", "allow_pickle")
        and "\x00" not in k), label="new key")] = np.zeros(3)
    allowed = (0,)
  content = io.BytesIO()
  np.savez(content, **columns)
  _convert(capsys, pristine, variant, {"data.npz": content.getvalue()},
           allowed)


@FUZZ
@given(variant=st.sampled_from(("gcnet-mosi", "gcnet-iemocap4")),
       how=st.sampled_from(("dtype", "shape", "dim", "random")),
       data=st.data())
def test_gcnet_feature_files_of_the_wrong_kind(pristine, capsys, variant,
                                               how, data):
  """A GCNet .npy feature file holding a non-numeric dtype (complex, str,
  bytes, object, datetime, void), an array that squeezes to 3-D or to
  nothing, or a vector of another dimension than the rest of its folder:
  always an error. Any random array of any dtype and shape may still
  convert (e.g. a [1, D] one)."""
  name = data.draw(st.sampled_from(
      [f for f in _files(pristine[variant], ".npy")
       if _is_read(variant, f)]), label="file")
  old = np.load(pristine[variant] / name)
  allowed = (2,)
  if how == "dtype":
    dtype = data.draw(st.sampled_from(
        [d for d in _DTYPES if np.dtype(d).kind not in "fiu"]),
                      label="dtype")
    new = (np.array(old.tolist(), object) if dtype == "O"
           else np.zeros(old.shape, dtype))
  elif how == "shape":
    new = data.draw(st.sampled_from([np.zeros((2, 2, 2), np.float32),
                                     np.zeros((0,), np.float32),
                                     np.zeros((3, 0), np.float32)]),
                    label="array")
  elif how == "dim":
    new = np.ones(old.shape[-1] + data.draw(
        st.sampled_from([-1, 1, 5]), label="change"), np.float32)
  else:
    new = data.draw(hnp.arrays(
        dtype=_RANDOM_DTYPES,
        shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0,
                               max_side=6)), label="array")
    allowed = (0, 2)
  content = io.BytesIO()
  np.save(content, new, allow_pickle=True)
  _convert(capsys, pristine, variant, {name: content.getvalue()}, allowed)
