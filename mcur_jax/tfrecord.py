"""TFRecord files of `tf.train.Example` protos, written and read without TensorFlow.

A TFRecord file is a sequence of frames::

    uint64 length (little endian)
    uint32 masked_crc32c(length bytes)
    bytes  data[length]
    uint32 masked_crc32c(data)

and each `data` here is a serialized `tf.train.Example`. The Example proto is
the wire-compatible copy that tensorflow-datasets ships
(`tensorflow_datasets.proto.tf_example_pb2`), so TensorFlow is never needed,
yet `tf.data.TFRecordDataset` reads these files unchanged.

Every read checks both CRCs and the framing; a truncated or corrupted file
raises `CorruptRecordError` naming the file, the record and the byte offset.
"""

from collections.abc import Iterable, Iterator, Mapping
import os
import struct

import crc32c
import numpy as np
from tensorflow_datasets.proto import tf_example_pb2

_LENGTH = struct.Struct("<Q")
_CRC = struct.Struct("<I")
_MASK_DELTA = 0xA282EAD8


class CorruptRecordError(ValueError):
  """A TFRecord file is truncated, or a length or data CRC does not match."""


def masked_crc32c(data: bytes) -> int:
  """The CRC32C of `data`, masked as TFRecord framing stores it."""
  crc = crc32c.crc32c(data)
  return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame(data: bytes) -> bytes:
  """One TFRecord frame around `data`."""
  length = _LENGTH.pack(len(data))
  return b"".join((length, _CRC.pack(masked_crc32c(length)), data,
                   _CRC.pack(masked_crc32c(data))))


def write_records(path: str | os.PathLike, records: Iterable[bytes]) -> int:
  """Writes `records` to a new TFRecord file at `path`; returns their count."""
  count = 0
  with open(path, "wb") as f:
    for data in records:
      f.write(frame(data))
      count += 1
  return count


def read_records(path: str | os.PathLike) -> Iterator[bytes]:
  """Yields the payloads of a TFRecord file, checking framing and both CRCs."""
  with open(path, "rb") as f:
    buf = f.read()
  offset, index, end = 0, 0, len(buf)
  while offset < end:
    def fail(what):
      raise CorruptRecordError(
          f"{os.fspath(path)}: record {index} at byte {offset}: {what}")
    if end - offset < 12:
      fail("truncated header")
    length_bytes = buf[offset:offset + 8]
    (length,) = _LENGTH.unpack(length_bytes)
    (length_crc,) = _CRC.unpack_from(buf, offset + 8)
    if masked_crc32c(length_bytes) != length_crc:
      fail("length CRC mismatch")
    start = offset + 12
    if end - start < length + 4:
      fail(f"truncated data (needs {length + 4} bytes, {end - start} left)")
    data = buf[start:start + length]
    (data_crc,) = _CRC.unpack_from(buf, start + length)
    if masked_crc32c(data) != data_crc:
      fail("data CRC mismatch")
    yield data
    offset = start + length + 4
    index += 1


Value = bytes | str | int | float | np.ndarray | list


def encode_example(features: Mapping[str, Value]) -> bytes:
  """Serializes a dict to a `tf.train.Example`.

  Types map to Example lists: `bytes`/`str` (or a list of them) -> bytes_list;
  `int`/integer or bool array -> int64_list; `float`/floating array ->
  float_list (float32). A 1-D array of length 0 gives an empty list.
  """
  example = tf_example_pb2.Example()
  feature = example.features.feature
  for name, value in features.items():
    if isinstance(value, (bytes, str)):
      value = [value]
    if isinstance(value, list) and value and isinstance(value[0], (bytes, str)):
      feature[name].bytes_list.value.extend(
          v.encode() if isinstance(v, str) else v for v in value)
      continue
    array = np.asarray(value)
    if array.dtype.kind in "iub":
      feature[name].int64_list.value.extend(
          array.astype(np.int64).reshape(-1).tolist())
    elif array.dtype.kind == "f":
      feature[name].float_list.value.extend(
          array.astype(np.float32).reshape(-1).tolist())
    else:
      raise TypeError(f"feature {name!r}: unsupported type {array.dtype}")
  return example.SerializeToString(deterministic=True)


def parse_example(data: bytes) -> tf_example_pb2.Example:
  """Parses a serialized `tf.train.Example`."""
  return tf_example_pb2.Example.FromString(data)
