"""The training loss and the anomaly map of the pyramidal autoencoder, as pure functions of arrays.

    loss = MSE(x, x_r) + ssim_weight * (1 - SSIM(x, x_r))                 [PIADE, minus VGG]
    map  = 1/K sum_{k<K} up_k( mean_c (G_k(x) - G_k(x_r))^2 )            [ours]

G_0 is the image itself and G_{k+1} = pyr_down(G_k): a separable 5-tap binomial blur
[1, 4, 6, 4, 1] / 16 with symmetric borders (scipy.ndimage mode 'reflect'), then every second
row and column (Burt and Adelson's Gaussian pyramid). up_k resizes level k back to the image
size by align-corners bilinear interpolation (scipy.ndimage.zoom(order=1, grid_mode=False)).
Level 0 keeps sharp, pixel-sized errors; the coarser levels average the error over growing
neighbourhoods, where a faint but extended defect (a paint loss of low contrast) adds up and
pixel noise of the reconstruction cancels out.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from xray_flax import errors
from xray_flax.detectors.pyramid_ae.network import resize_linear
from xray_flax.losses import l2, ssim

BINOMIAL_5 = np.asarray([1.0, 4.0, 6.0, 4.0, 1.0], np.float32) / 16.0


def reconstruction_loss(
    original: jax.Array,
    reconstruction: jax.Array,
    *,
    ssim_weight: float,
    ssim_window: int = 11,
    ssim_sigma: float = 1.5,
) -> tuple[jax.Array, dict]:
    """(total, {'loss', 'mse', 'ssim'}) for images [B, H, W, C] in [0, 1]."""
    mse = l2(original, reconstruction)
    ssim_value = jnp.mean(ssim(original, reconstruction, window=ssim_window, sigma=ssim_sigma))
    total = mse + ssim_weight * (1.0 - ssim_value)
    return total, {"loss": total, "mse": mse, "ssim": ssim_value}


def _blur_axis(x: jax.Array, axis: int) -> jax.Array:
    """5-tap binomial blur along `axis`; borders mirrored with the edge pixel repeated (b a | a b c)."""
    pad = [(0, 0)] * x.ndim
    pad[axis] = (2, 2)
    padded = jnp.pad(x, pad, mode="symmetric")
    n = x.shape[axis]
    return sum(float(w) * jax.lax.slice_in_dim(padded, t, t + n, axis=axis) for t, w in enumerate(BINOMIAL_5))


def pyr_down(x: jax.Array) -> jax.Array:
    """One Gaussian-pyramid step of NHWC images: binomial blur, then every second row and column."""
    x = _blur_axis(_blur_axis(x, 1), 2)
    return x[:, ::2, ::2]


def level_errors(original: jax.Array, reconstruction: jax.Array, levels: int) -> list[jax.Array]:
    """Per-pixel squared error, mean over channels, at each of `levels` Gaussian-pyramid levels:
    [B, H / 2^k, W / 2^k] for k = 0 .. levels - 1 (sizes rounded up)."""
    if levels < 1:
        raise errors.ConfigError(f"config.model.map_levels must be >= 1, got {levels}")
    a, b = original.astype(jnp.float32), reconstruction.astype(jnp.float32)
    maps = []
    for k in range(levels):
        if k:
            a, b = pyr_down(a), pyr_down(b)
        maps.append(jnp.mean(jnp.square(a - b), axis=-1))
    return maps


def pyramid_error_map(original: jax.Array, reconstruction: jax.Array, levels: int) -> jax.Array:
    """The anomaly map [B, H, W]: the level errors resized to the image and averaged."""
    _, h, w, _ = original.shape
    errors = level_errors(original, reconstruction, levels)
    return sum(e if e.shape[1:] == (h, w) else resize_linear(e, h, w) for e in errors) / len(errors)
