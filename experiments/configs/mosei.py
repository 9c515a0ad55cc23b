"""MCUR on CMU-MOSEI (sentiment regression in [-3, 3]); fields as in mosi.py."""

import ml_collections

from experiments.configs import mosi


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = mosi.get_config(arg)
  c.dataset = "mosei"
  if not arg:
    # Ten times MOSI's data: fewer passes (not tuned: no MOSEI features
    # are available to the project).
    c.num_epochs = 15
    # Ten times MOSI's validation split too: chunks of 512 utterances.
    c.eval_batch_size = 512
  return c
