"""Trains and evaluates MCUR on MOSEI: `python -m experiments.mosei` (see experiments/launch.py)."""

from experiments import launch

if __name__ == "__main__":
  launch.run("mosei")
