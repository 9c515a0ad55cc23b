"""Predicts with a trained run: one CSV row per utterance (and seed).

    python -m experiments.predict --workdir runs/mosi [--data_dir D [--fold K] --split test | --input FILE.npz] [--key label=label4] [--combination at] [--ensemble] --out predictions.csv

Without --data_dir or --input it predicts the run's own data (--split,
default test). Columns: `mcur_jax/predict.py`; the npz format:
`data_prep/formats/npz.py` (`group_id` and the modality keys; `speaker`
and `session` too for a run with `speaker_norm`, as IEMOCAP's default).
Exit 2 with one `error:` line for input that does not fit the model.
"""

import sys

from absl import app
from absl import flags

from experiments import launch
from mcur_jax import predict

flags.DEFINE_string("workdir", None, "a training run's workdir", required=True)
flags.DEFINE_string("data_dir", None, "prepared directory to predict "
                    "(default: the run's own data)")
flags.DEFINE_enum("split", "test", list(predict.SPLITS),
                  "split of the prepared directory")
flags.DEFINE_integer("fold", None, "fold of a cross-validated --data_dir "
                     "(default: the run's own fold)")
flags.DEFINE_string("input", None, "an .npz of features instead (labels "
                    "optional; format in data_prep/formats/npz.py; speaker "
                    "and session keys for a run with speaker_norm)")
flags.DEFINE_string("combination", None, "use only these modalities, e.g. at "
                    "(default: every modality each utterance has)")
flags.DEFINE_bool("ensemble", False, "one row per utterance from the seeds' "
                  "ensemble (default: one row per utterance and seed)")
flags.DEFINE_multi_string("key", [], "FIELD=NPZKEY: the --input npz key of "
                          "a field, as data_prep.convert takes it (e.g. "
                          "label=label4)")
flags.DEFINE_string("out", "predictions.csv", "the CSV to write")
launch.define_compilation_cache_flag()
FLAGS = flags.FLAGS


def main(argv) -> None:
  launch.start(argv)
  launch.end_on_ctrl_c()
  launch.check_output(FLAGS.out)
  if FLAGS.data_dir and FLAGS.input:
    print("error: --data_dir and --input: give one", file=sys.stderr)
    sys.exit(2)
  if FLAGS.key and not FLAGS.input:
    print("error: --key: names the keys of an --input npz", file=sys.stderr)
    sys.exit(2)
  if FLAGS.fold is not None and not FLAGS.data_dir:
    print("error: --fold: names the fold of a --data_dir", file=sys.stderr)
    sys.exit(2)
  # --split has a default: only one given on the command line is refused.
  if FLAGS["split"].present and FLAGS.input:
    print("error: --split: names the split of a prepared directory (the "
          "run's own or --data_dir); an --input npz is predicted whole",
          file=sys.stderr)
    sys.exit(2)
  with launch.user_errors(FLAGS.workdir):
    launch.compilation_cache_from_flags()
    found, notes = predict.predict(
        FLAGS.workdir, data_dir=FLAGS.data_dir, split=FLAGS.split,
        npz=FLAGS.input, combination=FLAGS.combination,
        ensemble=FLAGS.ensemble, keys=FLAGS.key, data_fold=FLAGS.fold)
  with launch.user_errors(FLAGS.out):
    predict.write_csv(found, FLAGS.out)
  for note in notes:
    print(f"NOTE: {note}")
  print(f"wrote {len(found)} rows to {FLAGS.out}")


if __name__ == "__main__":
  app.run(main)
