"""FastFlow's loss and anomaly map on the head's latents (NHWC, pure).

    loss = sum_t mean_b(0.5 * sum_{h,w,c} z_t^2 - logdet_t)                        [anomalib]
    map  = mean_t up_t(-exp(-0.5 * mean_c z_t^2))                                   [anomalib]

up_t is bilinear with half-pixel centres (torch F.interpolate(align_corners=False)) to the
tile size. The map lies in [-1, 0]: minus the per-position likelihood of the latent under the
standard normal, averaged over channels inside the exponent (anomalib's AnomalyMapGenerator).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from xray_flax.nn.anomaly_maps import gaussian_blur, upsample_bilinear


def fastflow_loss(zs: dict[str, jax.Array], logdets: dict[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(sum over taps, {tap: mean_b(0.5 * sum z^2 - logdet)}) [anomalib FastflowLoss]."""
    per_tap = {tap: jnp.mean(0.5 * jnp.sum(jnp.square(z), axis=(1, 2, 3)) - logdets[tap]) for tap, z in zs.items()}
    return sum(per_tap.values()), per_tap


def flow_map(z: jax.Array) -> jax.Array:
    """[B, h, w, C] -> [B, h, w]: -exp(-0.5 * mean_c z^2) [anomalib]."""
    return -jnp.exp(-0.5 * jnp.mean(jnp.square(z.astype(jnp.float32)), axis=-1))


def fastflow_map(zs: dict[str, jax.Array], size: tuple[int, int], blur_sigma: float = 0.0) -> jax.Array:
    """The mean over taps of the per-tap maps, each upsampled to `size`; then blurred if sigma > 0
    (the blur is linear: blurring the mean equals the mean of the blurred maps)."""
    maps = [upsample_bilinear(flow_map(z), size) for z in zs.values()]
    out = jnp.mean(jnp.stack(maps, axis=0), axis=0)
    return gaussian_blur(out, blur_sigma) if float(blur_sigma) > 0 else out
