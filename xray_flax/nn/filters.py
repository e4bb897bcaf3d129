"""Separable Gaussian and box filters with scipy's 'reflect' borders, for NHWC batches.

Shared: the high-pass reference detector's local energy, and Reverse Distillation's
`blur_border='scipy'` map blur (the original code's scipy.ndimage.gaussian_filter). The values
equal scipy.ndimage.gaussian_filter / uniform_filter with mode='reflect' (tests/test_highpass.py).
"""

from __future__ import annotations

import dm_pix
import jax
import jax.numpy as jnp


def _reflect_pad(x: jax.Array, radius: int) -> jax.Array:
    # scipy.ndimage mode='reflect' (d c b a | a b c d) is numpy's 'symmetric'.
    return jnp.pad(x, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="symmetric")


def gaussian_reflect(x: jax.Array, sigma: float, truncate: float = 4.0) -> jax.Array:
    """scipy.ndimage.gaussian_filter(x, sigma, mode='reflect', truncate) over H and W of [B, H, W, C]."""
    radius = int(truncate * float(sigma) + 0.5)
    return dm_pix.gaussian_blur(_reflect_pad(x, radius), sigma, 2 * radius + 1, padding="VALID")


def box_mean_reflect(x: jax.Array, size: int) -> jax.Array:
    """scipy.ndimage.uniform_filter(x, size, mode='reflect') over H and W of [B, H, W, C] (odd size)."""
    if size % 2 != 1:
        raise ValueError(f"box filter size must be odd, got {size}")
    r = size // 2
    padded = _reflect_pad(x, r)
    sums = jax.lax.reduce_window(padded, 0.0, jax.lax.add, (1, size, size, 1), (1, 1, 1, 1), "VALID")
    return sums / float(size * size)


def local_highpass_energy(images: jax.Array, *, sigma: float, window: int, truncate: float = 4.0) -> jax.Array:
    """[B, H, W]: box mean of |x - Gaussian(x)|, averaged over channels."""
    x = images.astype(jnp.float32)
    residual = jnp.abs(x - gaussian_reflect(x, sigma, truncate))
    return jnp.mean(box_mean_reflect(residual, window), axis=-1)
