"""STFPM's training loss and anomaly map on teacher / student feature pyramids (pure functions).

Features are {tap: [B, h, w, C]} (NHWC). Both the loss and the map compare the features after
L2 normalisation over channels at every position. [paper, anomalib]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from xray_flax import errors
from xray_flax.nn.anomaly_maps import gaussian_blur, upsample_bilinear

# torch.nn.functional.normalize's eps: x / max(||x||, eps). [anomalib]
NORMALIZE_EPS = 1e-12


def l2_normalise(features: jax.Array) -> jax.Array:
    """[B, h, w, C] divided by the channel norm at each position (F.normalize(x, dim=1))."""
    norm = jnp.sqrt(jnp.sum(jnp.square(features), axis=-1, keepdims=True))
    return features / jnp.maximum(norm, NORMALIZE_EPS)


def squared_distance_map(teacher: jax.Array, student: jax.Array) -> jax.Array:
    """[B, h, w]: ||t/||t|| - s/||s|| ||^2 over channels."""
    diff = l2_normalise(teacher.astype(jnp.float32)) - l2_normalise(student.astype(jnp.float32))
    return jnp.sum(jnp.square(diff), axis=-1)


def layer_loss(teacher: jax.Array, student: jax.Array, *, layer_scale: float, batch_reduction: str) -> jax.Array:
    """layer_scale / (h w) * sum_{h,w} ||t_n - s_n||^2, summed ('sum', anomalib) or averaged
    ('mean', paper) over the batch."""
    _, h, w, _ = teacher.shape
    per_image = (float(layer_scale) / (h * w)) * jnp.sum(squared_distance_map(teacher, student), axis=(1, 2))
    if batch_reduction == "sum":
        return jnp.sum(per_image)
    if batch_reduction == "mean":
        return jnp.mean(per_image)
    raise errors.ConfigError(f"config.loss.batch_reduction={batch_reduction!r}; expected 'sum' or 'mean'")


def stfpm_loss(
    teacher: dict[str, jax.Array],
    student: dict[str, jax.Array],
    *,
    layer_scale: float,
    batch_reduction: str,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(sum over layers of layer_loss, {tap: layer_loss}); every layer weighted 1. [paper, anomalib]"""
    losses = {
        tap: layer_loss(teacher[tap], student[tap], layer_scale=layer_scale, batch_reduction=batch_reduction)
        for tap in teacher
    }
    return sum(losses.values()), losses


def anomaly_map(
    teacher: dict[str, jax.Array],
    student: dict[str, jax.Array],
    size: tuple[int, int],
    blur_sigma: float = 0.0,
) -> jax.Array:
    """[B, H, W]: the product over layers of 0.5 * ||t_n - s_n||^2, each layer's map upsampled
    bilinearly (half-pixel centres) to `size` before the product. [anomalib anomaly_map.py;
    the paper multiplies the per-layer maps too]. blur_sigma > 0 blurs the product. [ours]"""
    out = None
    for tap in teacher:
        layer = upsample_bilinear(0.5 * squared_distance_map(teacher[tap], student[tap]), size)
        out = layer if out is None else out * layer
    if blur_sigma > 0:
        out = gaussian_blur(out, blur_sigma)
    return out
