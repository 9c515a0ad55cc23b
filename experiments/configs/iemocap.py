"""MCUR on IEMOCAP, 4-way (or 6-way with --config.dataset=iemocap6),
leave-one-session-out; fields as in mosi.py.

    python -m experiments.iemocap --data_dir prepared/iemocap4   # all 5 folds
    python -m experiments.iemocap --config.fold=2                # session 2 only
"""

import ml_collections

from experiments.configs import mosi


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = mosi.get_config(arg)
  c.dataset = "iemocap4"
  # Held-out session 1..5; 0 = run all five folds and average them.
  c.fold = 0
  c.task_loss = "ce"
  return c
