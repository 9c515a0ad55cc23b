"""Evaluates a finished run's selected models from its orbax checkpoint.

    python -m experiments.evaluate --workdir runs/mosi [--protocol fixed|missing_rate|all] [--split valid|test] [--data_dir D] [--out FILE]

Prints the per-combination table (fixed protocol) and the headline metric
per missing rate; with --out, writes the numbers as JSON in the schema of
results.json. They equal the numbers training wrote at its end.
--data_dir: the run's prepared data where it is now, when it has moved
(checked against the manifest sha256 the run recorded in data.json).
"""

import json

from absl import app
from absl import flags

from experiments import launch
from experiments import process
from mcur_jax import evaluation
from mcur_jax import inference
from mcur_jax import report
from mcur_jax import workdir as workdir_lib

flags.DEFINE_string("workdir", None, "a training run's workdir", required=True)
flags.DEFINE_enum("protocol", "all", evaluation.PROTOCOLS,
                  "fixed: every combination; missing_rate: GCNet rates")
flags.DEFINE_enum("split", "test", ["valid", "test"], "split to evaluate")
flags.DEFINE_string("data_dir", None, "the run's prepared data, if it is "
                    "no longer where the run trained (default: there)")
flags.DEFINE_string("out", None, "write the results as JSON to this file")
launch.define_compilation_cache_flag()
FLAGS = flags.FLAGS


def main(argv) -> None:
  process.start(argv)
  process.end_on_ctrl_c()
  process.check_output(FLAGS.out)
  with process.user_errors(FLAGS.workdir):
    launch.compilation_cache_from_flags()
    results = inference.evaluate_workdir(FLAGS.workdir, FLAGS.split,
                                         FLAGS.protocol, FLAGS.data_dir)
  if FLAGS.split in results:
    print(report.table(results, FLAGS.split))
  if "missing_rate" in results:
    key = results["headline"]
    print(f"{key} against the missing rate ({FLAGS.split}): " + ", ".join(
        f"{r}: {v[key]['mean']:.3f}"
        for r, v in results["missing_rate"]["rates"].items()))
  if FLAGS.out:
    with process.user_errors(FLAGS.out):
      workdir_lib.write_text(FLAGS.out, json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
  app.run(main)
