"""Training regimes: which models a run trains, and which one serves which combination.

* "mixed" (MCUR, DESIGN section 2): one model per seed; each training
  sample draws its combination per step; the model serves all 7
  combinations and is selected on the average over the 7 on validation.
* "per_condition" (MoMKE): one model per (seed, combination), the
  combination fixed for every sample for the whole run (after an optional
  full-modality first stage, `full_modality_epochs`); each model is
  selected on validation under its own combination and serves only it.

Both are a stack of "members" trained together with `jax.vmap`: a member is
a seed plus a row of combination draw weights (the config's for mixed,
one-hot for per-condition), so one compiled epoch serves both regimes.
"""

import dataclasses

import numpy as np

from mcur_jax import combos

REGIMES = ("mixed", "per_condition")


@dataclasses.dataclass(frozen=True)
class Members:
  """The models of a run, in stacking order.

  Attributes:
    seeds: [M] seed of each member (parameters and data order).
    condition: [M] index into `combos.NAMES` of the member's fixed
      combination; -1 for a mixed member.
    draw_weights: [M, 7] training draw weights over the combinations.
    selection: [M, 7] weights of each combination in the member's
      validation score (the mean over the combinations it serves).
    owner: [S, 7] the member serving combination c for the s-th seed.
  """
  seeds: np.ndarray
  condition: np.ndarray
  draw_weights: np.ndarray
  selection: np.ndarray
  owner: np.ndarray

  def __len__(self) -> int:
    return len(self.seeds)

  @property
  def per_condition(self) -> bool:
    return bool((self.condition >= 0).any())

  def describe(self, i: int) -> dict:
    """The JSON fields that identify member i in logs."""
    out = {"seed": int(self.seeds[i])}
    if self.condition[i] >= 0:
      out["condition"] = combos.NAMES[self.condition[i]]
    return out


def members(config) -> Members:
  """The members of `config.regime` over `config.seeds`."""
  seeds = np.asarray(config.seeds, np.int32)
  n, k = len(seeds), len(combos.NAMES)
  if config.regime == "mixed":
    weights = np.asarray(config.combo_weights, np.float32)
    if weights.shape != (k,) or (weights < 0).any() or not weights.sum():
      raise ValueError(f"combo_weights {tuple(config.combo_weights)}: need "
                       f"{k} non-negative weights, not all 0")
    return Members(seeds=seeds, condition=np.full(n, -1, np.int32),
                   draw_weights=np.tile(weights, (n, 1)),
                   selection=np.full((n, k), 1 / k, np.float32),
                   owner=np.tile(np.arange(n)[:, None], (1, k)))
  if config.regime == "per_condition":
    eye = np.eye(k, dtype=np.float32)
    return Members(seeds=np.repeat(seeds, k),
                   condition=np.tile(np.arange(k, dtype=np.int32), n),
                   draw_weights=np.tile(eye, (n, 1)),
                   selection=np.tile(eye, (n, 1)),
                   owner=np.arange(n * k).reshape(n, k))
  raise ValueError(f"regime {config.regime!r} not in {REGIMES}")
