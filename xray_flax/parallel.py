"""Device mesh, shardings and host-to-global arrays.

Data parallelism is expressed with a mesh and NamedShardings rather than pmap: the batch is
split along the mesh's `data` axis, parameters and optimiser state are replicated, and the
same jitted step runs on one CPU, eight GPUs or a multi-host TPU slice. Because the step
sees global arrays, BatchNorm's batch statistics are computed over the whole global batch
(synchronised BN) without any explicit collective.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(mesh_config: ml_collections.ConfigDict) -> Mesh:
    """A 1-D mesh over `mesh_config.data` devices (-1: all devices of all processes)."""
    n = jax.device_count() if mesh_config.data in (-1, None) else int(mesh_config.data)
    if n < 1 or n > jax.device_count():
        raise ValueError(f"config.mesh.data={mesh_config.data} but {jax.device_count()} devices are visible")
    devices = np.asarray(jax.devices()[:n])
    return Mesh(devices, (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(global_batch: int, mesh: Mesh) -> int:
    """Per-process batch size; the global batch must split evenly over devices and processes."""
    devices = mesh.devices.size
    if global_batch % devices:
        raise ValueError(f"config.train.batch_size={global_batch} is not divisible by the {devices} devices "
                         f"of the mesh; use a multiple of {devices}")
    return global_batch // jax.process_count()


def global_batch(host_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assemble per-process NumPy batches into global arrays sharded along the data axis."""
    sharding = batch_sharded(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in host_batch.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
    return jax.device_put(tree, replicated(mesh))


def _cluster_size_from_environment() -> int:
    """Processes a cluster launcher started (SLURM, Open MPI, Cloud TPU pod), 1 if none."""
    for var in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return len(hosts.split(",")) if hosts else 1


def initialize_distributed(coordinator_address: str | None, num_processes: int | None,
                           process_id: int | None) -> None:
    """Start jax.distributed when this is one of several processes; must run before any JAX op.

    Explicit flags win; otherwise JAX's own cluster detection (SLURM, Open MPI, Cloud TPU)
    fills in the coordinator, the process count and the id. A single process does nothing.
    """
    explicit = bool(coordinator_address) or (num_processes or 1) > 1
    if not explicit and _cluster_size_from_environment() <= 1:
        return
    # Cross-process collectives on CPU need gloo; the setting is ignored by GPU/TPU backends.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
