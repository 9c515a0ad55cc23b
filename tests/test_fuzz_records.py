"""Fuzzing prepared directories (hypothesis): damaged shards and manifests.

Each test damages one file of a small valid prepared directory (written
once per kind: "fixed" regression train/valid/test, or "folds"
classification over sessions) and runs both readers of a prepared
directory: `python -m data_prep.inspect DIR` (its `main`, in-process) and
the training reader `mcur_jax.data.load`. A failure must be clean: inspect
returns 2 with exactly one stderr line `error: FILE: FIELD: problem` naming
a file of the directory, load raises `schema.DataError` or
`tfrecord.CorruptRecordError` whose message names one the same way; never
another exception or status, nor a hang. Each test says which damage must
fail and which may leave a directory that still reads.
"""

import functools
import json
import os
import pathlib
import struct
import tempfile

import pytest
from hypothesis import event
from hypothesis import given
from hypothesis import strategies as st

from data_prep import inspect
from data_prep import writer
from mcur_jax import data
from mcur_jax import schema
from mcur_jax import tfrecord
from tests import fuzz_inputs
from tests.fuzz_inputs import node_at
from tests.fuzz_inputs import node_paths
from tests import test_data

FUZZ = fuzz_inputs.FUZZ
# A warning would be a second line on the command line's stderr: fail.
pytestmark = pytest.mark.filterwarnings("error")
KINDS = ("fixed", "folds")
# The fold `data.load` reads from a "folds" directory.
FOLD = 1
# Example keys whose values `_damage_value` can make invalid; the others
# (position, session, the extra `corrupted`) take any int64.
_BYTES_KEYS = tuple(f.name for f in schema.RECORD_FIELDS
                    if f.kind == schema.BYTES)
_AVAILABLE_KEYS = tuple(schema.AVAILABLE.key(m) for m in schema.MODALITIES)

# JSON values of every type, NaN and huge numbers included.
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats()
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8)


@functools.cache
def _prepared(kind: str) -> dict[str, bytes]:
  """File name -> content of a small valid prepared directory of `kind`."""
  table = (test_data.make_table(sessions=True, n_groups=8, per_group=3)
           if kind == "folds" else
           test_data.make_table(n_groups=6, per_group=3))
  with tempfile.TemporaryDirectory() as root:
    directory = pathlib.Path(root, "prepared")
    writer.write(table, directory)
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _shards(files: dict[str, bytes]) -> list[str]:
  return [name for name in files if schema.is_shard_name(name)]


def _split_of(files: dict[str, bytes], shard: str) -> str:
  """The manifest's split that lists `shard`."""
  splits = json.loads(files[schema.MANIFEST])["splits"]
  return next(s for s, info in splits.items() if shard in info["files"])


def _frames(content: bytes) -> list[tuple[int, int]]:
  """(offset, data length) of every frame of a valid TFRecord file."""
  frames, offset = [], 0
  while offset < len(content):
    (length,) = struct.unpack_from("<Q", content, offset)
    frames.append((offset, length))
    offset += length + 16
  return frames


def _read_both(capsys, files: dict[str, bytes], kind: str):
  """Writes `files` as a prepared directory and runs inspect and load on it.

  Returns (inspect's status, its error, load's error), each error None or
  (file, field, problem) as `fuzz_inputs.parse_error` gives it, after
  checking that each failure was clean.
  """
  with tempfile.TemporaryDirectory() as root:
    directory = os.path.join(root, "prepared")
    os.mkdir(directory)
    for name, content in files.items():
      with open(os.path.join(directory, name), "wb") as f:
        f.write(content)
    capsys.readouterr()
    with fuzz_inputs.no_hang():
      status = inspect.main([directory])
    error = None
    if status != 0:
      assert status == 2
      lines = capsys.readouterr().err.splitlines()
      assert len(lines) == 1, lines
      error = fuzz_inputs.parse_error(lines[0], directory)
    event(f"inspect: exit {status}")
    try:
      with fuzz_inputs.no_hang():
        data.load(directory, fold=FOLD if kind == "folds" else None)
      loaded = None
    except (schema.DataError, tfrecord.CorruptRecordError) as e:
      loaded = fuzz_inputs.parse_error(f"error: {e}", directory)
    event(f"load: {'fails' if loaded else 'reads'}")
  return status, error, loaded


