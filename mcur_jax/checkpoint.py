"""orbax checkpoints of the training state: save, resume, restore for inference.

`WORKDIR/checkpoints/<epoch>/` holds the whole training state after that
many epochs (parameters and optimizer state of every seed, and each seed's
best parameters so far by the validation headline metric), so the newest
checkpoint is both the resume point and the best model. The manager keeps
the latest `keep` checkpoints; the config is stored in the manager's
metadata and beside it as `WORKDIR/config.json`.
"""

import json
import os

import jax
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from mcur_jax import combos
from mcur_jax import model as model_lib
from mcur_jax import regime
from mcur_jax import schema
from mcur_jax import validate


def directory(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def manager(workdir: str, config: ml_collections.ConfigDict | None = None,
            keep: int = 1) -> ocp.CheckpointManager:
  """The workdir's checkpoint manager; saves whenever asked (the training
  loop decides when), keeps the latest `keep`."""
  options = ocp.CheckpointManagerOptions(
      preservation_policy=checkpoint_managers.LatestN(keep),
      enable_async_checkpointing=False)
  return ocp.CheckpointManager(
      directory(workdir), options=options,
      metadata=None if config is None else config.to_dict())


def save(mngr: ocp.CheckpointManager, epoch: int, state) -> None:
  mngr.save(epoch, args=ocp.args.StandardSave(state), force=True)
  mngr.wait_until_finished()


def restore(mngr: ocp.CheckpointManager, epoch: int, like):
  """The state saved after `epoch`, with the shapes and shardings of `like`."""
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
  return mngr.restore(epoch, args=ocp.args.StandardRestore(abstract))


def load_config(workdir: str) -> ml_collections.ConfigDict:
  with open(os.path.join(workdir, "config.json")) as f:
    return ml_collections.ConfigDict(json.load(f))


def restore_for_inference(workdir: str, sharding=None):
  """The selected (best-on-validation) model of every member of a run.

  Args:
    workdir: the run's workdir.
    sharding: where to put the parameters; default the first local device.

  Returns:
    (graphdef, params, config, manifest): `params` has a leading member
    axis in the order of `regime.members` (the seeds, or (seed,
    combination) pairs in the per-condition regime), and
    `model.apply(graphdef, jax.tree.map(lambda x: x[i], params), inputs,
    mask)` predicts with member i (`inputs` as in `model.MCUR.__call__`);
    the prepared data's manifest gives dims and task.
  """
  config = load_config(workdir)
  manifest = schema.Manifest.load(config.data_dir)
  graphdef, init = model_lib.create(config, manifest.dims,
                                    manifest.num_classes)
  seeds = jax.numpy.asarray(regime.members(config, combos.realisable(
      validate.present_modalities(manifest))).seeds)
  device = sharding or jax.sharding.SingleDeviceSharding(
      jax.local_devices()[0])
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
      jax.eval_shape(jax.vmap(lambda s: init(jax.random.key(s))), seeds))
  mngr = manager(workdir)
  epoch = mngr.latest_step()
  if epoch is None:
    mngr.close()
    raise FileNotFoundError(f"{directory(workdir)}: no checkpoint")
  item = {"best_params": abstract}
  restored = mngr.restore(epoch, args=ocp.args.PyTreeRestore(
      item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
      partial_restore=True))
  mngr.close()
  return graphdef, restored["best_params"], config, manifest
