"""A training-free reference: distance of each raw pixel patch to its nearest training patch.

    features  every `patch` x `patch` window of the tile at step `stride` (all channels), raw
              or mean-centred (`center`); no network
    fit       one pass over the clean training tiles into a bounded memory bank: the streamed
              greedy k-centre coreset of xray_flax/nn/coreset.py (as PatchCore's), so memory is
              (bank + chunk) x patch^2 x channels x 4 bytes whatever the number of tiles
    map       per window the Euclidean distance to its nearest bank entry (exact blocked search,
              xray_flax/nn/knn.py), on the grid of window centres, bilinearly upsampled to the
              tile and blurred; score = max of the map

With a bank at least as large as the training patches this is the exact nearest-neighbour
search over every raw training patch (tests/test_patch_nn.py checks it against scipy's cdist).
On the hard simulated X-rays this reference reaches test ROC-AUC 0.757, above the paper's model
(docs/results.md): the floor learned detectors must clear. Sources: [ours]; 7 px chosen by a
measurement on the hard simulated set.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections

from xray_flax import errors
from xray_flax.detectors.base import FIT, Detector
from xray_flax.nn import coreset, knn
from xray_flax.nn.anomaly_maps import upsample_and_blur

MEMORY = "memory"


@dataclasses.dataclass(frozen=True)
class Plan:
    patch: int
    stride: int
    center: bool
    dim: int  # patch^2 x channels
    bank_size: int
    chunk_size: int  # a whole number of batches
    query_block: int
    bank_block: int
    blur_sigma: float

    def grid(self, size: int) -> int:
        return (size - self.patch) // self.stride + 1


def patch_features(images: jax.Array, *, plan: Plan) -> jax.Array:
    """[B, h, w, patch^2 C] windows of images [B, H, W, C] (VALID, step `stride`); each feature
    vector is the window in (row, column, channel) order."""
    b, _, _, c = images.shape
    x = jax.lax.conv_general_dilated_patches(
        images.astype(jnp.float32),
        (plan.patch, plan.patch),
        (plan.stride, plan.stride),
        "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=jax.lax.Precision.HIGHEST,
    )
    # conv_general_dilated_patches orders the feature axis (channel, row, column).
    h, w = x.shape[1], x.shape[2]
    x = x.reshape(b, h, w, c, plan.patch, plan.patch).transpose(0, 1, 2, 4, 5, 3).reshape(b, h, w, -1)
    if plan.center:
        x = x - jnp.mean(x, axis=-1, keepdims=True)
    return x


def init(key: jax.Array, sample: jax.Array, *, plan: Plan) -> dict:
    del key, sample
    return {
        MEMORY: {
            "bank": jnp.zeros((plan.bank_size, plan.dim), jnp.float32),
            "valid": jnp.zeros((plan.bank_size,), bool),
        }
    }


def fit_init(variables: dict, *, plan: Plan) -> dict:
    del variables
    return coreset.stream_init(plan.bank_size, plan.chunk_size, plan.dim)


@functools.partial(jax.jit, static_argnames="plan")
def _update(state, images, valid, *, plan):
    x = patch_features(images, plan=plan)
    b, h, w, d = x.shape
    return coreset.stream_add(state, x.reshape(b * h * w, d), jnp.repeat(valid > 0, h * w))


def fit_update(state: dict, variables: dict, batch: dict, *, plan: Plan) -> dict:
    del variables
    return _update(state, batch["image"], batch["valid"], plan=plan)


_finish = jax.jit(coreset.stream_finish)


def fit_finish(state: dict, variables: dict, *, plan: Plan) -> dict:
    state = _finish(state)
    if not bool(jax.device_get(jnp.any(state["bank_valid"]))):
        raise ValueError("patch_nn: no training patches reached the memory bank (no valid training tiles)")
    return {**variables, MEMORY: {"bank": state["bank"], "valid": state["bank_valid"]}}


def fit_summary(state: dict, *, plan: Plan) -> dict:
    seen, filled = jax.device_get((state["seen"], jnp.sum(state["bank_valid"])))
    return {"patches": float(seen), "bank": float(filled)}


def patch_distances(variables: dict, images: jax.Array, *, plan: Plan) -> jax.Array:
    """[B, h, w] distance of every window to its nearest bank entry."""
    x = patch_features(images, plan=plan)
    b, h, w, d = x.shape
    memory = variables[MEMORY]
    distances, _ = knn.nearest_neighbours(
        x.reshape(b * h * w, d),
        memory["bank"],
        memory["valid"],
        1,
        query_block=plan.query_block,
        bank_block=plan.bank_block,
    )
    return distances[:, 0].reshape(b, h, w)


def anomaly_map(variables: dict, images: jax.Array, *, plan: Plan) -> dict:
    maps = upsample_and_blur(patch_distances(variables, images, plan=plan), images.shape[1:3], plan.blur_sigma)
    return {"map": maps, "score": jnp.max(maps, axis=(1, 2))}


def make_plan(config: ml_collections.ConfigDict) -> Plan:
    m = config.model
    size, patch, stride = int(config.data.patch_size), int(m.patch), int(m.stride)
    if not 1 <= patch <= size or stride < 1:
        raise errors.ConfigError(f"config.model.patch={patch} and stride={stride} must fit the {size}-px tiles")
    per_batch = int(config.train.batch_size) * ((size - patch) // stride + 1) ** 2
    return Plan(
        patch=patch,
        stride=stride,
        center=bool(m.center),
        dim=patch * patch * int(config.data.channels),
        bank_size=int(m.bank_size),
        chunk_size=-(-int(m.chunk_size) // per_batch) * per_batch,
        query_block=int(m.query_block),
        bank_block=int(m.bank_block),
        blur_sigma=float(m.blur_sigma),
    )


def build(config: ml_collections.ConfigDict) -> Detector:
    plan = make_plan(config)
    return Detector(
        name="patch_nn",
        kind=FIT,
        init=functools.partial(init, plan=plan),
        anomaly_map=functools.partial(anomaly_map, plan=plan),
        fit_init=functools.partial(fit_init, plan=plan),
        fit_update=functools.partial(fit_update, plan=plan),
        fit_finish=functools.partial(fit_finish, plan=plan),
        fit_summary=functools.partial(fit_summary, plan=plan),
    )
