"""PaDiM's init, pretrained, streaming fit (fit_init / fit_update / fit_finish / fit_summary)
and anomaly map, on a `Backbone`.

Variables (static shapes from the patch size, `Plan`):

    backbone   {"params", "batch_stats"} of the frozen pretrained backbone
    gaussian   {"mean": [P, d] float32, "whitening": [P, d, d] storage dtype (L^-1 per position;
               with model.gaussian='shared' the one shared Gaussian repeated at every position)}

Fit state (static shapes: P, d from the config, never the number of tiles):

    accumulate 'float64' (default): NumPy float64 on the host {"count": (), "mean": [P, d],
        "scatter": [P, d, d]}; every batch's float32 moments (computed in jit, reduced over the
        sharded batch, so replicated) are merged there. 8 P d^2 bytes.
    accumulate 'float32': the same state as jax float32 arrays merged on device (no per-batch
        transfer of the [P, d, d] scatter; half the memory), optionally sharded over the mesh
        along the positions (`model.shard_positions`). Relative error grows like sqrt(batches) *
        6e-8 (measured in tests/test_padim.py).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from xray_flax import errors, parallel
from xray_flax.backbones import COLLECTION, Backbone
from xray_flax.backbones.base import frozen
from xray_flax.detectors.padim import distance
from xray_flax.nn.anomaly_maps import upsample_and_blur

GAUSSIAN = "gaussian"
ACCUMULATE = ("float64", "float32")
GAUSSIANS = ("per_position", "shared")
STORAGE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True, eq=False)
class Plan:
    """Everything static about one PaDiM: the backbone, the channel subset and the shapes.
    Hashed by identity (eq=False), so it can be a static argument of jit."""

    backbone: Backbone
    per_tap: tuple  # per tap, the chosen channel indices (np.ndarray each)
    n_features: int  # d
    pool: int
    ridge: float
    storage_dtype: str
    accumulate: str
    shard_positions: bool
    mesh_config: object  # config.mesh (only for shard_positions)
    blur_sigma: float
    gaussian: str  # 'per_position' or 'shared' (one Gaussian for every position)
    input_scale: int = 1  # tiles are upsampled by this factor before the backbone

    def positions(self, patch_size: int) -> tuple[int, int]:
        stride = self.backbone.strides[self.backbone.taps[0]] * self.pool
        size = patch_size * self.input_scale
        if size % stride:
            raise ValueError(
                f"PaDiM: patch size {patch_size} x {self.input_scale} is not a multiple of the feature stride {stride}"
            )
        return size // stride, size // stride


def backbone_input(images: jax.Array, plan: Plan) -> jax.Array:
    """The tiles the backbone sees: bilinearly upsampled by `plan.input_scale` (a defect of a
    few pixels then spans more than one position of the stride-4 grid) [ours]."""
    if plan.input_scale == 1:
        return images
    b, h, w, c = images.shape
    return jax.image.resize(images, (b, h * plan.input_scale, w * plan.input_scale, c), "bilinear")


def state_bytes(positions: int, d: int, accumulate: str) -> int:
    """Bytes of the fit state (the scatter dominates): P d^2 x (8 for float64, 4 for float32)."""
    return positions * (d * d + d + 1) * (8 if accumulate == "float64" else 4)


def init(key: jax.Array, sample: jax.Array, *, plan: Plan) -> dict:
    """Random backbone (`pretrained` replaces it), zero mean and identity whitening."""
    h, w = plan.positions(sample.shape[1])
    p, d = h * w, plan.n_features
    dtype = STORAGE_DTYPES[plan.storage_dtype]
    return {
        COLLECTION: plan.backbone.init(key, backbone_input(sample, plan)),
        GAUSSIAN: {
            "mean": jnp.zeros((p, d), jnp.float32),
            "whitening": jnp.broadcast_to(jnp.eye(d, dtype=dtype), (p, d, d)),
        },
    }


def embed(variables: dict, images: jax.Array, *, plan: Plan) -> jax.Array:
    """[B, P, d] embeddings of images [B, H, W, C] in [0, 1]."""
    features = frozen(plan.backbone.features(variables[COLLECTION], backbone_input(images, plan)))
    x = distance.embedding(features, plan.backbone.taps, plan.per_tap, plan.pool)
    return x.reshape(x.shape[0], -1, x.shape[-1])


def _moments(variables, images, valid, *, plan):
    return distance.batch_moments(embed(variables, images, plan=plan), valid)


def _mesh_sharding(plan: Plan, positions: int):
    mesh = parallel.make_mesh(plan.mesh_config)
    n = mesh.devices.size
    if positions % n:
        raise errors.ConfigError(
            f"config.model.shard_positions: the {positions} feature positions do not split over {n} devices"
        )
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(parallel.DATA_AXIS))


def fit_init(variables: dict, *, plan: Plan) -> dict:
    """The empty accumulator: count 0, mean 0, scatter 0 (shapes from the variables)."""
    p, d = variables[GAUSSIAN]["mean"].shape
    if plan.accumulate == "float64":
        return {"count": np.zeros((), np.float64), "mean": np.zeros((p, d)), "scatter": np.zeros((p, d, d))}
    state = {
        "count": jnp.zeros((), jnp.float32),
        "mean": jnp.zeros((p, d), jnp.float32),
        "scatter": jnp.zeros((p, d, d), jnp.float32),
    }
    if plan.shard_positions:
        sharding = _mesh_sharding(plan, p)
        state = {
            "count": state["count"],
            "mean": jax.device_put(state["mean"], sharding),
            "scatter": jax.device_put(state["scatter"], sharding),
        }
    return state


@functools.partial(jax.jit, static_argnames="plan")
def _update_device(state, variables, images, valid, *, plan):
    batch = _moments(variables, images, valid, plan=plan)
    n, mean, scatter = distance.merge_moments((state["count"], state["mean"], state["scatter"]), batch)
    return {"count": n, "mean": mean, "scatter": scatter}


_moments_jit = jax.jit(_moments, static_argnames="plan")


def fit_update(state: dict, variables: dict, batch: dict, *, plan: Plan) -> dict:
    """Merges one batch's moments into the state. Pure: a new state, the old one untouched."""
    if plan.accumulate == "float32":
        return _update_device(state, variables, batch["image"], batch["valid"], plan=plan)
    count, mean, scatter = jax.device_get(_moments_jit(variables, batch["image"], batch["valid"], plan=plan))
    state = (np.float64(state["count"]), np.asarray(state["mean"], np.float64), np.asarray(state["scatter"]))
    n, mean, scatter = distance.merge_moments_host(state, (np.float64(count), mean, scatter))
    return {"count": np.asarray(n, np.float64), "mean": mean, "scatter": scatter}


