"""TFRecord framing, CRCs and Example encoding, without TensorFlow (and against it when installed)."""

import numpy as np
import pytest

from mcur_jax import tfrecord


def test_crc32c_and_mask_match_the_standard_values():
  # CRC-32C check value of RFC 3720 (iSCSI), and TensorFlow's mask of it.
  import crc32c  # pylint: disable=g-import-not-at-top
  assert crc32c.crc32c(b"123456789") == 0xE3069283
  crc = 0xE3069283
  assert tfrecord.masked_crc32c(b"123456789") == (
      ((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def test_round_trip_and_exact_framing(tmp_path):
  records = [b"", b"a", bytes(range(256)) * 40]
  path = tmp_path / "x.tfrecord"
  assert tfrecord.write_records(path, records) == 3
  assert list(tfrecord.read_records(path)) == records
  assert path.stat().st_size == sum(len(r) + 16 for r in records)


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:-1], "truncated data"),
    (lambda b: b[:7], "truncated header"),
    (lambda b: b[:20] + bytes([b[20] ^ 1]) + b[21:], "data CRC mismatch"),
    (lambda b: bytes([b[0] ^ 1]) + b[1:], "length CRC mismatch"),
])
def test_corruption_is_detected_with_file_and_offset(tmp_path, damage, message):
  path = tmp_path / "x.tfrecord"
  tfrecord.write_records(path, [b"x" * 50])
  path.write_bytes(damage(path.read_bytes()))
  with pytest.raises(tfrecord.CorruptRecordError, match=message) as e:
    list(tfrecord.read_records(path))
  assert str(path) in str(e.value) and "record 0 at byte 0" in str(e.value)


def test_example_encoding_types():
  data = tfrecord.encode_example({
      "s": "héllo", "b": b"\x00\x01", "i": np.array([3, -4]),
      "flag": np.array([True]), "f": np.array([0.5, -1.25], np.float64),
      "empty": np.zeros(0, np.float32), "strings": ["a", "b"]})
  feature = tfrecord.parse_example(data).features.feature
  assert feature["s"].bytes_list.value == ["héllo".encode()]
  assert feature["b"].bytes_list.value == [b"\x00\x01"]
  assert list(feature["i"].int64_list.value) == [3, -4]
  assert list(feature["flag"].int64_list.value) == [1]
  assert list(feature["f"].float_list.value) == [0.5, -1.25]
  assert feature["empty"].WhichOneof("kind") == "float_list"
  assert len(feature["empty"].float_list.value) == 0
  assert feature["strings"].bytes_list.value == [b"a", b"b"]


def test_tensorflow_reads_ours_and_we_read_tensorflows(tmp_path):
  tf = pytest.importorskip("tensorflow")
  ours = tmp_path / "ours.tfrecord"
  tfrecord.write_records(ours, [tfrecord.encode_example(
      {"v": np.arange(3, dtype=np.float32), "id": f"u{i}"}) for i in range(4)])
  spec = {"v": tf.io.FixedLenFeature([3], tf.float32),
          "id": tf.io.FixedLenFeature([], tf.string)}
  got = [tf.io.parse_single_example(x, spec)
         for x in tf.data.TFRecordDataset(str(ours))]
  assert [g["id"].numpy() for g in got] == [b"u0", b"u1", b"u2", b"u3"]
  np.testing.assert_array_equal(got[0]["v"].numpy(), [0, 1, 2])
  theirs = tmp_path / "theirs.tfrecord"
  with tf.io.TFRecordWriter(str(theirs)) as w:
    for i in range(3):
      w.write(tf.train.Example(features=tf.train.Features(feature={
          "n": tf.train.Feature(int64_list=tf.train.Int64List(value=[i]))
      })).SerializeToString())
  values = [tfrecord.parse_example(r).features.feature["n"].int64_list.value[0]
            for r in tfrecord.read_records(theirs)]
  assert values == [0, 1, 2]
