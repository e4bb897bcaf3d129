"""CFA's patch features, CoordConv descriptor, memory-bank distances and scores (NHWC, pure).

Sources: [paper] Lee, Lee, Song, "CFA: Coupled-hypersphere-based Feature Adaptation for
Target-Oriented Anomaly Localization", IEEE Access 2022 (arXiv 2206.04325); [anomalib]
anomalib 2.7 models/image/cfa (torch_model.py, anomaly_map.py); [CoordConv] Liu et al. 2018
as anomalib carries it (walsvid/CoordConv); [ours] this project's choice.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from xray_flax import errors
from xray_flax.nn.anomaly_maps import upsample_bilinear


def avg_pool3x3(x: jax.Array) -> jax.Array:
    """torch F.avg_pool2d(x, 3, stride=1, padding=1) with count_include_pad=True (torch's
    default): the zero padding counts, every window divides by 9. [anomalib]"""
    padding = ((0, 0), (1, 1), (1, 1), (0, 0))
    sums = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), padding)
    return sums / 9.0


def patch_features(features: dict[str, jax.Array], taps: Sequence[str]) -> jax.Array:
    """[B, h0, w0, sum C]: every tap 3x3-average-pooled, the deeper ones upsampled bilinearly
    (half-pixel centres, as F.interpolate's default) to the first tap's size, concatenated on
    channels in tap order. [anomalib Descriptor.forward; paper: WRN50-2 layers 1-3]"""
    first = avg_pool3x3(features[taps[0]].astype(jnp.float32))
    size = first.shape[1:3]
    parts = [first] + [upsample_bilinear(avg_pool3x3(features[t].astype(jnp.float32)), size) for t in taps[1:]]
    return jnp.concatenate(parts, axis=-1)


def coordinate_channels(height: int, width: int) -> jax.Array:
    """[h, w, 2]: the row coordinate, then the column coordinate, each linear in [-1, 1]
    (i / (h - 1) * 2 - 1). [anomalib AddCoords with with_r=False: channels appended after the
    features, 'xx' along the height axis first, 'yy' along the width]"""
    if height < 2 or width < 2:
        raise errors.ConfigError(
            f"CFA's CoordConv needs feature maps of at least 2x2 (coordinates divide by side - 1), "
            f"got {height}x{width}: use larger patches (config.data.patch_size) or a shallower first tap"
        )
    rows = jnp.arange(height, dtype=jnp.float32) / (height - 1) * 2.0 - 1.0
    cols = jnp.arange(width, dtype=jnp.float32) / (width - 1) * 2.0 - 1.0
    return jnp.stack(jnp.meshgrid(rows, cols, indexing="ij"), axis=-1)


def add_coordinates(x: jax.Array) -> jax.Array:
    """[B, h, w, C] -> [B, h, w, C + 2] with the coordinate channels appended. [anomalib]"""
    b, h, w, _ = x.shape
    coords = jnp.broadcast_to(coordinate_channels(h, w).astype(x.dtype), (b, h, w, 2))
    return jnp.concatenate([x, coords], axis=-1)


def _torch_bias_init(fan_in: int):
    """torch.nn.Conv2d's bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / float(fan_in) ** 0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class Descriptor(nn.Module):
    """The 1x1 CoordConv on the concatenated patch features: [B, h, w, C] -> [B, h, w, out].

    A 1x1 convolution is a dense layer over channels. Initialisation as torch.nn.Conv2d's
    default (kernel kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in)), bias U(+-1/sqrt(fan_in)),
    fan_in = C + 2), what anomalib's descriptor starts from. [anomalib]
    """

    out_channels: int

    @nn.compact
    def __call__(self, patches: jax.Array) -> jax.Array:
        x = add_coordinates(patches)
        fan_in = x.shape[-1]
        return nn.Dense(
            self.out_channels,
            kernel_init=nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
            bias_init=_torch_bias_init(fan_in),
            name="coord_conv",
        )(x)


def squared_distances(descriptors: jax.Array, centres: jax.Array) -> jax.Array:
    """[B, h w, M]: ||f||^2 + ||c||^2 - 2 f.c between every position's descriptor (row-major
    positions) and every memory-bank centre [M, C]. The expanded form, as anomalib computes
    it (it can be slightly negative by rounding). [anomalib compute_distance]"""
    b, h, w, c = descriptors.shape
    f = descriptors.reshape(b, h * w, c).astype(jnp.float32)
    f2 = jnp.sum(jnp.square(f), axis=-1, keepdims=True)
    c2 = jnp.sum(jnp.square(centres), axis=-1)[None, None, :]
    return f2 + c2 - 2.0 * jnp.einsum("bnc,mc->bnm", f, centres)


def nearest(distances: jax.Array, k: int) -> jax.Array:
    """The k smallest values along the last axis, ascending (torch topk(largest=False))."""
    if k > distances.shape[-1]:
        raise ValueError(f"CFA asks for the {k} nearest centres but the memory bank has {distances.shape[-1]}")
    return -jax.lax.top_k(-distances, k)[0]


def softmin_score(squared: jax.Array, k: int) -> jax.Array:
    """[B, N]: over the k nearest centres of Euclidean distance d (ascending), softmin(d)[0] * d[0].
    Squared distances are clipped at 0 before the square root (rounding can make them
    slightly negative; torch would return NaN there). [anomalib compute_score; ours: the clip]"""
    d = nearest(jnp.sqrt(jnp.maximum(squared, 0.0)), k)
    return jax.nn.softmax(-d, axis=-1)[..., 0] * d[..., 0]