def _assert_record_error(status, error, loaded, shard: str, record=None):
  """Both readers failed on a framing or CRC check of `shard` (at record
  `record` if given)."""
  assert status == 2
  prefix = "record " if record is None else f"record {record} at byte "
  for file, field, _ in (error, loaded):
    assert file == shard and field.startswith(prefix), (error, loaded)


@FUZZ
@given(kind=st.sampled_from(KINDS), data=st.data())
def test_byte_flips_in_a_shard_are_always_detected(capsys, kind, data):
  """Changing 1..4 bytes anywhere in a shard fails both readers, naming
  the shard and a record: the length CRC covers the length field and the
  data CRC every byte of the Example, float payloads included. One changed
  byte is always caught (CRC32C detects every burst of up to 32 bits);
  several escape with a chance of 2**-32."""
  files = dict(_prepared(kind))
  shard = data.draw(st.sampled_from(_shards(files)), label="shard")
  content = bytearray(files[shard])
  flips = data.draw(st.dictionaries(st.integers(0, len(content) - 1),
                                    st.integers(1, 255), min_size=1,
                                    max_size=4), label="offset -> xor mask")
  for offset, mask in flips.items():
    content[offset] ^= mask
  files[shard] = bytes(content)
  _assert_record_error(*_read_both(capsys, files, kind), shard)


@FUZZ
@given(kind=st.sampled_from(KINDS), data=st.data())
def test_a_truncated_shard_is_always_detected(capsys, kind, data):
  """A shard cut anywhere fails both readers: inside a frame as a
  truncated record of that shard, at a frame boundary (or to nothing) as
  the manifest's record count of its split."""
  files = dict(_prepared(kind))
  shard = data.draw(st.sampled_from(_shards(files)), label="shard")
  size = data.draw(st.integers(0, len(files[shard]) - 1), label="new size")
  files[shard] = files[shard][:size]
  status, error, loaded = _read_both(capsys, files, kind)
  assert status == 2
  boundaries = {offset for offset, _ in _frames(_prepared(kind)[shard])}
  split = _split_of(files, shard)
  for file, field, _ in (error, loaded):
    if size in boundaries:
      assert (file, field) == (schema.MANIFEST, f"splits.{split}.count")
    else:
      assert file == shard and field.startswith("record "), (file, field)


@FUZZ
@given(kind=st.sampled_from(KINDS), data=st.data())
def test_a_wrong_length_field_with_a_valid_crc_is_detected(capsys, kind,
                                                           data):
  """A frame's length set to any other uint64, with a matching length CRC
  (so the header itself looks fine), fails both readers at that record:
  the data runs past the end, or the data CRC no longer matches."""
  files = dict(_prepared(kind))
  shard = data.draw(st.sampled_from(_shards(files)), label="shard")
  content = bytearray(files[shard])
  k = data.draw(st.integers(0, len(_frames(content)) - 1), label="record")
  offset, length = _frames(content)[k]
  new = data.draw(st.integers(0, 2**64 - 1).filter(lambda x: x != length),
                  label="new length")
  header = struct.pack("<Q", new)
  content[offset:offset + 12] = header + struct.pack(
      "<I", tfrecord.masked_crc32c(header))
  files[shard] = bytes(content)
  _assert_record_error(*_read_both(capsys, files, kind), shard, k)


@FUZZ
@given(kind=st.sampled_from(KINDS), which=st.sampled_from(("length", "data")),
       data=st.data())
def test_a_wrong_crc_is_detected(capsys, kind, which, data):
  """Any other value in a frame's length CRC or data CRC fails both
  readers at that record with that CRC's mismatch."""
  files = dict(_prepared(kind))
  shard = data.draw(st.sampled_from(_shards(files)), label="shard")
  content = bytearray(files[shard])
  k = data.draw(st.integers(0, len(_frames(content)) - 1), label="record")
  offset, length = _frames(content)[k]
  at = offset + 8 if which == "length" else offset + 12 + length
  (old,) = struct.unpack_from("<I", content, at)
  new = data.draw(st.integers(0, 2**32 - 1).filter(lambda x: x != old),
                  label="new CRC")
  struct.pack_into("<I", content, at, new)
  files[shard] = bytes(content)
  status, error, loaded = _read_both(capsys, files, kind)
  _assert_record_error(status, error, loaded, shard, k)
  assert error[2] == loaded[2] == f"{which} CRC mismatch"


def _reframe(content: bytes, k: int, payload: bytes) -> bytes:
  """`content` with record k's data replaced by `payload`, CRCs valid."""
  frames = _frames(content)
  offset, length = frames[k]
  return (content[:offset] + tfrecord.frame(payload)
          + content[offset + 16 + length:])


