"""The evaluation protocols of DESIGN section 2, on a run's models.

* fixed: every sample under each of the 7 combinations, restricted to the
  modalities it natively has -> metrics per combination and their Avg.
* missing_rate: for each rate r in `config.missing_rates`, `K =
  config.missing_rate_draws` masks drawn with GCNet's semantics
  (`combos.missing_rate_mask`: fraction r of the (sample, modality) entries
  dropped, at least one modality kept per sample), each intersected with
  native availability. Draw k of rate index i uses the NumPy seed
  (config.missing_rate_seed, i, k), so every run, seed and evaluation sees
  the same masks; metrics are averaged over the K draws.

Each sample's prediction comes from the member (`regime.Members`) that
serves its combination: the seed's single model in the mixed regime; in the
per-condition regime the model of the fixed combination (fixed protocol) or
of the sample's drawn combination (missing-rate protocol; a sample left with
no modality goes to the `atv` model).

One compiled function runs every protocol: it predicts `MASK_SETS` mask
sets over a fixed-size chunk of rows, so training, the final evaluation and
`experiments.evaluate` share it and give bit-identical outputs.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mcur_jax import combos
from mcur_jax import data as data_lib
from mcur_jax import metrics
from mcur_jax import model as model_lib
from mcur_jax import schema

# Mask sets predicted per compiled call: the 7 combinations of the fixed
# protocol, or 7 missing-rate draws at a time.
MASK_SETS = len(combos.NAMES)


def chunk_size(eval_batch_size: int, mesh) -> int:
  """Rows per compiled call: `eval_batch_size` rounded up to the devices."""
  devices = mesh.devices.size
  return -(-eval_batch_size // devices) * devices


def device_arrays(split: data_lib.Split, sharding, pad_to: int = 1) -> dict:
  """A split's model inputs as device arrays with `sharding`, rows padded
  with zeros (no modality available) to a multiple of `pad_to`."""
  n = len(split)
  pad = -n % pad_to
  host = {**split.features, "available": split.available,
          "label": split.label}
  host = {k: np.concatenate([v, np.zeros((pad, *v.shape[1:]), v.dtype)])
          for k, v in host.items()}
  return {k: jax.make_array_from_process_local_data(sharding, v)
          for k, v in host.items()}


def to_host(tree):
  """NumPy copies of replicated arrays: each process reads its local replica
  (`jax.device_get` would need every shard addressable, false multi-host)."""
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)


def make_predict(config, graphdef, mesh, compiles=None):
  """predict(params [M...], arrays, masks [C, N, 3]) -> (pred [C, M, N, K],
  s [C, M, N]) as NumPy, for any number C of mask sets over the split's N
  rows (the padding rows of `arrays` are predicted with no modality and
  dropped). Traces are counted in `compiles["evaluate"]` (a Counter) when
  given."""
  chunk_sharding = NamedSharding(mesh, P("data"))
  mask_sharding = NamedSharding(mesh, P(None, "data"))

  @functools.partial(jax.jit, out_shardings=NamedSharding(mesh, P()))
  def predict_chunk(params, part, masks):
    if compiles is not None:
      compiles["evaluate"] += 1
    part = jax.lax.with_sharding_constraint(part, chunk_sharding)
    masks = jax.lax.with_sharding_constraint(masks, mask_sharding)
    features = {m: part[m] for m in schema.MODALITIES}

    def one_set(mask):
      out = jax.vmap(lambda p: model_lib.apply(graphdef, p, features, mask)
                     )(params)
      return out["pred"], out["s"]
    return jax.lax.map(one_set, masks)

  chunk = chunk_size(config.eval_batch_size, mesh)

  def predict(params, arrays, masks):
    sets, rows = masks.shape[:2]
    n = arrays["label"].shape[0]
    padded = np.zeros((sets - sets % -MASK_SETS, n, 3), bool)
    padded[:sets, :rows] = masks
    padded[sets:, :rows] = masks[-1]
    masks = padded
    parts = []
    for j in range(0, len(masks), MASK_SETS):
      row = [to_host(predict_chunk(
          params, jax.tree.map(lambda x: x[i:i + chunk], arrays),
          jnp.asarray(masks[j:j + MASK_SETS, i:i + chunk])))
             for i in range(0, n, chunk)]
      parts.append(tuple(np.concatenate(x, axis=2) for x in zip(*row)))
    return tuple(np.concatenate(x)[:sets, :, :rows] for x in zip(*parts))

  return predict


def fixed_masks(available: np.ndarray) -> np.ndarray:
  """[7, N, 3]: each combination restricted to native availability."""
  return combos.MASKS[:, None, :] & available[None]


def combo_index(mask: np.ndarray) -> np.ndarray:
  """Index into `combos.NAMES` of each [..., 3] mask; no modality -> atv."""
  position = np.full(len(combos.BITS) + 1, len(combos.NAMES) - 1)
  position[combos.BITS] = np.arange(len(combos.NAMES))
  return position[np.asarray(combos.bits_of(mask))]


def route(values: np.ndarray, owner: np.ndarray,
          which: np.ndarray) -> np.ndarray:
  """[C, M, N, ...] member outputs -> [C, S, N, ...]: sample n of set c
  from the member owner[s, which[c, n]]."""
  c, n = np.ix_(np.arange(values.shape[0]), np.arange(values.shape[2]))
  return np.stack([values[c, owner[s][which], n]
                   for s in range(owner.shape[0])], 1)


def member_scores(task: str, pred: np.ndarray, split, members):
  """Per member: (validation metrics of the combinations it serves, its
  selection score = their weighted headline mean), from fixed-protocol
  predictions [7, M, N, K]."""
  key = metrics.HEADLINE[task]
  per_member, scores = [], []
  for m in range(len(members)):
    served = np.flatnonzero(members.selection[m])
    found = {combos.NAMES[c]: metrics.compute(task, pred[c, m], split.label)
             for c in served}
    per_member.append(found)
    scores.append(sum(members.selection[m, c] * found[combos.NAMES[c]][key]
                      for c in served))
  return per_member, np.array(scores)


def fixed(predict, params, arrays, split, members, task, task_loss):
  """The fixed protocol: per seed, {combination: metrics (with the
  uncertainty metrics)}; also the routed (pred, s) [7, S, N, ...]."""
  pred, s = predict(params, arrays, fixed_masks(split.available))
  which = np.broadcast_to(np.arange(len(combos.NAMES))[:, None],
                          (len(combos.NAMES), len(split)))
  pred, s = route(pred, members.owner, which), route(s, members.owner, which)
  per_seed = [{name: metrics.compute(task, pred[c, i], split.label, s[c, i],
                                     task_loss)
               for c, name in enumerate(combos.NAMES)}
              for i in range(members.owner.shape[0])]
  return per_seed, pred, s


def missing_rate_masks(config, available: np.ndarray) -> np.ndarray:
  """[R, K, N, 3]: the K fixed-seed draws of every rate, intersected with
  native availability."""
  n = len(available)
  return np.stack([np.stack([
      combos.missing_rate_mask(
          np.random.default_rng((config.missing_rate_seed, i, k)), n, r)
      & available for k in range(config.missing_rate_draws)])
                   for i, r in enumerate(config.missing_rates)])


def missing_rate(config, predict, params, arrays, split, members, task):
  """The missing-rate protocol: {rate: per seed {metric: mean over the K
  draws}}, and {rate: samples left without a modality, mean over draws}."""
  masks = missing_rate_masks(config, split.available)  # [R, K, N, 3]
  rates, draws = masks.shape[:2]
  flat = masks.reshape(rates * draws, len(split), 3)
  pred, _ = predict(params, arrays, flat)
  pred = route(pred, members.owner, combo_index(flat))
  pred = pred.reshape(rates, draws, *pred.shape[1:])
  per_rate, empty = {}, {}
  for i, r in enumerate(config.missing_rates):
    per_seed = []
    for s in range(pred.shape[2]):
      found = [metrics.compute(task, pred[i, k, s], split.label)
               for k in range(draws)]
      per_seed.append({key: float(np.mean([f[key] for f in found]))
                       for key in found[0]})
    per_rate[f"{r:.1f}"] = per_seed
    empty[f"{r:.1f}"] = float((~masks[i].any(-1)).sum(-1).mean())
  return per_rate, empty


PROTOCOLS = ("fixed", "missing_rate", "all")


def run(config, predict, params, split, arrays, members, task,
        protocol: str = "all") -> dict:
  """Evaluates the selected `params` [M...] on one split.

  Returns {"fixed": per seed {combination: metrics}, "outputs": (pred, s)
  routed [7, S, N, ...], "fixed_without_modality": {combination: samples
  with none of its modalities}} and/or {"missing_rate": {rate: per seed metrics},
  "without_modality": {rate: count}}, by `protocol` (fixed | missing_rate
  | all).
  """
  if protocol not in PROTOCOLS:
    raise ValueError(f"protocol {protocol!r} not in {PROTOCOLS}")
  out = {}
  if protocol in ("fixed", "all"):
    per_seed, pred, s = fixed(predict, params, arrays, split, members, task,
                              config.task_loss)
    empty = ~fixed_masks(split.available).any(-1)  # [7, N]
    out.update(fixed=per_seed, outputs=(pred, s), fixed_without_modality={
        name: int(empty[c].sum()) for c, name in enumerate(combos.NAMES)})
  if protocol in ("missing_rate", "all"):
    out["missing_rate"], out["without_modality"] = missing_rate(
        config, predict, params, arrays, split, members, task)
  return out


def representations(graphdef, params, members, split) -> dict:
  """The first seed's fused representation h and MCB-CL projection z of a
  split under each combination: {"h": [7, N, D], "z": [7, N, P]}."""
  masks = fixed_masks(split.available)
  apply = jax.jit(lambda p, mask: model_lib.apply(graphdef, p, split.features,
                                                  mask))
  out = {"h": [], "z": []}
  for c in range(len(combos.NAMES)):
    member = members.owner[0, c]
    found = apply(jax.tree.map(lambda x: x[member], params), masks[c])
    for k in out:
      out[k].append(np.asarray(found[k]))
  return {k: np.stack(v) for k, v in out.items()}
