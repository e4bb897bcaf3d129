"""The detector's pure functions, compiled over the device mesh as the training loop runs them.

Benchmarks and tests use these too, so they measure and check exactly what `train.py` runs.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from xray_flax import parallel
from xray_flax.detectors import Detector, TrainState
from xray_flax.detectors.base import guard_nonfinite


def sample_input(patch_size: int, channels: int) -> jax.Array:
    return jnp.zeros((1, patch_size, patch_size, channels), jnp.float32)


def init_variables(
    detector: Detector, key: jax.Array, patch_size: int, channels: int, mesh, pretrained: bool = True
) -> dict:
    """The detector's initial variables, created replicated on the mesh, with its pretrained parts
    loaded from their files (`Detector.pretrained`) unless `pretrained` is False (benchmarks,
    shape-only uses)."""
    sample = sample_input(patch_size, channels)
    variables = jax.jit(lambda k: detector.init(k, sample), out_shardings=parallel.replicated(mesh))(key)
    if pretrained and detector.pretrained is not None:
        # Loaded on the host, outside jit: hundreds of MB of weights must not become constants
        # of a compiled program. Every process loads the same file.
        variables = detector.pretrained(jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), variables))
        variables = parallel.replicate(jax.tree.map(jnp.asarray, variables), mesh)
    return variables


def init_train_state(
    detector: Detector, key: jax.Array, patch_size: int, channels: int, mesh, pretrained: bool = True
) -> TrainState:
    """Initial variables and optimiser state of a gradient detector, replicated on the mesh."""
    variables = init_variables(detector, key, patch_size, channels, mesh, pretrained=pretrained)
    return jax.jit(
        lambda v: TrainState.create(v, detector.optimizer),
        out_shardings=parallel.replicated(mesh),
    )(variables)


def with_sharding(tree: Any, sharding: jax.sharding.Sharding) -> Any:
    """The shapes and dtypes of `tree` placed with `sharding` (a restore target)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def replicated_abstract(tree: Any, mesh) -> Any:
    return with_sharding(tree, parallel.replicated(mesh))


def abstract_opt_state(detector: Detector, abstract_variables: dict, sharding: jax.sharding.Sharding) -> Any:
    """Shapes, dtypes and shardings of the optimiser state (a restore target)."""
    return with_sharding(jax.eval_shape(detector.optimizer.init, abstract_variables["params"]), sharding)


def compile_train_step(detector: Detector, mesh, donate: bool = True):
    """(state, batch, key, aux) -> (state, metrics): the detector's step behind the NaN guard,
    jitted with the batch sharded over the mesh and everything else replicated."""
    replicated, batch = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    return jax.jit(
        guard_nonfinite(detector.train_step),
        in_shardings=(replicated, batch, replicated, replicated),
        out_shardings=(replicated, replicated),
        donate_argnums=(0,) if donate else (),
    )


def compile_refresh_statistics(detector: Detector, mesh):
    """(variables, batch, key, aux) -> variables with refreshed running statistics, or None when
    the detector keeps none."""
    if detector.refresh_statistics is None:
        return None
    replicated, batch = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    return jax.jit(
        detector.refresh_statistics,
        in_shardings=(replicated, batch, replicated, replicated),
        out_shardings=replicated,
    )


def compile_preview(detector: Detector, mesh):
    """(variables, batch, key, aux) -> TensorBoard images, or None when the detector has none."""
    if detector.preview is None:
        return None
    replicated, batch = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    return jax.jit(detector.preview, in_shardings=(replicated, batch, replicated, replicated), out_shardings=replicated)
