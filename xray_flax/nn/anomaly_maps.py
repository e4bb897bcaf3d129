"""Turning feature-resolution anomaly maps into input-resolution maps, as anomalib does.

Shared by the feature-based detectors (STFPM, CFA, FastFlow, Reverse Distillation, ...):

    upsample_bilinear(maps, size)        torch F.interpolate(mode='bilinear', align_corners=False)
    upsample_nearest(x, size)            torch F.interpolate(mode='nearest') (PaDiM's embedding, PatchCore's map)
    gaussian_blur(maps, sigma)           anomalib's GaussianBlur2d (kornia kernel, torch 'reflect')
    upsample_and_blur(maps, size, sigma) both, the usual last step of an anomaly map

Maps are [B, h, w] (one channel, the usual case) or [B, h, w, C] (NHWC). Sources:
[anomalib] anomalib.models.components.filters.GaussianBlur2d: kernel side
2 * int(4 * sigma + 0.5) + 1 (33 for sigma 4), a normalised separable Gaussian centred on the
middle tap, 'same' output with torch's 'reflect' padding, which mirrors about the edge pixel
without repeating it (d c b | a b c d; numpy's 'reflect', scipy.ndimage's 'mirror' — NOT
scipy's 'reflect', which xray_flax/nn/filters.py reproduces).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _as_nhwc(maps: jax.Array) -> tuple[jax.Array, bool]:
    if maps.ndim == 3:
        return maps[..., None], True
    if maps.ndim == 4:
        return maps, False
    raise ValueError(f"anomaly maps must be [B, h, w] or [B, h, w, C], got shape {maps.shape}")


def upsample_bilinear(maps: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Bilinear resize of [B, h, w(, C)] to size (H, W) with half-pixel centres and no
    antialiasing: torch's F.interpolate(mode='bilinear', align_corners=False) in both
    directions (torch never antialiases there unless asked). [anomalib]"""
    x, squeeze = _as_nhwc(maps)
    b, h, w, c = x.shape
    height, width = int(size[0]), int(size[1])
    if (h, w) != (height, width):
        x = jax.image.resize(x, (b, height, width, c), method="bilinear", antialias=False)
    return x[..., 0] if squeeze else x


def upsample_nearest(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """torch F.interpolate(mode='nearest') of [B, h, w, C] to (H, W): source index
    floor(i * h / H) (a whole factor repeats each pixel, the original code's unfold concat)."""
    height, width = int(size[0]), int(size[1])
    h, w = x.shape[1], x.shape[2]
    if (h, w) == (height, width):
        return x
    rows = np.floor(np.arange(height) * (h / height)).astype(np.int32)
    cols = np.floor(np.arange(width) * (w / width)).astype(np.int32)
    return x[:, rows][:, :, cols]


def gaussian_kernel_size(sigma: float) -> int:
    """anomalib's compute_kernel_size: 2 * int(4 * sigma + 0.5) + 1."""
    return 2 * int(4.0 * float(sigma) + 0.5) + 1


def gaussian_kernel1d(sigma: float, size: int | None = None) -> np.ndarray:
    """The normalised 1-D Gaussian of kornia's get_gaussian_kernel1d (taps at x - size // 2)."""
    size = gaussian_kernel_size(sigma) if size is None else int(size)
    if size < 1 or size % 2 != 1:
        raise ValueError(f"Gaussian kernel size must be a positive odd number, got {size}")
    x = np.arange(size, dtype=np.float64) - size // 2
    kernel = np.exp(-(x**2) / (2.0 * float(sigma) ** 2))
    return (kernel / kernel.sum()).astype(np.float32)


def _blur_axis(x: jax.Array, kernel: np.ndarray, axis: int) -> jax.Array:
    """A 1-D 'valid' correlation of [N, H, W, 1] along axis 1 (H) or 2 (W): one convolution."""
    shape = (kernel.shape[0], 1, 1, 1) if axis == 1 else (1, kernel.shape[0], 1, 1)
    weights = jnp.asarray(kernel, x.dtype).reshape(shape)
    return jax.lax.conv_general_dilated(
        x, weights, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=jax.lax.Precision.HIGHEST
    )


def gaussian_blur(maps: jax.Array, sigma: float = 4.0, kernel_size: int | None = None) -> jax.Array:
    """anomalib's GaussianBlur2d(sigma) on [B, H, W(, C)], per channel, same size out.

    Borders: torch's 'reflect' padding (edge pixel not repeated). torch refuses a pad of the
    input's side or more; here numpy's rule applies instead (the reflection is repeated), so
    maps smaller than the kernel radius still blur. [anomalib; ours for tiny maps]"""
    if float(sigma) <= 0:
        raise ValueError(f"Gaussian blur sigma must be > 0, got {sigma}")
    x, squeeze = _as_nhwc(maps)
    kernel = gaussian_kernel1d(sigma, kernel_size)
    radius = kernel.shape[0] // 2
    b, h, w, c = x.shape
    # Channels into the batch: every channel is blurred alone (a depthwise filter).
    x = jnp.transpose(x.astype(jnp.float32), (0, 3, 1, 2)).reshape(b * c, h, w, 1)
    x = jnp.pad(x, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="reflect")
    x = _blur_axis(_blur_axis(x, kernel, axis=1), kernel, axis=2)
    x = jnp.transpose(x.reshape(b, c, h, w), (0, 2, 3, 1))
    return x[..., 0] if squeeze else x


def upsample_and_blur(maps: jax.Array, size: tuple[int, int], sigma: float = 4.0) -> jax.Array:
    """Bilinear upsampling to `size`, then the Gaussian blur (sigma <= 0: no blur). [anomalib]"""
    up = upsample_bilinear(maps, size)
    return gaussian_blur(up, sigma) if float(sigma) > 0 else up
