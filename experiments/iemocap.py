"""Trains and evaluates MCUR on IEMOCAP (all 5 folds, or one with --config.fold=k): `python -m experiments.iemocap` (see experiments/launch.py)."""

from experiments import launch

if __name__ == "__main__":
  launch.run("iemocap")