def _damage_value(draw, kind, key, feature) -> None:
  """Gives `feature` (the Example feature `key`) a value of the right type
  and length that the schema forbids."""
  if key in _BYTES_KEYS:
    feature.bytes_list.value[0] = draw(st.binary(min_size=1, max_size=6).map(
        lambda b: b"\xff" + b), label="non-UTF-8 id")
  elif key in _AVAILABLE_KEYS:
    feature.int64_list.value[0] = draw(
        st.integers(-2**63, 2**63 - 1).filter(lambda v: v not in (0, 1)),
        label="availability")
  elif key == "label" and kind == "folds":
    feature.int64_list.value[0] = draw(
        st.integers(-2**63, 2**63 - 1).filter(lambda v: not 0 <= v < 4),
        label="class index")
  else:  # the regression label (in [-3, 3]) or a feature vector
    values = feature.float_list.value
    bad = [float("nan"), float("inf"), -float("inf")]
    if key == "label":
      bad += [3.5, -1e30]
    values[draw(st.integers(0, len(values) - 1), label="index")] = draw(
        st.sampled_from(bad), label="value")


def _value_keys(kind, feature_map) -> list[str]:
  """The keys `_damage_value` can damage in this Example."""
  return sorted(k for k in feature_map
                if k in _BYTES_KEYS + _AVAILABLE_KEYS or k == "label"
                or (k in schema.MODALITIES
                    and len(feature_map[k].float_list.value)))


_LIST_KINDS = ("bytes_list", "int64_list", "float_list")


def _values_as(values, list_kind) -> list:
  """Valid-record values (bytes, ints, finite floats) converted to the
  element type of `list_kind`."""
  if list_kind == "bytes_list":
    return [v if isinstance(v, bytes) else repr(v).encode() for v in values]
  as_number = int if list_kind == "int64_list" else float
  return [as_number(len(v) if isinstance(v, bytes) else v) for v in values]


@FUZZ
@given(kind=st.sampled_from(KINDS),
       how=st.sampled_from(("delete", "unset", "kind", "length", "value")),
       data=st.data())
def test_a_record_with_a_wrong_feature_is_rejected(capsys, kind, how, data):
  """An Example (framed with valid CRCs) whose feature KEY is missing, has
  no list, a list of another type, another length, or a value the schema
  forbids (non-UTF-8 id, availability not 0/1, class out of range, NaN or
  inf) fails both readers naming the shard and KEY."""
  files = dict(_prepared(kind))
  shard = data.draw(st.sampled_from(_shards(files)), label="shard")
  k = data.draw(st.integers(0, len(_frames(files[shard])) - 1),
                label="record")
  offset, length = _frames(files[shard])[k]
  example = tfrecord.parse_example(
      files[shard][offset + 12:offset + 12 + length])
  feature_map = example.features.feature
  keys = (_value_keys(kind, feature_map) if how == "value"
          else sorted(feature_map))
  key = data.draw(st.sampled_from(keys), label="key")
  feature = feature_map[key]
  list_kind = feature.WhichOneof("kind")
  values = list(getattr(feature, list_kind).value)
  if how == "delete":
    del feature_map[key]
  elif how == "unset":
    feature.Clear()
  elif how == "kind":
    other = data.draw(st.sampled_from(
        [x for x in _LIST_KINDS if x != list_kind]), label="list kind")
    feature.Clear()
    getattr(feature, other).value.extend(_values_as(values, other))
  elif how == "length":
    target = getattr(feature, list_kind).value
    if values and data.draw(st.booleans(), label="shorten"):
      del target[data.draw(st.integers(0, len(values) - 1), label="kept"):]
    else:
      added = data.draw(st.integers(1, 3), label="values added")
      target.extend(_values_as((values[:1] or [0.0]) * added, list_kind))
  else:
    _damage_value(data.draw, kind, key, feature)
  files[shard] = _reframe(files[shard], k,
                          example.SerializeToString(deterministic=True))
  status, error, loaded = _read_both(capsys, files, kind)
  assert status == 2
  assert error[:2] == loaded[:2] == (shard, key), (error, loaded)


@FUZZ
@given(kind=st.sampled_from(KINDS),
       payload=st.binary(max_size=80), data=st.data())
