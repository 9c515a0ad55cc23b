"""One run (one fold, or a dataset with fixed splits) as it trains: `Run`.

`Run.setup` loads the data of `config` (fold, validation part, per-speaker
normalisation), checks the config against it and the devices, puts the
training table, its window tables and the evaluation windows on the
device, builds the members (`regime.py`), the model, the optimizer, the
initial state (one per member, stacked for `jax.vmap`) and the compiled
epoch, predict and selection functions. `fit.fit` trains it and
`train.finish` evaluates it.
"""

import collections
import dataclasses
import os
import time

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mcur_jax import combos
from mcur_jax import data as data_lib
from mcur_jax import epoch as epoch_lib
from mcur_jax import evaluation
from mcur_jax import groups
from mcur_jax import model as model_lib
from mcur_jax import regime
from mcur_jax import transfer
from mcur_jax import validate

# Trace counts of the compiled functions ("train_epoch", "evaluate"): each
# must be 1 per run whatever the combinations, epochs or seeds.
COMPILES = collections.Counter()


def load_data(config, data_dir: str | None = None) -> data_lib.Dataset:
  """The data of a run as its config prepares it (fold, validation part,
  per-speaker normalisation); `data_dir` instead of the config's own
  directory."""
  return data_lib.load(data_dir or config.data_dir, fold=config.fold or None,
                       speaker_norm=validate.modalities(config, "speaker_norm"),
                       validation=config.validation)


def make_mesh(num_devices: int = 0) -> jax.sharding.Mesh:
  """A 1-D ("data",) mesh over the first `num_devices` devices (0 = all)."""
  devices = jax.devices()
  if num_devices:
    devices = devices[:num_devices]
  return jax.sharding.Mesh(np.array(devices), ("data",))


def check_config(config, manifest) -> jax.sharding.Mesh:
  """Raises validate.ConfigError for the first field of `config` that cannot
  run on the data of `manifest` with the devices here (what a run checks
  before it builds anything); returns the run's mesh."""
  validate.check_devices(config, jax.device_count(), jax.process_count())
  mesh = make_mesh(config.num_devices)
  validate.check(config, manifest, mesh.devices.size)
  return mesh


@dataclasses.dataclass
class Run:
  """Everything one run (one fold) trains and evaluates with."""

  config: ml_collections.ConfigDict
  workdir: str
  dataset: data_lib.Dataset
  mesh: jax.sharding.Mesh
  members: regime.Members
  # The modalities the dataset has ([3] bool).
  present: list
  # Device data: the training table and its window tables, the members,
  # and the validation and test splits in their evaluation windows.
  train: dict
  tables: dict
  member_data: dict
  inputs: dict
  # Compiled functions.
  train_epoch: object
  predict: object
  update_best: object
  state: dict
  started: float

  @property
  def task(self) -> str:
    return self.dataset.manifest.task

  @property
  def main_process(self) -> bool:
    return jax.process_index() == 0

  @property
  def steps(self) -> int:
    """Training steps per epoch."""
    return groups.train_steps(len(self.dataset.train), self.config.batch_size)

  @classmethod
  def setup(cls, config, workdir: str) -> "Run":
    """Data, checks, members, model, optimizer and the initial state."""
    started = time.time()
    COMPILES.clear()
    dataset = load_data(config)
    manifest = dataset.manifest
    mesh = check_config(config, manifest)
    # After the checks: a refused fold=0 run leaves no empty fold folder.
    os.makedirs(workdir, exist_ok=True)
    repl = NamedSharding(mesh, P())
    present = validate.present_modalities(manifest)
    members = regime.members(config, combos.realisable(present))
    train, tables = epoch_lib.training_inputs(dataset.train, config, repl)
    inputs = {s: evaluation.Inputs.of(getattr(dataset, s), config, mesh)
              for s in ("valid", "test")}
    graphdef, init_params = model_lib.create(config, manifest.dims,
                                             manifest.num_classes)
    tx = epoch_lib.make_optimizer(
        config, groups.train_steps(len(dataset.train), config.batch_size))
    member_data = transfer.to_device(
        {"seeds": members.seeds, "draw_weights": members.draw_weights}, repl)
    state = epoch_lib.init_state(init_params, tx, members.seeds, repl,
                                 ema=bool(config.ema_decay))
    return cls(
        config=config, workdir=workdir, dataset=dataset, mesh=mesh,
        members=members, present=present, train=train,
        tables=tables, member_data=member_data, inputs=inputs,
        train_epoch=epoch_lib.make_train_epoch(
            config, graphdef, tx, manifest.task, mesh, len(dataset.train),
            COMPILES),
        predict=evaluation.make_predict(graphdef, mesh, len(members.combos),
                                        config.compute_dtype, COMPILES),
        update_best=epoch_lib.make_update_best(mesh), state=state,
        started=started)

  def padding(self) -> dict[str, float]:
    """The fraction of batch positions that hold no utterance: per training
    epoch, and in the valid and test evaluation chunks."""
    n = len(self.dataset.train)
    return {"train": round(1 - n / (self.steps * self.config.batch_size), 4),
            **{s: round(self.inputs[s].layout.padding(), 4)
               for s in ("valid", "test")}}
