"""Data parallelism with `jax.jit` over a device `Mesh`: batch sharded on 'data', params replicated.

Why not pmap: it is in maintenance mode (itself built on jit + shard_map now). With jit + NamedSharding the
model code is unchanged, BatchNorm statistics and in-batch mining see the global batch, and multi-host runs
only add `jax.distributed.initialize()` plus `make_array_from_process_local_data`.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"

def maybe_initialize_distributed() -> bool:
  """Starts the multi-process runtime when the environment describes a multi-process job.

  Explicit: JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES, JAX_PROCESS_ID (e.g. set by
  a Kubernetes manifest, see launch/). Auto-detected: SLURM (srun) and Open MPI (mpirun) with > 1 task.
  """
  env = os.environ
  if jax.distributed.is_initialized():
    return True
  if "JAX_COORDINATOR_ADDRESS" in env:
    missing = [k for k in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if k not in env]
    if missing:
      raise ValueError(f"JAX_COORDINATOR_ADDRESS is set but {missing} are not; set all three (launch/README.md)")
    jax.distributed.initialize(coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
                               num_processes=int(env["JAX_NUM_PROCESSES"]),
                               process_id=int(env["JAX_PROCESS_ID"]))
    return True
  if int(env.get("SLURM_NTASKS", "1")) > 1 or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
    jax.distributed.initialize()  # jax reads the launcher's variables itself
    return True
  return False


def make_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D mesh over all (or the first `num_devices`) global devices, axis 'data'."""
  devices = jax.devices()
  if num_devices:
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_divisible(global_batch: int, mesh: Mesh) -> None:
  n = mesh.devices.size
  if global_batch % n:
    raise ValueError(f"global batch size {global_batch} is not divisible by the {n} devices of the mesh; "
                     f"choose a multiple of {n} (e.g. --config.train.batch_size={n * max(1, global_batch // n)})")


def per_process_batch(global_batch: int) -> int:
  if global_batch % jax.process_count():
    raise ValueError(f"global batch {global_batch} not divisible by {jax.process_count()} processes")
  return global_batch // jax.process_count()


def to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's slice of the batch into one global array sharded over 'data'."""
  sharding = data_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def replicate_tree(tree: Any, mesh: Mesh) -> Any:
  """Places host values on every device. Goes through numpy so donated buffers never alias inputs."""
  sharding = replicated(mesh)
  return jax.tree.map(lambda x: jax.device_put(np.asarray(x), sharding), tree)


def fetch(tree: Any) -> Any:
  """Arrays -> numpy. Replicated or process-local arrays are read locally; an array sharded over other
  processes' devices is all-gathered, so every process must fetch it at the same point (a collective)."""
  def one(x):
    if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
      from jax.experimental import multihost_utils
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))
  return jax.tree.map(one, tree)


def gather_rows(tree: Any) -> Any:
  """Data-sharded global arrays or host-local batches -> numpy with every process's rows, in process
  order (evaluation needs the whole split on every host). One process: just a copy to the host."""
  if jax.process_count() == 1:
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)
  from jax.experimental import multihost_utils
  return jax.tree.map(lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True)), tree)