def test_a_record_that_is_not_an_example_is_rejected(capsys, kind, payload,
                                                     data):
  """Arbitrary bytes framed with valid CRCs in place of a record (not a
  protobuf, or one without the schema's fields) fail both readers naming
  the shard."""
  files = dict(_prepared(kind))
  shard = data.draw(st.sampled_from(_shards(files)), label="shard")
  k = data.draw(st.integers(0, len(_frames(files[shard])) - 1),
                label="record")
  files[shard] = _reframe(files[shard], k, payload)
  status, error, loaded = _read_both(capsys, files, kind)
  assert status == 2 and error[0] == loaded[0] == shard, (error, loaded)


@FUZZ
@given(kind=st.sampled_from(KINDS), data=st.data())
def test_a_truncated_manifest_is_rejected(capsys, kind, data):
  """manifest.json cut before its closing brace is not JSON: both readers
  fail naming it (field `manifest`)."""
  files = dict(_prepared(kind))
  text = files[schema.MANIFEST].rstrip()
  files[schema.MANIFEST] = text[:data.draw(st.integers(0, len(text) - 1),
                                           label="new size")]
  status, error, loaded = _read_both(capsys, files, kind)
  assert status == 2
  assert error[:2] == loaded[:2] == (schema.MANIFEST, "manifest"), (
      error, loaded)


def _json_type(value) -> str:
  """The JSON type of a value: int and float are both "number"."""
  for name, types in (("null", type(None)), ("boolean", bool),
                      ("number", (int, float)), ("string", str),
                      ("array", list), ("object", dict)):
    if isinstance(value, types):
      return name
  raise TypeError(value)


@FUZZ
@given(kind=st.sampled_from(KINDS), data=st.data())
def test_a_manifest_field_of_the_wrong_type_is_rejected(capsys, kind, data):
  """Any non-null node of manifest.json (the root, a field, a list item,
  nested ones) replaced by a non-null JSON value of another type (say a
  count by a string, a mean by an object, `schema_version` by true) fails
  both readers naming manifest.json. Null nodes and null values are left
  to the next test: `folds` and `label_range` may be null."""
  files = dict(_prepared(kind))
  raw = json.loads(files[schema.MANIFEST])
  path = data.draw(st.sampled_from(
      [p for p in node_paths(raw) if node_at(raw, p) is not None]),
      label="path")
  old = _json_type(node_at(raw, path))
  new = data.draw(_JSON.filter(
      lambda v: _json_type(v) not in (old, "null")), label="new value")
  if path:
    node_at(raw, path[:-1])[path[-1]] = new
  else:
    raw = new
  files[schema.MANIFEST] = json.dumps(raw).encode()
  status, error, loaded = _read_both(capsys, files, kind)
  assert status == 2
  assert error[0] == loaded[0] == schema.MANIFEST, (error, loaded)


@FUZZ
@given(kind=st.sampled_from(KINDS),
       how=st.sampled_from(("replace", "delete", "add", "flip")),
       data=st.data())
def test_any_manifest_damage_fails_cleanly_or_still_reads(capsys, kind, how,
                                                          data):
  """A node of manifest.json replaced by any JSON value (null, NaN, huge
  and negative numbers included), a key or list item deleted, a key added,
  or a byte of the file flipped: the directory may still read (a changed
  note, a deleted optional field, a value the records agree with), so each
  reader either succeeds or fails cleanly."""
  files = dict(_prepared(kind))
  if how == "flip":
    content = bytearray(files[schema.MANIFEST])
    offset = data.draw(st.integers(0, len(content) - 1), label="offset")
    content[offset] ^= data.draw(st.integers(1, 255), label="xor mask")
    files[schema.MANIFEST] = bytes(content)
  else:
    raw = json.loads(files[schema.MANIFEST])
    containers = [p for p in node_paths(raw)
                  if isinstance(node_at(raw, p), (dict, list))
                  and node_at(raw, p)]
    parent = node_at(raw, data.draw(st.sampled_from(containers),
                                    label="in"))
    keys = list(parent) if isinstance(parent, dict) else range(len(parent))
    key = data.draw(st.sampled_from(keys), label="key")
    if how == "replace":
      parent[key] = data.draw(_JSON, label="new value")
    elif how == "delete":
      del parent[key]
    elif isinstance(parent, dict):
      parent[data.draw(st.text(max_size=6), label="new key")] = data.draw(
          _JSON, label="its value")
    else:
      parent.append(data.draw(_JSON, label="new item"))
    files[schema.MANIFEST] = json.dumps(raw).encode()
  _read_both(capsys, files, kind)
