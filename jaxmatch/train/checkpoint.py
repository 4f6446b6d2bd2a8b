"""orbax checkpoints of the train state together with the grain iterator state.

Saving both makes a rerun of the same command resume exactly: same parameters, same optimizer moments,
same next batch. Restoring uses abstract arrays that carry the current mesh's shardings, so a checkpoint
written on one device count restores onto another.
"""
from __future__ import annotations

import json
import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

STATE = "state"
DATA = "data"
META = "meta"


class CheckpointError(RuntimeError):
  """The workdir's checkpoint cannot be used for this run (named reason)."""


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def make_manager(workdir: str, max_to_keep: int = 2, with_data: bool = True) -> ocp.CheckpointManager:
  handlers = {STATE: ocp.StandardCheckpointHandler(), META: ocp.JsonCheckpointHandler()}
  if with_data:
    handlers[DATA] = grain.checkpoint.CheckpointHandler()
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_handlers=handlers)


def save(manager: ocp.CheckpointManager, step: int, state: Any, meta: dict, data_iter=None) -> None:
  items = {STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(meta)}
  if data_iter is not None:
    items[DATA] = grain.checkpoint.CheckpointSave(data_iter)
  manager.save(step, args=ocp.args.Composite(**items), force=True)
  manager.wait_until_finished()


def abstract_like(state: Any, sharding) -> Any:
  """Shape/dtype/sharding description of `state` used to restore straight onto the mesh."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state)


def restore(manager: ocp.CheckpointManager, abstract_state: Any, data_iter=None,
            step: int | None = None) -> tuple[Any, dict]:
  """Restores (state, meta) at `step` (default latest); also advances `data_iter` to its saved position."""
  step = manager.latest_step() if step is None else step
  if step is None:
    raise CheckpointError(f"no checkpoint in {manager.directory}")
  items = {STATE: ocp.args.StandardRestore(abstract_state), META: ocp.args.JsonRestore()}
  # A converted checkpoint (python -m jaxmatch.convert) has no data position: training starts the data
  # from the beginning.
  if data_iter is not None and os.path.isdir(os.path.join(str(manager.directory), str(step), DATA)):
    items[DATA] = grain.checkpoint.CheckpointRestore(data_iter)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(**items))
  except (ValueError, KeyError, TypeError) as e:
    raise CheckpointError(
        f"checkpoint {manager.directory}/{step} does not match the model built from this config "
        f"(was it written with a different config?): {e}") from e
  return restored[STATE], dict(restored[META])


def check_config_compatible(workdir: str, config_json: str, keys=("model",)) -> None:
  """Refuses to resume a workdir whose saved config differs in `keys` (e.g. another architecture)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  with open(path, encoding="utf-8") as f:
    old = json.load(f)
  new = json.loads(config_json)
  for key in keys:
    if old.get(key) != new.get(key):
      raise CheckpointError(
          f"{workdir} holds a run with a different config.{key} ({old.get(key)} vs {new.get(key)}); "
          "use a new --workdir or the original config")
