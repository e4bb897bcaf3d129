"""PatchCore's init, pretrained, streamed coreset fit (fit_init / fit_update / fit_finish /
fit_summary) and anomaly map, on a `Backbone`.

Variables (static shapes from the config):

    backbone   {"params", "batch_stats"} of the frozen pretrained backbone
    memory     {"bank": [M, D] storage dtype, "valid": [M] bool}   M = config.model.bank_size

Fit state: xray_flax.nn.coreset's stream ({bank, bank_valid, bank_radius: [M], buffer: [C, D],
buffer_valid: [C], fill, seen, reductions, absorbed, coverage_bound}), C = config.model.chunk_size rounded
up to whole batches: (M + C) D x 4 bytes, whatever the number of training tiles.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from xray_flax import parallel
from xray_flax.backbones import COLLECTION, Backbone
from xray_flax.backbones.base import frozen
from xray_flax.detectors.patchcore import distance
from xray_flax.nn import coreset

MEMORY = "memory"
STORAGE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True, eq=False)
class Plan:
    """Everything static about one PatchCore. Hashed by identity (a static argument of jit)."""

    backbone: Backbone
    target_dim: int
    dim: int  # D
    bank_size: int  # M
    chunk_size: int  # C, a whole number of batches
    patches_per_batch: int
    projection: np.ndarray | None  # [D, d'] or None
    storage_dtype: str
    num_neighbors: int
    self_radius: int
    map_upsample: str
    blur_sigma: float
    query_block: int
    bank_block: int
    absorb: bool
    shard_bank: bool
    mesh_config: object

    def grid(self, patch_size: int) -> tuple[int, int]:
        stride = self.backbone.strides[self.backbone.taps[0]]
        if patch_size % stride:
            raise ValueError(f"PatchCore: patch size {patch_size} is not a multiple of the feature stride {stride}")
        return patch_size // stride, patch_size // stride

    def search_options(self) -> dict:
        mesh = None
        if self.shard_bank:
            mesh = parallel.make_mesh(self.mesh_config)
        return {"query_block": self.query_block, "bank_block": self.bank_block, "mesh": mesh}


def state_bytes(plan: Plan) -> int:
    """Bytes of the fit state: bank and buffer features plus their masks and radii."""
    return (plan.bank_size + plan.chunk_size) * (plan.dim * 4 + 1) + plan.bank_size * 4


def init(key: jax.Array, sample: jax.Array, *, plan: Plan) -> dict:
    """Random backbone (`pretrained` replaces it) and an empty memory bank."""
    return {
        COLLECTION: plan.backbone.init(key, sample),
        MEMORY: {
            "bank": jnp.zeros((plan.bank_size, plan.dim), STORAGE_DTYPES[plan.storage_dtype]),
            "valid": jnp.zeros((plan.bank_size,), bool),
        },
    }


def embed(variables: dict, images: jax.Array, *, plan: Plan) -> jax.Array:
    """[B, h, w, D] patch features of images [B, H, W, C] in [0, 1]."""
    features = frozen(plan.backbone.features(variables[COLLECTION], images))
    return distance.patch_embedding(features, plan.backbone.taps, plan.target_dim)


def _projection(plan: Plan):
    return None if plan.projection is None else jnp.asarray(plan.projection)


def fit_init(variables: dict, *, plan: Plan) -> dict:
    del variables
    return coreset.stream_init(plan.bank_size, plan.chunk_size, plan.dim)


@functools.partial(jax.jit, static_argnames="plan")
def _update(state, variables, images, valid, *, plan):
    x = embed(variables, images, plan=plan)
    b, h, w, d = x.shape
    patch_valid = jnp.repeat(valid > 0, h * w)
    return coreset.stream_add(
        state,
        x.reshape(b * h * w, d),
        patch_valid,
        _projection(plan),
        absorb=plan.absorb,
        query_block=plan.query_block,
        bank_block=plan.bank_block,
    )


def fit_update(state: dict, variables: dict, batch: dict, *, plan: Plan) -> dict:
    """Adds one batch's patch features to the stream (a reduction when the buffer fills)."""
    images = batch["image"]
    h, w = plan.grid(images.shape[1])
    if images.shape[0] * h * w != plan.patches_per_batch:
        raise ValueError(
            f"PatchCore: a batch of {images.shape[0]} tiles gives {images.shape[0] * h * w} patch features, but the "
            f"coreset buffer was sized for {plan.patches_per_batch} (the training batch size x positions per tile)"
        )
    return _update(state, variables, images, batch["valid"], plan=plan)


_finish = jax.jit(coreset.stream_finish)


def fit_finish(state: dict, variables: dict, *, plan: Plan) -> dict:
    """The last reduction -> the `memory` collection."""
    state = _finish(state, _projection(plan))
    if not bool(jax.device_get(jnp.any(state["bank_valid"]))):
        raise ValueError("PatchCore: no training patches reached the memory bank (no valid training tiles)")
    memory = {"bank": state["bank"].astype(STORAGE_DTYPES[plan.storage_dtype]), "valid": state["bank_valid"]}
    return {**variables, MEMORY: memory}


def fit_summary(state: dict, *, plan: Plan) -> dict:
    seen, absorbed, filled, bound = jax.device_get(
        (state["seen"], state["absorbed"], jnp.sum(state["bank_valid"]), state["coverage_bound"])
    )
    return {
        "patches": float(seen),
        "absorbed": float(absorbed),
        "bank": float(filled),
        "radius_bound": float(bound),
        "state_mb": state_bytes(plan) / 2**20,
    }


def anomaly_map(variables: dict, images: jax.Array, *, plan: Plan) -> dict:
    """Per patch the distance to its nearest bank entry; map = upsampled + blurred; score =
    anomalib's reweighted maximum (num_neighbors > 1) or the plain maximum of the patch
    distances (num_neighbors = 1, the original code).

    With `self_radius` r > 0 a patch's distance is the smaller of that and its distance to the
    nearest patch of its own tile more than r grid cells away, and the score the plain maximum:
    a texture of the analysed painting that the training scans lack is then normal where it
    recurs in its tile, while a defect smaller than the radius finds no match around it. [ours;
    the local-reference idea of zero-shot detectors that compare patches of unlabeled test
    images with each other, e.g. MuSc, Li et al., ICLR 2024]"""
    b, height, width = images.shape[0], images.shape[1], images.shape[2]
    x = embed(variables, images, plan=plan)
    h, w, d = x.shape[1:]
    queries = x.reshape(b * h * w, d)
    bank, valid = variables[MEMORY]["bank"], variables[MEMORY]["valid"]
    options = plan.search_options()
    distances, indices = distance.search(queries, bank, valid, 1, **options)
    patch = distances[:, 0].reshape(b, h * w)
    if plan.self_radius > 0:
        # The tile's own patches beyond the radius are normal references too (docstring).
        patch = jnp.minimum(patch, distance.tile_self_distances(x.reshape(b, h * w, d), h, w, plan.self_radius))
        score = jnp.max(patch, axis=1)
    elif plan.num_neighbors > 1:
        score = distance.reweighted_score(
            x.reshape(b, h * w, d), patch, indices[:, 0].reshape(b, h * w), bank, valid, plan.num_neighbors, **options
        )
    else:
        score = jnp.max(patch, axis=1)
    maps = distance.upsample_map(patch.reshape(b, h, w), (height, width), plan.map_upsample, plan.blur_sigma)
    return {"map": maps, "score": score}
