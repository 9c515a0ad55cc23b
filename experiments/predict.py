"""Predicts with a trained run: one CSV row per utterance (and seed).

    python -m experiments.predict --workdir runs/mosi [--data_dir D [--fold K] --split test | --input FILE.npz] [--key label=label4] [--combination at] [--ensemble] --out predictions.csv

Without --data_dir or --input it predicts the run's own data (--split,
default test). Columns: `mcur_jax/predict.py`; the npz format:
`data_prep/formats/npz.py` (`group_id` and the modality keys; `speaker`
and `session` too for a run with `speaker_norm`, as IEMOCAP's default).
Exit 2 with one `error:` line for input that does not fit the model.
"""

from absl import app
from absl import flags

from experiments import launch
from experiments import process
from mcur_jax import predict
from mcur_jax import schema

flags.DEFINE_string("workdir", None, "a training run's workdir", required=True)
flags.DEFINE_string("data_dir", None, "prepared directory to predict "
                    "(default: the run's own data)")
flags.DEFINE_enum("split", "test", list(schema.SPLITS),
                  "split of the prepared directory")
flags.DEFINE_integer("fold", None, "fold of a cross-validated --data_dir "
                     "(default: the run's own fold); on a cross-validated "
                     "--workdir, only that fold's models predict")
flags.DEFINE_string("input", None, "an .npz of features instead (labels "
                    "optional; format in data_prep/formats/npz.py; speaker "
                    "and session keys for a run with speaker_norm)")
flags.DEFINE_string("combination", None, "use only these modalities, e.g. at "
                    "(any order; default: every modality each utterance "
                    "has)")
flags.DEFINE_bool("ensemble", False, "one row per utterance from the seeds' "
                  "ensemble (default: one row per utterance and seed)")
flags.DEFINE_multi_string("key", [], "FIELD=NPZKEY: the --input npz key of "
                          "a field, as data_prep.convert takes it (e.g. "
                          "label=label4)")
flags.DEFINE_string("out", "predictions.csv", "the CSV to write")
launch.define_compilation_cache_flag()
FLAGS = flags.FLAGS


def main(argv) -> None:
  process.start(argv)
  process.end_on_ctrl_c()
  process.check_output(FLAGS.out)
  with process.user_errors(FLAGS.workdir):
    launch.compilation_cache_from_flags()
    found, notes = predict.predict(
        # --split has a default: only one given is refused with --input.
        FLAGS.workdir, data_dir=FLAGS.data_dir,
        split=FLAGS.split if FLAGS["split"].present else None,
        npz=FLAGS.input, combination=FLAGS.combination,
        ensemble=FLAGS.ensemble, keys=FLAGS.key, data_fold=FLAGS.fold)
  with process.user_errors(FLAGS.out):
    predict.write_csv(found, FLAGS.out)
  for note in notes:
    print(f"note: {note}")
  print(f"wrote {len(found)} rows to {FLAGS.out}")


if __name__ == "__main__":
  app.run(main)
