"""The TFDS metadata of a prepared directory, so that TFDS loads it too.

`write` puts `dataset_info.json`, `features.json` (plus `label.labels.txt`
for class names) and `metadata.json` beside the shards, through
`tfds.folder_dataset.write_metadata`, which needs no TensorFlow; then
`tfds.builder_from_directory(DIR)` loads the directory (its `as_dataset`
needs TensorFlow, `info.features.deserialize_example_np` does not). The
features are derived from `schema.FIELDS`, so the record schema stays one
table; `manifest.json` stays the project's record of truth (normalisation
statistics, provenance), which the metadata points to.
`python -m data_prep.upgrade DIR` adds the metadata to a directory written
before.
"""

import os
import re

import numpy as np
import tensorflow_datasets as tfds

from mcur_jax import schema

# What TFDS accepts as a dataset name (the start of every shard name).
_NAME = re.compile(r"[a-zA-Z]\w*")
# The files `write` adds; `label.labels.txt` only for classification.
FILES = ("dataset_info.json", "features.json", "label.labels.txt",
         "metadata.json")

_IEMOCAP = ("https://sail.usc.edu/iemocap/", """\
@article{busso2008iemocap,
  title={{IEMOCAP}: Interactive emotional dyadic motion capture database},
  author={Busso, Carlos and Bulut, Murtaza and Lee, Chi-Chun and Kazemzadeh,
          Abe and Mower, Emily and Kim, Samuel and Chang, Jeannette N. and
          Lee, Sungbok and Narayanan, Shrikanth S.},
  journal={Language Resources and Evaluation},
  volume={42}, number={4}, pages={335--359}, year={2008}
}""")
# Dataset -> (homepage, citation) of the corpus its records come from.
_CORPORA = {
    "mosi": ("http://multicomp.cs.cmu.edu/resources/cmu-mosi-dataset/", """\
@article{zadeh2016mosi,
  title={Multimodal Sentiment Intensity Analysis in Videos: Facial Gestures
         and Verbal Messages},
  author={Zadeh, Amir and Zellers, Rowan and Pincus, Eli and Morency,
          Louis-Philippe},
  journal={IEEE Intelligent Systems},
  volume={31}, number={6}, pages={82--88}, year={2016}
}"""),
    "mosei": ("http://multicomp.cs.cmu.edu/resources/cmu-mosei-dataset/", """\
@inproceedings{zadeh2018mosei,
  title={Multimodal Language Analysis in the Wild: {CMU-MOSEI} Dataset and
         Interpretable Dynamic Fusion Graph},
  author={Zadeh, Amir and Liang, Paul Pu and Vanbriesen, Jonathan and Poria,
          Soujanya and Tong, Edmund and Cambria, Erik and Chen, Minghai and
          Morency, Louis-Philippe},
  booktitle={Proceedings of ACL}, pages={2236--2246}, year={2018}
}"""),
    "iemocap4": _IEMOCAP,
    "iemocap6": _IEMOCAP,
}


def check_name(name: str, file: str, field: str) -> None:
  """Raises DataError unless `name` can name a TFDS dataset (and shards)."""
  if not _NAME.fullmatch(name):
    raise schema.DataError(file, field, f"{name!r} is not a TFDS dataset name"
                           " (a letter, then letters, digits or _)")


def _feature(kind: str, doc: str, vector: bool = False):
  """The feature of an Example list of `kind`: one value, or a vector of
  any length."""
  if kind == schema.BYTES:
    return tfds.features.Text(doc=doc)
  dtype = np.int64 if kind == schema.INT64 else np.float32
  if vector:
    return tfds.features.Tensor(shape=(None,), dtype=dtype, doc=doc)
  return tfds.features.Scalar(dtype=dtype, doc=doc)


def features(manifest: schema.Manifest) -> tfds.features.FeaturesDict:
  """The records of `manifest`'s directory as TFDS features: per field of
  `schema.FIELDS`, the Example list the writer puts it in (a class label's
  int64 as a `ClassLabel`), per-modality vectors of variable length (an
  absent modality is an empty list)."""
  spec = {}
  for f in schema.FIELDS:
    for m in schema.MODALITIES if f.per == schema.PER_MODALITY else (None,):
      if f.kind == schema.LABEL and manifest.classes:
        spec[f.key(m)] = tfds.features.ClassLabel(names=manifest.classes,
                                                  doc=f.meaning)
      else:
        doc = f.meaning.replace("modality m", m) if m else f.meaning
        spec[f.key(m)] = _feature(f.list_kind(manifest.task), doc,
                                  vector=f is schema.FEATURES)
  for name in manifest.extra_fields:
    spec[name] = _feature(schema.EXTRA_KIND,
                          "extra field (the manifest's extra_fields)")
  return tfds.features.FeaturesDict(spec)


def _description(manifest: schema.Manifest) -> str:
  labels = (f"classes {', '.join(manifest.classes)}" if manifest.classes
            else f"scores in {manifest.label_range}")
  lines = [
      f"{manifest.dataset}: {manifest.task}, {labels}; prepared by mcur-jax "
      f"from format {manifest.format!r}. One tf.train.Example per utterance "
      "(fields: mcur_jax.schema.FIELDS), features raw; an absent modality is "
      "an empty vector with available_<modality> = 0.",
      "manifest.json beside these files is the record of truth: "
      "normalisation statistics and provenance; mcur_jax.data.load(DIR) "
      "reads it and standardises the features."]
  if manifest.split_source:
    lines.append(f"Splits: {manifest.split_source}")
  if manifest.folds:
    lines.append(
        f"Split {schema.TFDS_ALL_SPLIT!r} holds every record (the manifest's "
        f"{schema.ALL_SPLIT!r}, a name TFDS reserves); fold k tests on "
        f"{manifest.folds['key']} k: mcur_jax.data.load(DIR, fold=k).")
  return "\n\n".join(lines + manifest.notes)


def write(directory: str | os.PathLike, manifest: schema.Manifest,
          shard_lengths: dict[str, list[int]]) -> None:
  """Writes the TFDS metadata of the shards `manifest` lists in `directory`.

  Args:
    directory: holds the shards, named by `schema.shard_name`, and nothing
      else matching TFDS's template.
    manifest: the directory's manifest.
    shard_lengths: split -> the record count of each of its shards.
  """
  template = tfds.core.ShardedFileTemplate(
      data_dir=directory, dataset_name=manifest.dataset,
      filetype_suffix="tfrecord")
  splits = [
      tfds.core.SplitInfo(
          name=schema.tfds_split(s), shard_lengths=shard_lengths[s],
          num_bytes=sum(os.path.getsize(os.path.join(directory, f))
                        for f in info["files"]),
          filename_template=template)
      for s, info in manifest.splits.items()]
  # Synthetic records come from no corpus: nothing to cite.
  homepage, citation = (None, None) if manifest.format == "synthetic" else (
      _CORPORA.get(manifest.dataset, (None, None)))
  facts = {k: getattr(manifest, k) for k in (
      "schema_version", "task", "classes", "dims", "label_range", "folds",
      "extra_fields", "format", "split_source")}
  facts["splits"] = {schema.tfds_split(s): s for s in manifest.splits}
  tfds.folder_dataset.write_metadata(
      data_dir=directory, features=features(manifest), split_infos=splits,
      version=f"{manifest.schema_version}.0.0", filename_template=template,
      check_data=False, description=_description(manifest),
      homepage=homepage, citation=citation,
      metadata=tfds.core.MetadataDict(facts))
