"""The evaluation protocols of DESIGN section 2, on a run's models, in context.

Every utterance is predicted exactly once, in its evaluation window
(`groups.EvalLayout`: the whole group when it fits `context_window`, else
the window centred nearest to it), so with context on both sides where its
group has it.

* fixed: every utterance under each of the run's combinations (those the
  dataset can realise, `combos.realisable`), a whole window under one
  combination, restricted to the modalities each utterance natively has ->
  metrics per combination and their Avg.
* missing_rate: for each rate r in `config.missing_rates`, `K =
  config.missing_rate_draws` masks drawn per utterance and modality with
  GCNet's semantics over the modalities the dataset has
  (`combos.missing_rate_mask`: fraction r of the (utterance, modality)
  entries dropped, at least one modality kept per utterance), each
  intersected with native availability. Draw k of rate r uses the NumPy
  seed (config.missing_rate_seed, combos.rate_seed(r), k), so every run,
  seed and evaluation sees the same masks for a rate, whichever other
  rates it lists; metrics are averaged over the K draws.

Each utterance's prediction comes from the member (`regime.Members`) that
serves its combination: the seed's single model in the mixed regime; in the
per-condition regime the model of the fixed combination (fixed protocol;
also for an utterance that natively lacks one of its modalities, as that
combination's test condition includes it) or of the combination the
utterance is left with, its draw intersected with what it natively has
(missing-rate protocol; one left with no modality goes to the model of the
run's fullest combination). No real dataset here lacks a modality for some
utterances only, so the two readings coincide on them.

One compiled function runs every protocol: it predicts as many mask sets
as the run has combinations (`make_predict`'s `sets`: 7, or 3 where a
modality is missing from the dataset) over a fixed-size chunk of
utterances and their window slots, so training, the final evaluation and
`experiments.evaluate` share it and give bit-identical outputs.
"""

import dataclasses
import functools

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mcur_jax import combos
from mcur_jax import data as data_lib
from mcur_jax import groups as groups_lib
from mcur_jax import metrics
from mcur_jax import model as model_lib
from mcur_jax import schema
from mcur_jax import transfer