def _per_position(state: dict, count: float, plan: Plan) -> tuple:
    """(mean [P, d], L^-1 [P, d, d]) of each position's own Gaussian. [paper]"""
    if plan.accumulate == "float64":
        return distance.whitening_numpy(
            count, np.asarray(state["mean"]), np.asarray(state["scatter"]), plan.ridge, out_dtype=np.float32
        )
    return jax.jit(distance.whitening_jax, static_argnames="ridge")(
        state["count"], state["mean"], state["scatter"], ridge=plan.ridge
    )


def _shared(state: dict, plan: Plan) -> tuple:
    """(mean, L^-1) of the one Gaussian of all positions, computed in float64 on the host for
    either accumulator and broadcast to [P, d] and [P, d, d]: the fitted variables keep the
    per-position shapes, so the map, checkpoints and export need no other path. [ours]"""
    p, d = state["mean"].shape
    n, mean, scatter = distance.pool_positions(state["count"], state["mean"], state["scatter"])
    mean, whitening = distance.whitening_numpy(n, mean, scatter, plan.ridge, out_dtype=np.float32)
    return np.broadcast_to(mean, (p, d)), np.broadcast_to(whitening, (p, d, d))


def fit_finish(state: dict, variables: dict, *, plan: Plan) -> dict:
    """Covariance + ridge, Cholesky, L^-1 (per position, or one shared) -> the `gaussian`
    collection."""
    dtype = STORAGE_DTYPES[plan.storage_dtype]
    count = float(jax.device_get(state["count"]))
    if count < 2:
        raise ValueError(f"PaDiM needs at least 2 training tiles for a covariance (ddof 1), got {count:g}")
    if plan.gaussian == "shared":
        mean, whitening = _shared(state, plan)
    else:
        mean, whitening = _per_position(state, count, plan)
    if not np.isfinite(np.asarray(jax.device_get(whitening[:1]))).all():
        raise FloatingPointError("PaDiM: the covariance factorisation is not finite (increase config.model.ridge)")
    gaussian = {"mean": jnp.asarray(mean, jnp.float32), "whitening": jnp.asarray(whitening, dtype)}
    return {**variables, GAUSSIAN: gaussian}


def fit_summary(state: dict, *, plan: Plan) -> dict:
    p, d = state["mean"].shape
    return {
        "tiles": float(jax.device_get(state["count"])),
        "state_mb": state_bytes(p, d, plan.accumulate) / 2**20,
    }


def anomaly_map(variables: dict, images: jax.Array, *, plan: Plan) -> dict:
    """Mahalanobis distance per position, bilinear to the tile, Gaussian blur; score = max of
    the map. [anomalib; paper]"""
    b, height, width = images.shape[0], images.shape[1], images.shape[2]
    h, w = plan.positions(height)
    gaussian = variables[GAUSSIAN]
    distances = distance.mahalanobis(embed(variables, images, plan=plan), gaussian["mean"], gaussian["whitening"])
    maps = upsample_and_blur(distances.reshape(b, h, w), (height, width), plan.blur_sigma)
    return {"map": maps, "score": jnp.max(maps, axis=(1, 2))}
