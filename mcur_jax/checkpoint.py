"""orbax checkpoints of the training state: save, resume, restore for inference.

`WORKDIR/checkpoints/<epoch>/` holds the whole training state after that
many epochs (parameters and optimizer state of every seed, and each seed's
best parameters so far by the validation headline metric), so the newest
checkpoint is both the resume point and the best model. The manager keeps
the latest two; the config is stored in the manager's metadata and beside
it as `WORKDIR/config.json`.

The state is replicated on the mesh, so it is saved from host copies
(NumPy): one transfer per array instead of orbax slicing every array per
device (a save took 1.8 s for the tiny test config on 8 devices, 0.3 s so),
and a checkpoint restores onto any number of devices or processes. Every
process passes the same arrays; orbax writes them once.

Damage: orbax writes a checkpoint into a temporary folder and renames it
when complete (a save killed midway leaves no checkpoint, and the next
manager removes the folder). A complete checkpoint that is damaged on disk
later is caught by `resume`: each stores the sha256 of its state's bytes
(the checkpoints of one early version, their per-leaf bit sums: `matches`),
and a checkpoint that fails to restore or to match it is reported and the
one before it used. `restore_for_inference` reads it once, checks it
(`verify`), refuses a damaged one, and takes the selected parameters from
that read. A kill while orbax deletes an old checkpoint leaves part of its
folder; training removes it (`remove_partial_deletions`).
"""

import errno
import hashlib
import os
import shutil

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from mcur_jax import combos
from mcur_jax import model as model_lib
from mcur_jax import regime
from mcur_jax import transfer
from mcur_jax import validate
from mcur_jax import workdir as workdir_lib


def directory(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


class CheckpointError(validate.ConfigError):
  """No checkpoint of a workdir can be used, or one cannot be written."""


# Checkpoints kept: the latest, and the one before it to fall back on when
# the latest is damaged (`resume`).
KEEP = 2


def manager(workdir: str, config: ml_collections.ConfigDict | None = None
            ) -> ocp.CheckpointManager:
  """The workdir's checkpoint manager; saves whenever asked (the training
  loop decides when), keeps the latest `KEEP`, and removes the temporary
  folders of saves that never finished."""
  options = ocp.CheckpointManagerOptions(
      preservation_policy=checkpoint_managers.LatestN(KEEP),
      enable_async_checkpointing=False, cleanup_tmp_directories=True)
  return ocp.CheckpointManager(
      directory(workdir), options=options,
      metadata=None if config is None else config.to_dict())


# The file orbax writes into every checkpoint's folder (this project's
# orbax range always does).
METADATA_FILE = "_CHECKPOINT_METADATA"


def remove_partial_deletions(workdir: str) -> list[int]:
  """Deletes the step folders that a kill left while orbax was deleting an
  old checkpoint (it removes a folder's files, then the folder): those
  without orbax's metadata file, older than a checkpoint that has it.
  Left alone, every later manager of the workdir warns about each (training,
  `evaluate` and `predict` alike); none of them can restore. Returns their
  epochs."""
  root = directory(workdir)
  steps = sorted(int(n) for n in (os.listdir(root) if os.path.isdir(root)
                                  else ()) if n.isdigit())
  whole = [s for s in steps
           if os.path.exists(os.path.join(root, str(s), METADATA_FILE))]
  partial = [s for s in steps if whole and s < whole[-1] and s not in whole]
  for s in partial:
    shutil.rmtree(os.path.join(root, str(s)))
  return partial


def _leaves(host_state) -> list:
  """The leaves in the order of their paths, list indices as numbers: the
  state's own order (nnx.State's integer keys sort as numbers), which a
  checkpoint read without a target (string keys: "10" before "2") would
  otherwise not keep past 10 layers."""
  def order(entry):
    key = _key(entry)
    return (0, int(key), "") if key.isdigit() else (1, 0, key)
  flat = jax.tree_util.tree_flatten_with_path(host_state)[0]
  flat.sort(key=lambda item: tuple(map(order, item[0])))
  return [x for _, x in flat]


def digest(host_state) -> np.ndarray:
  """[32] uint8: the sha256 of every leaf's bytes (`_leaves` order)."""
  h = hashlib.sha256()
  for x in _leaves(host_state):
    h.update(np.ascontiguousarray(x).tobytes())
  return np.frombuffer(h.digest(), np.uint8).copy()


def _bit_sums(host_state) -> np.ndarray:
  """[leaves] uint32: per leaf (`_leaves` order), the sum of its elements'
  bits mod 2^32: the digest of the checkpoints of mcur-jax cc78ccf, before
  the sha256 (every leaf of its state had 4-byte elements)."""
  return np.array([np.sum(np.ascontiguousarray(x).view(np.uint32),
                          dtype=np.uint32) for x in _leaves(host_state)],
                  np.uint32)


def matches(host_state, saved_digest) -> bool:
  """Whether `host_state` matches the digest saved with it, in either
  format (the sha256, or the earlier per-leaf bit sums)."""
  saved_digest = np.asarray(saved_digest)
  if saved_digest.dtype == np.uint32:
    return np.array_equal(_bit_sums(host_state), saved_digest)
  return np.array_equal(digest(host_state), saved_digest)


def out_of_space(e: BaseException | None) -> bool:
  """Whether `e`, or an exception it was raised from, is a full disk (or
  quota): orbax and tensorstore wrap the OSError in their own errors."""
  while e is not None:
    if (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)
        or "No space left on device" in str(e)):
      return True
    e = e.__cause__ or e.__context__
  return False


