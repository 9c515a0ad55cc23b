"""Training regimes: which models a run trains, and which one serves which combination.

* "mixed" (MCUR, DESIGN section 2): one model per seed; each training
  sample draws its combination per step; the model serves every
  realisable combination (all 7 on a dataset with the three modalities)
  and is selected on their average on validation.
* "per_condition" (MoMKE): one model per (seed, combination), the
  combination fixed for every sample for the whole run (after an optional
  full-modality first stage, `full_modality_epochs`); each model is
  selected on validation under its own combination and serves only it.

Both are a stack of "members" trained together with `jax.vmap`: a member is
a seed plus a row of combination draw weights (the config's for mixed,
one-hot for per-condition), so one compiled epoch serves both regimes.

Only the combinations the dataset can realise (`combos.realisable`) are
drawn, served and scored: on a dataset without video, `v av tv atv` get no
draw weight, no per-condition model, and no place in the selection score.
"""

import dataclasses

import numpy as np

from mcur_jax import combos

REGIMES = ("mixed", "per_condition")


@dataclasses.dataclass(frozen=True)
class Members:
  """The models of a run, in stacking order.

  Attributes:
    combos: indices into `combos.NAMES` of the run's (realisable)
      combinations, in NAMES order.
    seeds: [M] seed of each member (parameters and data order).
    condition: [M] index into `combos.NAMES` of the member's fixed
      combination; -1 for a mixed member.
    draw_weights: [M, 7] training draw weights over the combinations.
    selection: [M, 7] weights of each combination in the member's
      validation score (the mean over the combinations it serves).
    owner: [S, 7] the member serving combination c for the s-th seed (-1
      for a combination the run does not serve).
  """
  combos: np.ndarray
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


def members(config, served: np.ndarray) -> Members:
  """The members of `config.regime` over `config.seeds`, for the
  combinations `served` (indices into `combos.NAMES`, e.g.
  `combos.realisable(...)`). The regime was checked by `validate.check`
  when the run started; any value but "mixed" is per-condition here."""
  seeds = np.asarray(config.seeds, np.int32)
  served = np.asarray(served)
  n, k, c = len(seeds), len(combos.NAMES), len(served)
  on = np.zeros(k, np.float32)
  on[served] = 1
  if config.regime == "mixed":
    weights = np.asarray(config.combo_weights, np.float32) * on
    return Members(combos=served, seeds=seeds,
                   condition=np.full(n, -1, np.int32),
                   draw_weights=np.tile(weights, (n, 1)),
                   selection=np.tile(on / c, (n, 1)),
                   owner=np.tile(np.where(on > 0, 0, -1), (n, 1))
                   + np.where(on > 0, np.arange(n)[:, None], 0))
  eye = np.eye(k, dtype=np.float32)[served]
  owner = np.full((n, k), -1)
  owner[:, served] = np.arange(n * c).reshape(n, c)
  return Members(combos=served, seeds=np.repeat(seeds, c),
                 condition=np.tile(served.astype(np.int32), n),
                 draw_weights=np.tile(eye, (n, 1)),
                 selection=np.tile(eye, (n, 1)), owner=owner)
