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

from xray_flax import config_rules, errors

DATA_AXIS = "data"


def make_mesh(mesh_config: ml_collections.ConfigDict) -> Mesh:
    """A mesh with a `data` axis over `mesh_config.data` devices (-1: all devices of all processes).

    Devices are ordered by process, so each process's devices hold one contiguous slice of
    the global batch (what make_array_from_process_local_data and the per-process Grain
    slices expect). A second axis (e.g. `model` for sharding large layers) would be another
    entry of the mesh shape; every array spec here names only `data`, so it would stay
    replicated along the new axis until a layer asks for more.
    """
    errors.require(mesh_problems(mesh_config))
    n = mesh_devices(mesh_config)
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))[:n]
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def mesh_devices(mesh_config: ml_collections.ConfigDict) -> int:
    """The devices on the mesh's `data` axis that `mesh_config` asks for (-1 or None: all)."""
    return jax.device_count() if mesh_config.data in (-1, None) else int(mesh_config.data)


def mesh_problems(mesh_config: ml_collections.ConfigDict) -> list[str]:
    """config.mesh.data must be -1 or a device count this run has (all of them with several processes)."""
    data, visible = mesh_config.data, jax.device_count()
    if data is not None and not (config_rules.is_int(data) and (data == -1 or 1 <= data <= visible)):
        return [f"config.mesh.data={data!r} must be -1 (all devices) or an int in [1, {visible}]: {visible} visible"]
    if jax.process_count() > 1 and mesh_devices(mesh_config) != visible:
        return [
            f"config.mesh.data={data}: a run of {jax.process_count()} processes uses "
            f"all {visible} devices; set config.mesh.data=-1"
        ]
    return []


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(global_batch: int, mesh: Mesh) -> int:
    """Per-process batch size; the global batch must split evenly over devices and processes."""
    errors.require(batch_size_problems(global_batch, mesh.devices.size))
    return global_batch // jax.process_count()


def batch_size_problems(global_batch: int, devices: int, key: str = "config.train.batch_size") -> list[str]:
    """The global batch must split evenly over the `devices` of the mesh."""
    if global_batch % devices:
        return [
            f"{key}={global_batch} is not divisible by the {devices} devices of the mesh; use a multiple of {devices}"
        ]
    return []


def global_batch(host_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assemble per-process NumPy batches into global arrays sharded along the data axis."""
    sharding = batch_sharded(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in host_batch.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
    return jax.device_put(tree, replicated(mesh))


def enable_compilation_cache() -> str | None:
    """JAX's persistent compilation cache, so reruns, resumed runs and evaluations skip compiling.

    ~/.cache/xray_flax/jax unless the environment variable XRAY_FLAX_JAX_CACHE names another
    folder; XRAY_FLAX_JAX_CACHE= (empty) turns it off. Returns the folder or None.
    """
    cache = os.environ.get("XRAY_FLAX_JAX_CACHE", os.path.join("~", ".cache", "xray_flax", "jax"))
    if not cache:
        return None
    cache = os.path.expanduser(cache)
    jax.config.update("jax_compilation_cache_dir", cache)
    # Only programs that took a while to compile are worth a disk entry.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return cache


def _cluster_size_from_environment() -> int:
    """Processes a cluster launcher started (SLURM's srun, Open MPI's mpirun), 1 if none.

    Cloud TPU VMs give their worker count only through the metadata server, so they need
    an explicit request (main.py --distributed; launch/tpu_vm.sh passes it).
    """
    for var in ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return len(hosts.split(",")) if hosts else 1


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    force: bool = False,
) -> bool:
    """Start jax.distributed when this is one of several processes; must run before any JAX op.

    Explicit arguments win; whatever is left out, JAX's own cluster detection fills in
    (SLURM, Open MPI, Cloud TPU VM, Kubernetes). Without arguments, a launcher's variables
    or `force`, this is a single process and nothing happens. Returns whether it started.
    """
    explicit = bool(coordinator_address) or (num_processes or 1) > 1 or process_id is not None
    if not (explicit or force) and _cluster_size_from_environment() <= 1:
        return False
    if explicit and not (coordinator_address and num_processes and process_id is not None):
        raise ValueError(
            "multi-process flags go together: --coordinator_address=HOST:PORT (of process 0), "
            "--num_processes=N and --process_id=I (0..N-1), the same address and count in "
            "every process; or none of them under SLURM, Open MPI or on a Cloud TPU VM"
        )
    if explicit and not 0 <= process_id < num_processes:
        raise ValueError(f"--process_id={process_id} must be in 0..{num_processes - 1} (--num_processes)")
    # Cross-process collectives on CPU need gloo; GPU and TPU backends ignore the setting.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
    )
    return True


def is_main_process() -> bool:
    """Process 0 writes files and logs progress; every process runs every collective."""
    return jax.process_index() == 0