def save(mngr: ocp.CheckpointManager, epoch: int, state) -> None:
  """Saves `state` (replicated on the mesh) and its digest as the
  checkpoint of `epoch`, from host copies; a full disk raises
  CheckpointError (the checkpoints before stay intact)."""
  host = transfer.to_host(state)
  try:
    mngr.save(epoch, args=ocp.args.StandardSave(
        {"state": host, "digest": digest(host)}), force=True)
    mngr.wait_until_finished()
  except Exception as e:  # pylint: disable=broad-except
    if not out_of_space(e):
      raise
    raise CheckpointError(
        str(mngr.directory), f"no space left on device saving epoch {epoch}"
        "; the checkpoints before it are intact: free space and rerun the "
        "same command to resume") from None


def restore(mngr: ocp.CheckpointManager, epoch: int, like):
  """The state saved after `epoch`, placed like `like` (replicated);
  raises ValueError if it does not match its saved digest."""
  target = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), like)
  saved = mngr.restore(epoch, args=ocp.args.StandardRestore(
      {"state": target, "digest": np.zeros(32, np.uint8)}))
  if saved["digest"].shape != (32,):
    # The earlier digest format (`_bit_sums`), which orbax read cast to the
    # target's uint8: read again as it was saved.
    saved = mngr.restore(epoch, args=ocp.args.StandardRestore(
        {"state": target, "digest": _bit_sums(target)}))
  if not matches(saved["state"], saved["digest"]):
    raise ValueError("the restored state does not match its saved digest")
  return jax.tree.map(
      lambda x, y: jax.make_array_from_process_local_data(y.sharding, x),
      saved["state"], like)


def verify(mngr: ocp.CheckpointManager, epoch: int) -> dict:
  """The checkpoint of `epoch` read as saved, with no target (nested dicts
  of NumPy arrays under string keys: the whole state and its digest).

  Raises:
    CheckpointError: it does not restore or does not match its saved
      digest (checkpoints from before the digest are not checked).
  """
  try:
    saved = mngr.restore(epoch, args=ocp.args.PyTreeRestore())
    damaged = "digest" in saved and not matches(saved["state"],
                                                saved["digest"])
    problem = "does not match its saved digest"
  except Exception as e:  # pylint: disable=broad-except
    # Whatever orbax or tensorstore raise for damaged files.
    damaged, problem = True, f"does not restore ({type(e).__name__})"
  if damaged:
    raise CheckpointError(
        str(mngr.directory), f"the checkpoint of epoch {epoch} {problem}: "
        "damaged on disk, so its models would not be the run's; rerun the "
        "training command (it resumes from the checkpoint before) or "
        "restore the directory from a backup")
  return saved


def _key(entry) -> str:
  """A pytree path entry as a key of a checkpoint read without a target."""
  for field in ("key", "name", "idx"):
    if hasattr(entry, field):
      return str(getattr(entry, field))
  return str(entry)


def _fill(saved, like):
  """`like`'s tree (of jax.ShapeDtypeStruct) with each leaf taken from
  `saved`, a tree read without a target, by its path; None when `saved`
  lacks a leaf or holds it with another shape or dtype."""
  leaves = []
  for path, want in jax.tree_util.tree_flatten_with_path(like)[0]:
    node = saved
    for entry in path:
      node = node.get(_key(entry)) if isinstance(node, dict) else None
    if node is None or np.shape(node) != want.shape or node.dtype != want.dtype:
      return None
    leaves.append(node)
  return jax.tree.unflatten(jax.tree.structure(like), leaves)