@dataclasses.dataclass(frozen=True)
class Inputs:
  """A split laid out in evaluation windows (`groups.EvalLayout`), on the
  devices."""

  split: data_lib.Split
  layout: groups_lib.EvalLayout
  # Per chunk of the layout, (utterances, windows) as replicated device
  # arrays: per utterance position the modality features; per window slot
  # "index" (the chunk-local utterance it holds), "segment", "rank",
  # "speaker". Cut on the host once, so a predict does no device work but
  # its compiled calls.
  chunks: tuple

  @classmethod
  def of(cls, split: data_lib.Split, config, mesh) -> "Inputs":
    layout = groups_lib.EvalLayout.of(
        groups_lib.Groups.of(split), groups_lib.context_window(config),
        transfer.chunk_size(config.eval_batch_size, mesh.devices.size),
        per_slot=bool(model_lib.mean_modalities(
            config.context_layers, schema.modality_names(config.context_means),
            {m: x.shape[1] for m, x in split.features.items()})))
    rows = np.maximum(layout.rows, 0)
    real = (layout.rows >= 0)[:, None]
    utterances = {m: np.where(real, split.features[m][rows], 0).astype(
        np.float32) for m in schema.MODALITIES}
    windows = {"index": layout.local, "segment": layout.segment,
               "rank": layout.rank, "speaker": layout.speaker}
    u, w = layout.utterances, layout.slots
    repl = NamedSharding(mesh, P())
    return cls(split=split, layout=layout, chunks=tuple(
        (transfer.to_device({k: v[c * u:(c + 1) * u]
                             for k, v in utterances.items()}, repl),
         transfer.to_device({k: v[c * w:(c + 1) * w]
                             for k, v in windows.items()}, repl))
        for c in range(len(layout.rows) // u)))


def make_predict(graphdef, mesh, sets: int, compute_dtype: str,
                 compiles=None):
  """predict(params [M...], inputs, masks [C, N, 3], keys) -> {key: [C, M,
  N, ...]} as NumPy for `keys` among pred, s, h, z: the outputs of each of
  the C mask sets (per utterance of the split) and members, each utterance
  predicted in its window. Each compiled call predicts `sets` mask sets:
  the run's number of combinations (`len(members.combos)`), so the fixed
  protocol is one call per chunk and no call predicts a combination the
  run does not have; the missing-rate draws go `sets` at a time; matmuls
  at `model.matmul_precision(compute_dtype)`. Traces are counted in
  `compiles["evaluate"]` (a Counter) when given."""
  precision = model_lib.matmul_precision(compute_dtype)
  sharded = NamedSharding(mesh, P("data"))
  mask_sharding = NamedSharding(mesh, P(None, "data"))

  @functools.partial(jax.jit, out_shardings=NamedSharding(mesh, P()))
  def predict_chunk(params, utterances, windows, masks):
    if compiles is not None:
      compiles["evaluate"] += 1
    utterances = jax.lax.with_sharding_constraint(utterances, sharded)
    windows = jax.lax.with_sharding_constraint(windows, sharded)
    masks = jax.lax.with_sharding_constraint(masks, mask_sharding)
    with jax.default_matmul_precision(precision):
      return jax.lax.map(lambda mask: jax.vmap(
          lambda p: model_lib.apply(graphdef, p, utterances, mask,
                                    windows=windows))(params), masks)

  def predict(params, inputs: Inputs, masks, keys=("pred", "s")):
    layout = inputs.layout
    u = layout.utterances
    # Each utterance position under its row's mask; padding under none.
    masks = masks[:, np.maximum(layout.rows, 0)] & (
        layout.rows >= 0)[None, :, None]
    count = len(masks)
    padded = np.zeros((count - count % -sets, *masks.shape[1:]), bool)
    padded[:count], padded[count:] = masks, masks[-1]
    parts = []
    for j in range(0, len(padded), sets):
      row = [transfer.to_host({k: v for k, v in predict_chunk(
          params, utterances, windows,
          padded[j:j + sets, c * u:(c + 1) * u]).items() if k in keys})
             for c, (utterances, windows) in enumerate(inputs.chunks)]
      parts.append({k: np.concatenate([r[k] for r in row], axis=2)
                    for k in keys})
    return {k: np.concatenate([p[k] for p in parts])[:count][:, :, layout.owner]
            for k in keys}

  return predict


def fixed_masks(available: np.ndarray, served: np.ndarray) -> np.ndarray:
  """[C, N, 3]: each served combination restricted to native availability."""
  return combos.MASKS[served][:, None, :] & available[None]


def combo_index(mask: np.ndarray, served: np.ndarray) -> np.ndarray:
  """Index into `combos.NAMES` of each [..., 3] mask; no modality -> the
  fullest served combination."""
  position = np.full(len(combos.BITS) + 1, served[-1])
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
  predictions [C, M, N, K] over `members.combos`."""
  key = metrics.HEADLINE[task]
  per_member, scores = [], []
  for m in range(len(members)):
    found = {combos.NAMES[c]: metrics.compute(task, pred[i, m], split.label)
             for i, c in enumerate(members.combos)
             if members.selection[m, c]}
    per_member.append(found)
    scores.append(sum(members.selection[m, c] * found[combos.NAMES[c]][key]
                      for c in members.combos if members.selection[m, c]))
  return per_member, np.array(scores)


def fixed(predict, params, inputs: Inputs, members, task, task_loss):
  """The fixed protocol: per seed, {combination: metrics (with the
  uncertainty metrics)}; also the routed outputs {pred, s, h, z} [C, S, N,
  ...] over `members.combos`."""
  split = inputs.split
  out = predict(params, inputs, fixed_masks(split.available, members.combos),
                keys=("pred", "s", "h", "z"))
  which = np.broadcast_to(members.combos[:, None],
                          (len(members.combos), len(split)))
  out = {k: route(v, members.owner, which) for k, v in out.items()}
  per_seed = [{combos.NAMES[c]: metrics.compute(
      task, out["pred"][i, s], split.label, out["s"][i, s], task_loss)
               for i, c in enumerate(members.combos)}
              for s in range(members.owner.shape[0])]
  return per_seed, out


def missing_rate_masks(config, available: np.ndarray,
                       present=None) -> np.ndarray:
  """[R, K, N, 3]: the K fixed-seed draws of every rate over the `present`
  modalities (default all), intersected with native availability."""
  n = len(available)
  return np.stack([np.stack([
      combos.missing_rate_mask(
          np.random.default_rng((config.missing_rate_seed,
                                 combos.rate_seed(r), k)), n, r,
          present) & available for k in range(config.missing_rate_draws)])
                   for r in config.missing_rates])


def missing_rate(config, predict, params, inputs: Inputs, members, task,
                 present):
  """The missing-rate protocol: {rate: per seed {metric: mean over the K
  draws}}, and {rate: utterances left without a modality, mean over
  draws}."""
  split = inputs.split
  masks = missing_rate_masks(config, split.available, present)
  rates, draws = masks.shape[:2]
  flat = masks.reshape(rates * draws, len(split), 3)
  pred = predict(params, inputs, flat, keys=("pred",))["pred"]
  pred = route(pred, members.owner, combo_index(flat, members.combos))
  pred = pred.reshape(rates, draws, *pred.shape[1:])
  per_rate, empty = {}, {}
  for i, r in enumerate(config.missing_rates):
    per_seed = []
    for s in range(pred.shape[2]):
      found = [metrics.compute(task, pred[i, k, s], split.label)
               for k in range(draws)]
      per_seed.append({key: float(np.mean([f[key] for f in found]))
                       for key in found[0]})
    per_rate[combos.rate_name(r)] = per_seed
    empty[combos.rate_name(r)] = float((~masks[i].any(-1)).sum(-1).mean())
  return per_rate, empty


PROTOCOLS = ("fixed", "missing_rate", "all")


def run(config, predict, params, inputs: Inputs, members, task, present,
        protocol: str = "all") -> dict:
  """Evaluates the selected `params` [M...] on one split.

  Returns {"fixed": per seed {combination: metrics}, "outputs": {pred, s,
  h, z} routed [C, S, N, ...], "fixed_without_modality": {combination:
  utterances with none of its modalities}} and/or {"missing_rate": {rate:
  per seed metrics}, "without_modality": {rate: count}}, by `protocol`
  (fixed | missing_rate | all); `present` [3] bool are the modalities the
  dataset has.
  """
  if protocol not in PROTOCOLS:
    raise ValueError(f"protocol {protocol!r} not in {PROTOCOLS}")
  out = {}
  if protocol in ("fixed", "all"):
    per_seed, outputs = fixed(predict, params, inputs, members, task,
                              config.task_loss)
    empty = ~fixed_masks(inputs.split.available, members.combos).any(-1)
    out.update(fixed=per_seed, outputs=outputs, fixed_without_modality={
        combos.NAMES[c]: int(empty[i].sum())
        for i, c in enumerate(members.combos)})
  if protocol in ("missing_rate", "all"):
    out["missing_rate"], out["without_modality"] = missing_rate(
        config, predict, params, inputs, members, task, present)
  return out
