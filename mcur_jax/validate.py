"""Checks a run's config against its data before anything is built.

`check` raises `ConfigError` naming the first field whose value cannot
run, so the entry points can turn bad configs (like bad data,
`schema.DataError`) into one `error:` line and exit status 2, while any
other exception, JAX's own included, keeps its traceback.
"""

import difflib
import numbers

from mcur_jax import combos
from mcur_jax import context
from mcur_jax import data
from mcur_jax import losses
from mcur_jax import model
from mcur_jax import regime
from mcur_jax import schema
from mcur_jax import transfer

# How the training combination is drawn: per utterance, or one per window.
COMBO_DRAWS = ("utterance", "window")
# Which epoch's parameters a run keeps per seed (config.selection).
SELECTIONS = ("valid", "last")


class ConfigError(ValueError):
  """A config value or flag that cannot run; the message names it
  (`config.FIELD`, or the flag)."""

  def __init__(self, field: str, problem: str):
    self.field, self.problem = field, problem
    super().__init__(f"{field}: {problem}")


# Names people reach for that the configs spell otherwise, for the hint of
# a misspelt field (spelling distance alone takes num_seeds for num_heads).
FIELD_ALIASES = {"num_seeds": "seeds", "n_seeds": "seeds", "seed": "seeds",
                 "epochs": "num_epochs", "lr": "learning_rate",
                 "batch": "batch_size", "dropout_rate": "dropout"}


def did_you_mean(field: str, fields) -> str:
  """"; did you mean 'F'?" for the config field among `fields` that a
  misspelt `field` most likely means (`FIELD_ALIASES`, else the closest
  spelling), or "" for none."""
  fields = list(fields)
  close = ([FIELD_ALIASES[field]] if FIELD_ALIASES.get(field) in fields
           else difflib.get_close_matches(field, fields, n=1))
  return f"; did you mean {close[0]!r}?" if close else ""


def _error(field: str, problem: str) -> ConfigError:
  return ConfigError(f"config.{field}", problem)


def _one_of(config, field: str, allowed) -> None:
  if config[field] not in allowed:
    raise _error(field, f"{config[field]!r}, not one of {tuple(allowed)}")


