"""DRAEM's loss (Zavrtanik et al. 2021), also the paper's (Mezina et al. 2025, lambda = 2):

L = lambda * (1 - SSIM(I, I_r)) + L2(I, I_r) + focal(softmax(logits), M)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from xray_flax.losses import focal, l2, ssim


def draem_loss(
    original: jax.Array,
    reconstruction: jax.Array,
    logits: jax.Array,
    mask: jax.Array,
    *,
    ssim_weight: float,
    ssim_window: int = 11,
    ssim_sigma: float = 1.5,
    focal_gamma: float = 2.0,
    focal_alpha: float | None = None,
) -> tuple[jax.Array, dict]:
    """Total loss and its terms. mask is [B, H, W, 1] or [B, H, W]."""
    mask = mask[..., 0] if mask.ndim == logits.ndim else mask
    ssim_value = jnp.mean(ssim(original, reconstruction, window=ssim_window, sigma=ssim_sigma))
    l2_value = l2(original, reconstruction)
    focal_value = focal(logits, mask, gamma=focal_gamma, alpha=focal_alpha)
    total = ssim_weight * (1.0 - ssim_value) + l2_value + focal_value
    return total, {"loss": total, "ssim": ssim_value, "l2": l2_value, "focal": focal_value}
