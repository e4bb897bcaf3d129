"""Loss terms shared by the detectors, as pure functions of arrays (ssim, l2, focal).

SSIM is dm-pix's Gaussian SSIM (window 11, sigma 1.5, K1 0.01, K2 0.03, data range 1). It
averages over the 'valid' part of the image, which is exactly scikit-image's
`structural_similarity(gaussian_weights=True, use_sample_covariance=False)`; DRAEM's
PyTorch SSIM zero-pads instead, which only changes the 5-pixel border.
"""

from __future__ import annotations

import dm_pix
import jax
import jax.numpy as jnp


def ssim(a: jax.Array, b: jax.Array, *, window: int = 11, sigma: float = 1.5) -> jax.Array:
    """Mean SSIM per image, [B], for images [B, H, W, C] in [0, 1]."""
    return dm_pix.ssim(a, b, max_val=1.0, filter_size=window, filter_sigma=sigma, k1=0.01, k2=0.03)


def l2(a: jax.Array, b: jax.Array) -> jax.Array:
    """Mean squared error over all elements (torch.nn.MSELoss, DRAEM's L2 term)."""
    return jnp.mean(jnp.square(a - b))


def focal(logits: jax.Array, mask: jax.Array, *, gamma: float = 2.0, alpha: float | None = None) -> jax.Array:
    """Mean focal loss (Lin et al. 2017) of 2-class logits [..., 2] against a {0, 1} mask [...].

    alpha=None weights both classes by 1, as DRAEM does; otherwise alpha weights the
    anomalous class and 1 - alpha the normal one.
    """
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    target = mask.astype(jnp.float32)
    log_pt = target * log_probs[..., 1] + (1.0 - target) * log_probs[..., 0]
    pt = jnp.exp(log_pt)
    loss = -jnp.power(1.0 - pt, gamma) * log_pt
    if alpha is not None:
        loss = loss * (target * alpha + (1.0 - target) * (1.0 - alpha))
    return jnp.mean(loss)
