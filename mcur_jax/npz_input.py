"""An `.npz` of new features, read for a trained model (`predict --input`).

The format is `data_prep/formats/npz.py`'s, where only `group_id` and one
modality are required: `label` is optional (absent, or -1 for a class: not
known; a class index or name), `position` defaults to the rows' order in
each group (a note says so), `split` is not read, and keys may be named as
`data_prep.convert --key` names them. A modality the model was trained
without (dims 0 in its manifest) or with another feature size is an error
naming the key; a modality the model knows but the file lacks is absent
for every utterance (the model is built for that), and a note says so. For
a run's `speaker_norm` modalities that the file has, the `speaker` key is
required and `session` read (speaker ids count within a session; without
it every row is session 0, as `data_prep.convert` reads such a file, and a
note says so); a note names any speaker with a single utterance, whose
features per-speaker standardisation leaves all zero.
"""

import numpy as np

from mcur_jax import data as data_lib
from mcur_jax import normalization
from mcur_jax import npz_columns
from mcur_jax import schema
from mcur_jax import utterance_rows


def read(path: str, manifest: schema.Manifest, keys=(),
         speaker_norm: tuple[str, ...] = ()
         ) -> tuple[data_lib.Split, np.ndarray, list]:
  """(raw split, label known [N] bool, notes) of an npz of new features,
  checked against the model's `manifest` (module docstring); `keys` are
  FIELD=NPZKEY pairs (as `data_prep.convert --key`), `speaker_norm` the
  run's per-speaker modalities."""
  classification = manifest.task == "classification"
  fields, mapped = npz_columns.key_map(list(keys))
  with npz_columns.open_archive(path) as archive:
    columns = npz_columns.Columns(path, archive, fields, mapped,
                                  rows_from="group_id")
    group_id = columns.text("group_id", None)
    n = len(group_id)
    label = columns.labels(manifest.classes if classification else None, n,
                           required=False)
    position, utt_id, given = columns.positions_and_ids(group_id)
    notes = []
    if not given and len(np.unique(group_id)) < n:
      notes.append(f"{path}: no {columns.name('position')!r} key: each "
                   "group's utterances are predicted in context in the "
                   "order of their rows; give their positions if the rows "
                   "are in another order")
    features, available, _ = npz_columns.read_features(columns, n)
    per_speaker = speaker_modalities(available, speaker_norm)
    if per_speaker and not columns.has("speaker"):
      raise schema.DataError(
          path, columns.name("speaker"), "missing: the model standardises "
          f"{' and '.join(per_speaker)} per speaker (its run's "
          "speaker_norm), so each utterance needs its speaker id (keys in "
          "the file: "
          f"{', '.join(columns.files)}; map one with --key speaker=KEY)")
    speaker = columns.text("speaker", n, required=False)
    session = columns.get("session", npz_columns.INTEGERS, n,
                          required=False)
    if per_speaker and session is None:
      notes.append(f"{path}: no {columns.name('session')!r} key: every "
                   "row is session 0, so a speaker id is one speaker "
                   "across the file (as data_prep.convert reads it)")
    notes += columns.unread_note()
  for j, m in enumerate(schema.MODALITIES):
    dims, want = features[m].shape[1], manifest.dims[m]
    if dims and not want:
      raise schema.DataError(path, columns.name(m), f"the model was trained "
                             f"without {m} (its manifest's dims.{m} is 0): "
                             "remove the key")
    if dims and dims != want:
      raise schema.DataError(path, columns.name(m), f"{dims} features per "
                             f"utterance, but the model was trained on "
                             f"{want} (dims.{m} of its manifest)")
    if want and not dims:
      features[m] = np.zeros((n, want), np.float32)
      notes.append(f"{path}: no {m!r} key: {m} is absent for every "
                   "utterance")
    features[m], available[:, j], _ = utterance_rows.apply_nan_policy(
        features[m], available[:, j], "error", path, columns.name(m), utt_id,
        remedy=f"mark such an utterance's {m} unavailable with "
        f"{columns.name(schema.available_field(m))}=0, or fix its values")
  if label is None:
    known = np.zeros(n, bool)
    label = np.zeros(n, np.int32 if classification else np.float32)
  else:  # The prepared data's rule; -1 is a class not known.
    known = (label != npz_columns.UNLABELLED if classification
             else np.ones(n, bool))
    bad, expected = data_lib.bad_labels(label, len(manifest.classes or ()),
                                        manifest.label_range)
    bad &= known
    if bad.any():
      raise schema.DataError(path, "label", f"{int(bad.sum())} values that "
                             f"are not {expected}" +
                             (" or -1 (unknown)" if classification else ""))
    if classification:
      label = np.where(known, label, 0).astype(np.int32)
  split = utterance_rows.make_rows(
      utt_id=utt_id, group_id=group_id, position=position, label=label,
      features=features, available=available, speaker=speaker,
      session=session)
  utterance_rows.check_ids(split, {"utt_id": path})
  if per_speaker and speaker is not None:
    ids, counts = np.unique(normalization.speakers(split), return_counts=True)
    if (counts == 1).any():
      notes.append(
          f"{path}: {int((counts == 1).sum())} speaker(s) with a single "
          f"utterance ({', '.join(ids[counts == 1][:5])}"
          f"{', ...' if (counts == 1).sum() > 5 else ''}): standardised with "
          f"their own statistics (speaker_norm: {', '.join(per_speaker)}), "
          "their features are all zero; give each speaker's other "
          "utterances too")
  return split, known, notes


def speaker_modalities(available: np.ndarray, speaker_norm) -> list[str]:
  """The `speaker_norm` modalities some row of the input has ([N, 3]
  `available`): only they take each speaker's statistics, and only they
  need speaker ids (a modality absent throughout stays zero)."""
  return [m for m in speaker_norm
          if available[:, schema.MODALITIES.index(m)].any()]
