"""Summarises a sweep: `python -m experiments.sweep_report WORKDIR`.

Writes WORKDIR/sweep_report.{md,csv,png} (rows sorted by the validation
metric, never by test) and, once a point finished, WORKDIR/results.md (the
paper-style tables, a row per point); prints the Markdown table and the
files written.
"""

import sys

from mcur_jax import sweep_report


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if argv and argv[0] in ("-h", "--help", "--helpshort", "--helpfull"):
    print(__doc__)
    return 0
  if len(argv) != 1 or argv[0].startswith("-"):
    print("usage: python -m experiments.sweep_report WORKDIR", file=sys.stderr)
    return 2
  try:
    text, paths = sweep_report.write(argv[0])
  except FileNotFoundError as e:
    print(f"error: {e.filename}: not a sweep workdir (no sweep.json)",
          file=sys.stderr)
    return 2
  print(text, end="")
  print("wrote " + ", ".join(paths))
  return 0


if __name__ == "__main__":
  sys.exit(main())
