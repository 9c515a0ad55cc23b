"""Trains and evaluates MCUR on MOSI: `python -m experiments.mosi` (see experiments/launch.py)."""

from experiments import launch

if __name__ == "__main__":
  launch.run("mosi")
