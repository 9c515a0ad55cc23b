"""The record field table `schema.FIELDS`: the writer, `data.Split` and the docs follow it."""

import dataclasses
import pathlib

import pytest

from data_prep import writer
from mcur_jax import data
from mcur_jax import schema
from mcur_jax import tfrecord
from tests import test_data

_DATA_DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "data.md"


def _keys_and_kinds(task, extras):
  """Every Example key a record must hold -> its list kind."""
  kinds = {f.key(): f.list_kind(task) for f in schema.RECORD_FIELDS}
  kinds.update({f.key(m): f.list_kind(task) for f in schema.FIELDS
                if f.per == schema.PER_MODALITY for m in schema.MODALITIES})
  kinds.update({name: schema.EXTRA_KIND for name in extras})
  return kinds


@pytest.mark.parametrize("sessions", [False, True])
def test_every_record_holds_exactly_the_table_s_fields(tmp_path, sessions):
  manifest = writer.write(test_data.make_table(sessions=sessions),
                          tmp_path / "d")
  want = _keys_and_kinds(manifest.task, manifest.extra_fields)
  assert want["label"] == ("int64" if sessions else "float")
  for split in manifest.splits:
    for path in data.shard_paths(tmp_path / "d", manifest, split):
      for record in tfrecord.read_records(path):
        feature = tfrecord.parse_example(record).features.feature
        assert {k: feature[k].WhichOneof("kind") for k in feature} == {
            k: f"{kind}_list" for k, kind in want.items()}


def test_split_holds_one_attribute_per_record_field():
  names = {f.name for f in dataclasses.fields(data.Split)}
  assert names == {"features", "available", "extras",
                   *(f.name for f in schema.RECORD_FIELDS)}


def test_the_data_doc_schema_table_names_every_field():
  text = _DATA_DOC.read_text()
  table = text[text.index("## TFRecord schema"):]
  table = table[:table.index("`manifest.json`, the record of truth:")]
  for f in schema.FIELDS:
    for m in schema.MODALITIES if f.per == schema.PER_MODALITY else [None]:
      assert f"`{f.key(m)}`" in table, f.key(m)