def resume(mngr: ocp.CheckpointManager, like, log=print):
  """(epoch, state) of the newest checkpoint that restores intact, after
  deleting newer damaged ones and saying so; (0, like) without checkpoints.

  Raises:
    CheckpointError: there are checkpoints and none of them restores.
  """
  damaged = []
  for epoch in sorted(mngr.all_steps(), reverse=True):
    try:
      state = restore(mngr, epoch, like)
    except Exception as e:  # pylint: disable=broad-except
      # Whatever orbax or tensorstore raise for damaged files.
      damaged.append(f"epoch {epoch} ({type(e).__name__}: "
                     f"{str(e).splitlines()[0][:200] if str(e) else ''})")
      continue
    for step in mngr.all_steps():
      if step > epoch:
        mngr.delete(step)
    if damaged:
      log(f"WARNING: {mngr.directory}: damaged checkpoint of "
          f"{', '.join(damaged)} deleted; resuming from the checkpoint of "
          f"epoch {epoch}")
    return epoch, state
  if damaged:
    raise CheckpointError(
        str(mngr.directory), f"no checkpoint restores ({', '.join(damaged)})"
        "; move the directory away to train from scratch, or restore it "
        "from a backup")
  return 0, like


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's config (fields added since it was written: their values
  that reproduce it, `workdir.LATER_FIELDS`).

  Raises:
    validate.ConfigError: `workdir` holds no run's config.json (the root of
      a cross-validated run: naming its folds).
  """
  path = os.path.join(workdir, workdir_lib.CONFIG_FILE)
  if not os.path.exists(path):
    folds = workdir_lib.started_folds(workdir)
    raise validate.ConfigError(workdir, (
        "a cross-validated run: give the workdir of one of its folds, "
        f"{', '.join(folds)}") if folds else
        f"no {workdir_lib.CONFIG_FILE}: not the workdir of a training run")
  return ml_collections.ConfigDict(workdir_lib.read_config(path))


def restore_for_inference(workdir: str, sharding=None,
                          data_dir: str | None = None):
  """The selected model (`config.selection`) of every member of a run.

  Args:
    workdir: the run's workdir.
    sharding: where to put the parameters; default the first local device.
    data_dir: where the run's prepared data is now, if not where it
      trained; read only for a run from before `workdir.MODEL_INPUTS`
      (`workdir.legacy_data_dir`).

  Returns:
    (graphdef, params, config, manifest): `params` has a leading member
    axis in the order of `regime.members` (the seeds, or (seed,
    combination) pairs in the per-condition regime), and
    `model.apply(graphdef, jax.tree.map(lambda x: x[i], params), inputs,
    mask)` predicts with member i (`inputs` as in `model.MCUR.__call__`);
    `manifest`, the run's data's (dims, task, classes), is read from the
    workdir's copy (`workdir.run_manifest`): the data need not be there.
    A run still training gives its best models so far (`experiments.
    evaluate` and `predict` refuse such a run: `inference.check_finished`).
  """
  config = load_config(workdir)
  manifest = workdir_lib.run_manifest(workdir, config.data_dir, data_dir)
  graphdef, init = model_lib.create(config, manifest.dims,
                                    manifest.num_classes)
  seeds = np.asarray(regime.members(config, combos.realisable(
      validate.present_modalities(manifest))).seeds)
  device = sharding or jax.sharding.SingleDeviceSharding(
      jax.local_devices()[0])
  abstract = jax.eval_shape(jax.vmap(lambda s: init(jax.random.key(s))),
                            seeds)
  mngr = manager(workdir)
  epoch = mngr.latest_step()
  if epoch is None:
    mngr.close()
    raise CheckpointError(directory(workdir), "no checkpoint")
  try:
    saved = verify(mngr, epoch)
  finally:
    mngr.close()
  # Checkpoints saved before the digest existed hold the state at the top.
  params = _fill(saved.get("state", saved).get("best_params"), abstract)
  if params is None:
    raise CheckpointError(directory(workdir), f"the checkpoint of epoch "
                          f"{epoch} holds no best_params of this config's "
                          "model")
  return graphdef, jax.device_put(params, device), config, manifest
