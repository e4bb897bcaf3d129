"""Reverse Distillation's loss and anomaly map (pure functions of encoder and decoder features).

    loss = sum over taps of mean_b (1 - cos(flatten(e_b), flatten(d_b)))          [anomalib, original code]
    map  = blur_sigma( sum (or product) over taps of up(1 - cos_c(e, d)) ),  score = max(map)

[anomalib] loss.py ReverseDistillationLoss and the original code's `loss_fucntion` (hq-deng/RD4AD
main.py) are the same formula: torch.nn.CosineSimilarity over the flattened C*H*W vector of
each image. The map: anomaly_map.py AnomalyMapGenerator — per tap 1 - F.cosine_similarity over
channels, F.interpolate(bilinear, align_corners=True) to the input size, 'add' (anomalib's
default in ReverseDistillation, and the original's evaluation: cal_anomaly_map(amap_mode='a'))
or 'multiply' (the original function's default and anomalib's generator default), then
GaussianBlur2d sigma 4 (kernel 33, torch 'reflect' borders); the original blurs with
scipy.ndimage.gaussian_filter(sigma=4) instead ('reflect' there repeats the edge pixel), which
`blur_border='scipy'` reproduces. Image score = the max of the blurred map [anomalib, original].

Cosine as torch: each vector divided by max(||v||, eps), eps 1e-8, so an all-zero decoder
vector (the decoder ends in a ReLU) gives similarity 0, not NaN; the norm is computed as
sqrt(max(sum v^2, eps^2)), which is the same value with a finite gradient at 0.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from xray_flax import errors
from xray_flax.nn.anomaly_maps import gaussian_blur
from xray_flax.nn.filters import gaussian_reflect

MAP_MODES = ("add", "multiply")
BLUR_BORDERS = ("torch", "scipy")
COSINE_EPS = 1e-8  # torch.nn.CosineSimilarity's default


def _safe_norm(x: jax.Array, axis) -> jax.Array:
    return jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=axis, keepdims=True), COSINE_EPS**2))


def cosine_similarity(a: jax.Array, b: jax.Array, axis=-1) -> jax.Array:
    """torch.nn.functional.cosine_similarity(a, b, dim=axis, eps=1e-8), in float32."""
    a = a.astype(jnp.float32)
    b = b.astype(jnp.float32)
    return jnp.sum((a / _safe_norm(a, axis)) * (b / _safe_norm(b, axis)), axis=axis)


def distillation_loss(encoder: list[jax.Array], decoder: list[jax.Array]) -> tuple[jax.Array, list[jax.Array]]:
    """(sum over taps of mean_b(1 - cos(flatten(e), flatten(d))), the per-tap terms)."""
    if len(encoder) != len(decoder):
        raise ValueError(f"{len(encoder)} encoder taps but {len(decoder)} decoded features")
    terms = []
    for e, d in zip(encoder, decoder):
        if e.shape != d.shape:
            raise ValueError(f"encoder tap {e.shape} and decoded features {d.shape} differ in shape")
        flat_e = e.reshape(e.shape[0], -1)
        flat_d = d.reshape(d.shape[0], -1)
        terms.append(jnp.mean(1.0 - cosine_similarity(flat_e, flat_d, axis=-1)))
    return sum(terms), terms


@functools.lru_cache(maxsize=64)
def _align_corners_matrix(out_size: int, in_size: int) -> np.ndarray:
    """[out, in] linear interpolation weights with align_corners=True: output pixel o samples
    input position o * (in - 1) / (out - 1) (torch's rule; 0 when out == 1)."""
    scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
    src = np.arange(out_size, dtype=np.float64) * scale
    lo = np.clip(np.floor(src).astype(np.int64), 0, in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    frac = src - lo
    m = np.zeros((out_size, in_size), np.float64)
    np.add.at(m, (np.arange(out_size), lo), 1.0 - frac)
    np.add.at(m, (np.arange(out_size), hi), frac)
    return m.astype(np.float32)


def upsample_bilinear_align_corners(maps: jax.Array, size: tuple[int, int]) -> jax.Array:
    """[B, h, w] -> [B, H, W]: torch F.interpolate(mode='bilinear', align_corners=True), as
    two small interpolation matrices (separable and exact). [anomalib, original code]"""
    height, width = int(size[0]), int(size[1])
    rows = jnp.asarray(_align_corners_matrix(height, maps.shape[1]))
    cols = jnp.asarray(_align_corners_matrix(width, maps.shape[2]))
    return jnp.einsum("Hh,bhw,Ww->bHW", rows, maps.astype(jnp.float32), cols, precision=jax.lax.Precision.HIGHEST)


def blur(maps: jax.Array, sigma: float, border: str) -> jax.Array:
    """Gaussian blur of [B, H, W]: 'torch' = anomalib's GaussianBlur2d (kernel 2 int(4 sigma + 0.5)
    + 1, torch 'reflect'); 'scipy' = scipy.ndimage.gaussian_filter(mode='reflect', truncate 4),
    the original code's. sigma <= 0: no blur."""
    if border not in BLUR_BORDERS:
        raise errors.ConfigError(f"config.model.blur_border={border!r}; expected one of {BLUR_BORDERS}")
    if float(sigma) <= 0:
        return maps
    if border == "torch":
        return gaussian_blur(maps, sigma)
    return gaussian_reflect(maps[..., None], sigma)[..., 0]


def anomaly_map(
    encoder: list[jax.Array],
    decoder: list[jax.Array],
    size: tuple[int, int],
    *,
    mode: str = "add",
    sigma: float = 4.0,
    border: str = "torch",
) -> jax.Array:
    """[B, H, W] float32: the per-tap channel cosine distances, upsampled, combined, blurred."""
    if mode not in MAP_MODES:
        raise errors.ConfigError(f"config.model.map_mode={mode!r}; expected one of {MAP_MODES}")
    combined = None
    for e, d in zip(encoder, decoder, strict=True):
        distance = upsample_bilinear_align_corners(1.0 - cosine_similarity(e, d, axis=-1), size)
        if combined is None:
            combined = distance
        else:
            combined = combined + distance if mode == "add" else combined * distance
    return blur(combined, sigma, border)
