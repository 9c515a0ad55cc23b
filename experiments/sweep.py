"""Runs a sweep: every point of a grid, each into WORKDIR/<point-name>/.

    python -m experiments.sweep --config experiments/configs/mosi.py \\
        --workdir runs/sweep --data_dir prepared/mosi \\
        --grid learning_rate=1e-3,3e-4 --grid tau=0.05,0.1 \\
        [--sweep experiments/sweeps/mosi_small.py] [--shard i/n] \\
        [--compilation_cache DIR] [--config.seeds=0,1,2] [--config.x=...]

Points: the product of the `--grid FIELD=V1,V2,...` flags (`;` for a comma
inside a value: tuples `a;b`, comma-separated strings `audio;text`), or
the list returned by `get_sweep()` of a `--sweep` file, or both (each
sweep-file point crossed with the grid). `--config.*` overrides apply
to every point; the seeds of a point train together (jax.vmap). Rerunning
the same command skips finished points and resumes unfinished ones.
`--shard i/n` runs points i, i+n, ... so n machines can share one workdir.
A point that fails is recorded and the others run; the sweep then exits 2
and a rerun retries the failed points.
Compiled programs persist in `--compilation_cache` (default
WORKDIR/compilation_cache, or JAX_COMPILATION_CACHE_DIR when that is set;
`off` for none): points, reruns and shards load the programs an earlier
one compiled when they are the same (see mcur_jax/sweep.py).
Then `python -m experiments.sweep_report WORKDIR`.
"""

import os
import runpy

from absl import app
from absl import flags

from experiments import launch
from mcur_jax import sweep
from mcur_jax import validate

flags.DEFINE_string("sweep", None, "Python file whose get_sweep() returns a "
                    "list of {field: value} points (experiments/sweeps/... "
                    "is found in the installed package too)")
flags.DEFINE_multi_string("grid", [], "FIELD=V1,V2,...: sweep FIELD over the "
                          "values (repeat for a product)")
flags.DEFINE_string("shard", "0/1", "i/n: run only points i, i+n, i+2n, ...")
FLAGS = flags.FLAGS


def file_points(path: str) -> list[dict]:
  """The points of a sweep file: its get_sweep(), a non-empty list of
  {field: value} dicts."""
  get_sweep = runpy.run_path(path).get("get_sweep")
  if not callable(get_sweep):
    raise validate.ConfigError("--sweep", f"{path}: defines no get_sweep()")
  found = get_sweep()
  if not (isinstance(found, (list, tuple)) and found and all(
      isinstance(p, dict) and all(isinstance(k, str) for k in p)
      for p in found)):
    raise validate.ConfigError(
        "--sweep", f"{path}: get_sweep() returned {str(found)[:80]}; "
        "expected a non-empty list of {field: value} dicts")
  return list(found)


def points(config) -> list[dict]:
  """The sweep's points in a fixed order: file points x grid points."""
  from_file = [{}]
  if FLAGS.sweep:
    from_file = file_points(launch.package_file(FLAGS.sweep))
  grid = sweep.grid_points(config, FLAGS.grid)
  both = sorted(set(grid[0]) & {k for p in from_file for k in p})
  if both:
    raise validate.ConfigError(f"--grid {both[0]}", "also set by the points "
                               f"of {FLAGS.sweep}: sweep it in one place")
  return [{**a, **b} for a in from_file for b in grid]


def parse_shard(text: str) -> tuple[int, int]:
  index, sep, count = text.partition("/")
  if not (sep and index.isdigit() and count.isdigit()):
    raise validate.ConfigError("--shard", f"{text!r}: expected i/n, e.g. 0/4")
  return int(index), int(count)


def run(config, workdir: str) -> None:
  """This shard's points; a failed point (recorded, the others run) makes
  the sweep end with one `error:` line and exit status 2."""
  explicit = launch.dataset_overridden()

  def prepare(point_config, point):
    # A point's own data directory names its dataset, as --data_dir does.
    if "data_dir" in point:
      launch.take_dataset(point_config, explicit or "dataset" in point)

  status = sweep.run(config, workdir, points(config),
                     parse_shard(FLAGS.shard), prepare=prepare,
                     source=" and ".join(
                         [FLAGS.sweep] * bool(FLAGS.sweep) +
                         ["--grid"] * bool(FLAGS.grid)) or "sweep")
  failed = [name for name, s in status.items() if s == "failed"]
  if failed:
    raise validate.ConfigError(
        "sweep", f"{len(failed)} of {len(status)} points failed "
        f"({', '.join(failed)}; see {sweep.FAILED_FILE} in each); rerun the "
        "command to retry them")


def main(argv) -> None:
  launch.execute(argv, run, cache=os.path.join(FLAGS.workdir,
                                               sweep.COMPILATION_CACHE))


if __name__ == "__main__":
  launch.define_flags("mosi", "runs/sweep",
                      cache=f"WORKDIR/{sweep.COMPILATION_CACHE}")
  app.run(main)