def check(config, manifest: schema.Manifest, devices: int) -> None:
  """Raises ConfigError for the first field of `config` that cannot run on
  `manifest`'s data over `devices` devices."""
  if config.dataset != manifest.dataset:
    raise _error("dataset", f"{config.dataset!r}, but the data in "
                 f"{config.data_dir} is {manifest.dataset!r}: set "
                 f"config.dataset = {manifest.dataset!r} (the entry points "
                 "take it from the manifest)")
  seeds = tuple(config.seeds)
  if not seeds:
    raise _error("seeds", "empty")
  if len(set(seeds)) < len(seeds) or not all(
      isinstance(seed, numbers.Integral) and not isinstance(seed, bool)
      and 0 <= seed < 2**31 for seed in seeds):
    raise _error("seeds", f"{seeds}: need distinct integers in [0, 2**31) "
                 "(a repeated seed trains the same model twice)")
  _one_of(config, "task_loss", losses.TASK_LOSSES[manifest.task])
  _one_of(config, "regime", regime.REGIMES)
  _one_of(config, "positives", losses.POSITIVES)
  _one_of(config, "regression_categories", losses.REGRESSION_CATEGORIES)
  _one_of(config, "missing_tokens", model.MISSING_TOKENS)
  _one_of(config, "compute_dtype", model.COMPUTE_DTYPES)
  _one_of(config, "context_position_init", context.POSITION_INITS)
  _one_of(config, "context_kind", context.CONTEXT_KINDS)
  _one_of(config, "combo_draw", COMBO_DRAWS)
  _one_of(config, "selection", SELECTIONS)
  _one_of(config, "validation", data.VALIDATION)
  folds = manifest.folds["values"] if manifest.folds else []
  if config.fold and config.fold not in folds:
    raise _error("fold", f"{config.fold}: " + (
        f"one of {folds} (the held-out {manifest.folds['key']}), or 0 for "
        "all" if folds else f"the data in {config.data_dir} has fixed "
        "train/valid/test splits: 0"))
  if config.validation == "session" and not manifest.folds:
    raise _error("validation", f"'session' needs a dataset with folds; "
                 f"the data in {config.data_dir} has fixed splits")
  weights = tuple(config.combo_weights)
  served = combos.realisable(present_modalities(manifest))
  if (len(weights) != len(combos.NAMES) or min(weights) < 0
      or not sum(weights[c] for c in served)):
    raise _error("combo_weights", f"{weights}: need {len(combos.NAMES)} "
                      "non-negative weights, not all 0 on the combinations "
                      "the data has (" + " ".join(combos.NAMES[c]
                                                  for c in served) + ")")
  # Counts and sizes (0 widths would divide by zero in the model, a negative
  # layer count builds none, a negative warm-up starts the schedule partway
  # down its decay).
  for field, low in (("hidden_dim", 1), ("mlp_ratio", 1), ("proj_dim", 1),
                     ("num_layers", 0), ("warmup_epochs", 0),
                     ("sugr_warmup_epochs", 0), ("full_modality_epochs", 0),
                     ("context_layers", 0), ("context_window", 1),
                     ("context_max_distance", 0), ("context_speakers", 1),
                     ("batch_size", 1), ("num_epochs", 1),
                     ("checkpoint_every", 1), ("missing_rate_draws", 1),
                     ("missing_rate_seed", 0)):
    if config[field] < low:
      raise _error(field, f"{config[field]}, must be >= {low}")
  # The context's heads matter only to a context Transformer (the GRU has
  # none).
  heads = ("num_heads", "context_heads") if (
      config.context_layers and config.context_kind == "transformer") else (
          "num_heads",)
  for field in heads:
    if config[field] < 1 or config.hidden_dim % config[field]:
      raise _error(field, f"{config[field]} does not divide hidden_dim "
                        f"{config.hidden_dim}")
  if config.batch_size % devices:
    raise _error("batch_size", f"{config.batch_size} does not divide by "
                 f"the {devices} devices (config.num_devices chooses how "
                 "many are used)")
  if config.context_layers and config.context_window > config.batch_size:
    raise _error("context_window", f"{config.context_window} exceeds "
                 f"batch_size {config.batch_size}: training windows would be "
                 "cut to the batch while evaluation windows are not")
  chunk = transfer.chunk_size(config.eval_batch_size, devices)
  if config.context_layers and config.context_window > chunk:
    raise _error("context_window", f"{config.context_window} exceeds "
                      f"eval_batch_size {config.eval_batch_size}: a window "
                      "is predicted in one evaluation chunk")
  for field in ("speaker_norm", "context_means"):
    listed = modalities(config, field)
    for m in listed:
      if not manifest.dims[m]:
        rest = ",".join(x for x in listed if manifest.dims[x])
        raise _error(field, f"{m}: the data in {config.data_dir} has no {m}"
                     f"; leave it out: --config.{field}={rest}")
  # Values that would run but mean nothing (NaN fails each test too): tau 0
  # makes MCB-CL NaN, a non-positive s_max empties SUGR's clip (every s
  # -s_max, no gradient), a negative learning rate ascends the loss.
  for field in ("tau", "sugr_s_max", "learning_rate", "grad_clip_norm"):
    if not config[field] > 0:
      raise _error(field, f"{config[field]}, must be > 0")
  # NaN fails too (a NaN checkpoint_seconds would save only the last).
  for field in ("weight_decay", "mcb_weight", "checkpoint_seconds"):
    if not config[field] >= 0:
      raise _error(field, f"{config[field]}, must be >= 0")
  if not 0 <= config.sugr_beta <= 1:
    raise _error("sugr_beta", f"{config.sugr_beta}, must be in [0, 1]")
  if not 0 <= config.dropout < 1:
    raise _error("dropout", f"{config.dropout}, must be in [0, 1)")
  if not 0 <= config.final_lr_fraction <= 1:
    raise _error("final_lr_fraction",
                 f"{config.final_lr_fraction}, must be in [0, 1]")
  if not 0 <= config.ema_decay < 1:
    raise _error("ema_decay", f"{config.ema_decay}, must be in [0, 1) (0: "
                 "off; 1 would keep the initial parameters)")
  for rate in config.missing_rates:
    if not isinstance(rate, numbers.Real) or not 0 <= rate <= 0.7 + 1e-9:
      raise _error("missing_rates", f"{rate!r} outside [0, 0.7]")
  names = [combos.rate_name(r) for r in config.missing_rates]
  twice = sorted({n for n in names if names.count(n) > 1})
  if twice:
    raise _error("missing_rates", f"{', '.join(twice)} listed twice")


def check_devices(config, available: int, processes: int = 1) -> None:
  """Raises ConfigError unless config.num_devices is 0 (all) or 1 to the
  `available` devices (a run on fewer than asked would train on another
  mesh than its config says); a job of several `processes` uses them all,
  since a process left without a device of the mesh could not feed it."""
  if not 0 <= config.num_devices <= available:
    raise _error("num_devices", f"{config.num_devices}, must be 0 (all) or "
                 f"between 1 and {available}, the devices JAX finds (on a "
                 "CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N "
                 "set before the run makes N)")
  if processes > 1 and config.num_devices not in (0, available):
    raise _error("num_devices", f"{config.num_devices}: a job of {processes} "
                 "processes uses every device (0), each process feeding its "
                 "own")


def modalities(config, field: str) -> tuple[str, ...]:
  """The modalities a config field lists ("audio,text" -> their names)."""
  try:
    return schema.modality_names(config[field])
  except ValueError as e:
    raise _error(field, str(e)) from None


def config_task(config) -> str | None:
  """The task (schema.TASKS) that config.task_loss trains; None for a loss
  of no task (which `check` reports)."""
  for task, names in losses.TASK_LOSSES.items():
    if config.task_loss in names:
      return task
  return None


def present_modalities(manifest: schema.Manifest) -> list[bool]:
  """[3] bool: the modalities the dataset has (a non-zero dimension and
  some utterance that has it)."""
  return [manifest.dims[m] > 0 and any(info["available"][m]
                                       for info in manifest.splits.values())
          for m in schema.MODALITIES]
