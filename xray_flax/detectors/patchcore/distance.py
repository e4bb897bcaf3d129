"""PatchCore's patch features, nearest-neighbour patch scores, image scores and map (pure, NHWC).

Sources: [paper] Roth, Pemula, Zepeda, Schoelkopf, Brox, Gehler, "Towards Total Recall in
Industrial Anomaly Detection", CVPR 2022; [original code] amazon-science/patchcore-inspection;
[anomalib] anomalib 2.7 models/image/patchcore (torch_model.py, anomaly_map.py); [ours] this
project's choice.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from xray_flax import errors
from xray_flax.nn import knn
from xray_flax.nn.anomaly_maps import gaussian_blur, upsample_bilinear, upsample_nearest

UPSAMPLE = ("nearest", "bilinear")


def avg_pool3x3(x: jax.Array) -> jax.Array:
    """torch AvgPool2d(3, 1, 1) (count_include_pad=True): every window divides by 9, the zero
    padding included — the 3x3 local neighbourhood aggregation. [anomalib feature_pooler]"""
    padding = ((0, 0), (1, 1), (1, 1), (0, 0))
    return jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), padding) / 9.0


def adaptive_pool_matrix(length: int, out: int) -> np.ndarray:
    """[length, out] averaging matrix of torch F.adaptive_avg_pool1d(length -> out): output i
    averages inputs floor(i L / out) .. ceil((i + 1) L / out) - 1."""
    m = np.zeros((length, out), np.float32)
    for i in range(out):
        start, end = (i * length) // out, -((-(i + 1) * length) // out)
        m[start:end, i] = 1.0 / (end - start)
    return m


def patch_embedding(features: dict[str, jax.Array], taps: Sequence[str], target_dim: int = 0) -> jax.Array:
    """[B, h, w, D]: every tap 3x3-average-pooled, the deeper ones upsampled bilinearly
    (half-pixel centres) to the first tap's size, concatenated on channels [anomalib:
    WRN50-2 layers 2+3 -> 1536]; with target_dim > 0 the concatenation is average-pooled
    adaptively to target_dim channels [original code's final Aggregator: 1024]."""
    first = avg_pool3x3(features[taps[0]].astype(jnp.float32))
    size = first.shape[1:3]
    parts = [first] + [upsample_bilinear(avg_pool3x3(features[t].astype(jnp.float32)), size) for t in taps[1:]]
    x = jnp.concatenate(parts, axis=-1)
    if target_dim > 0:
        matrix = jnp.asarray(adaptive_pool_matrix(x.shape[-1], target_dim))
        x = jnp.einsum("bhwc,cd->bhwd", x, matrix, precision=jax.lax.Precision.HIGHEST)
    return x


def search(queries, bank, valid, k, *, query_block, bank_block, mesh=None):
    """knn.nearest_neighbours, or the bank-sharded search when a mesh is given."""
    if mesh is None:
        return knn.nearest_neighbours(queries, bank, valid, k, query_block=query_block, bank_block=bank_block)
    return knn.sharded_nearest_neighbours(
        queries, bank, valid, k, mesh=mesh, axis=mesh.axis_names[0], query_block=query_block, bank_block=bank_block
    )


def reweighted_score(embedding, patch_distances, patch_indices, bank, valid, num_neighbors, **search_options):
    """anomalib's image score (the paper's eq. 7): the patch m_test* farthest from the bank,
    its distance s* and nearest bank entry m*; the num_neighbors nearest bank entries of m*
    (m* itself first); s = (1 - softmax(|m_test* - N(m*)|)[0]) s*. Invalid bank entries are left
    out of the softmax. [anomalib compute_anomaly_score]

    embedding [B, P, D], patch_distances [B, P], patch_indices [B, P] -> [B]."""
    b = embedding.shape[0]
    worst = jnp.argmax(patch_distances, axis=1)
    rows = jnp.arange(b)
    feature, score, nearest = embedding[rows, worst], patch_distances[rows, worst], patch_indices[rows, worst]
    k = min(int(num_neighbors), bank.shape[0])
    _, support = search(bank[nearest].astype(jnp.float32), bank, valid, k, **search_options)
    diff = feature[:, None, :] - bank[support].astype(jnp.float32)
    distances = jnp.sqrt(jnp.sum(diff * diff, axis=-1))
    logits = jnp.where(valid[support], distances, -jnp.inf)
    weights = 1.0 - jax.nn.softmax(logits, axis=1)[:, 0]
    return weights * score


def tile_self_distances(embedding: jax.Array, height: int, width: int, radius: int) -> jax.Array:
    """[b, h*w, D] -> [b, h*w]: each patch's Euclidean distance to the nearest patch of ITS OWN
    tile that lies more than `radius` grid cells away (Chebyshev distance), +inf when there is
    none. One tile at a time (lax.map), so the live matrix is [h*w, h*w]; ranked by
    |q|^2 - 2 q.p + |p|^2 and recomputed exactly for the winner, as nn/knn.py does."""
    yy, xx = np.divmod(np.arange(height * width), width)
    near = np.maximum(np.abs(yy[:, None] - yy[None]), np.abs(xx[:, None] - xx[None])) <= radius

    def one(x):
        x = x.astype(jnp.float32)
        sq = jnp.sum(x * x, axis=1)
        keys = sq[:, None] - 2.0 * jnp.dot(x, x.T, precision=jax.lax.Precision.HIGHEST) + sq[None, :]
        keys = jnp.where(near, jnp.inf, keys)
        nearest = jnp.argmin(keys, axis=1)
        exact = jnp.sqrt(jnp.sum((x - x[nearest]) ** 2, axis=1))
        return jnp.where(jnp.isinf(jnp.min(keys, axis=1)), jnp.inf, exact)

    return jax.lax.map(one, embedding)


def upsample_map(patch_map: jax.Array, size: tuple[int, int], mode: str, sigma: float) -> jax.Array:
    """[B, h, w] -> [B, H, W]: 'nearest' [anomalib: F.interpolate's default mode] or 'bilinear'
    [original code], then the Gaussian blur (sigma 4, kernel 33, reflect) [anomalib; original:
    scipy gaussian_filter sigma 4]."""
    if mode == "nearest":
        up = upsample_nearest(patch_map[..., None], size)[..., 0]
    elif mode == "bilinear":
        up = upsample_bilinear(patch_map, size)
    else:
        raise errors.ConfigError(f"config.model.map_upsample={mode!r}; expected one of {UPSAMPLE}")
    return gaussian_blur(up, sigma) if sigma > 0 else up
