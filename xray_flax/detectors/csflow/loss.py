"""CS-Flow's multi-scale features, its loss, anomaly map and image score (NHWC, pure).

    x_k  = backbone_tap(resize(image, side / 2^k)),  k = 0 .. scales-1      [original, anomalib]
    z, logdet = CrossScaleFlow(x_0, .., x_{K-1})           xray_flax/nn/flows.py
    D    = sum_k h_k w_k C                                  latent dimensions per image
    loss = mean_b(0.5 * |z_b|^2 - logdet_b) / D             [original utils.get_loss]
    score_b = mean over the D latents of z^2 / 2            [original train.py, anomalib]
    map  = sum_k (n_k / N) up_k(mean_c z_k^2 / 2)   ('nll')  [ours]
         | prod_k up_k(mean_c z_k^2)                ('all')  [anomalib AnomalyMapMode.ALL]
         | up_0(mean_c z_0^2)                       ('largest') [original evaluate.py, anomalib MAX]

up_k is bilinear with half-pixel centres (torch F.interpolate(align_corners=False)) to the
tile size; n_k = h_k w_k positions of scale k, N = sum_k n_k. Bilinear upsampling by a whole
factor gives every source position the same total weight, so the tile mean of the 'nll' map
is exactly the image score: the map is the score's per-pixel decomposition. That matters
here because the shared loop fits ONE normalisation to maps and scores together and applies
the image-level threshold chosen on validation scores to map pixels (regions): they must
share a scale. anomalib's product map ('all', ~1 on normal tiles where the score is ~0.5)
and the original's largest-scale map do not; they stay available for comparisons of
rankings (ROC-AUC, pixel AUROC), which an affine normalisation does not change. The
original divides its map by the channel count once more, a constant factor, left out.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from xray_flax import errors
from xray_flax.nn.anomaly_maps import gaussian_blur, upsample_bilinear


def resize_for_scale(images: jax.Array, scale: int, mode: str) -> jax.Array:
    """[B, H, W, C] -> [B, H / 2^scale, W / 2^scale, C].

    'nearest' is torch F.interpolate(size=...)'s default for an exact 2^k reduction: source
    index floor(i * 2^k), i.e. every 2^k-th pixel from the first [original, anomalib];
    'area' averages each 2^k x 2^k block [ours].
    """
    if scale == 0:
        return images
    f = 2**scale
    b, h, w, c = images.shape
    if h % f or w % f:
        raise ValueError(f"CS-Flow scale {scale} needs image sides divisible by {f}, got {h}x{w}")
    if mode == "nearest":
        return images[:, ::f, ::f]
    if mode == "area":
        return images.reshape(b, h // f, f, w // f, f, c).mean(axis=(2, 4))
    raise errors.ConfigError(f"config.model.image_resize={mode!r}; expected 'nearest' or 'area'")


def latent_dimensions(zs: list[jax.Array]) -> int:
    return sum(z.shape[1] * z.shape[2] * z.shape[3] for z in zs)


def csflow_loss(zs: list[jax.Array], logdet: jax.Array, reduction: str = "per_sample") -> jax.Array:
    """mean_b(0.5 * |z_b|^2 - logdet) / D; logdet [B] per image ('per_sample' [original]) or its
    sum over the batch ('batch_sum' [anomalib 2.7])."""
    squared = sum(jnp.sum(jnp.square(z), axis=(1, 2, 3)) for z in zs)
    if reduction == "per_sample":
        volume = logdet
    elif reduction == "batch_sum":
        volume = jnp.sum(logdet)
    else:
        raise errors.ConfigError(f"config.loss.logdet_reduction={reduction!r}; expected 'per_sample' or 'batch_sum'")
    return jnp.mean(0.5 * squared - volume) / latent_dimensions(zs)


def csflow_score(zs: list[jax.Array]) -> jax.Array:
    """[B]: mean over all latents of all scales of z^2 / 2 [original, anomalib]."""
    return sum(jnp.sum(jnp.square(z), axis=(1, 2, 3)) for z in zs) / (2.0 * latent_dimensions(zs))


def csflow_map(zs: list[jax.Array], size: tuple[int, int], mode: str = "all", blur_sigma: float = 0.0) -> jax.Array:
    """[B, H, W]: the position-weighted mean of the upsampled mean_c z^2 / 2 of every scale ('nll'), their
    product without the 1/2 ('all'), or the largest scale's mean_c z^2 ('largest')."""
    if mode == "nll":
        total = latent_dimensions(zs)
        out = sum(
            (z.shape[1] * z.shape[2] * z.shape[3] / total)
            * upsample_bilinear(0.5 * jnp.mean(jnp.square(z), axis=-1), size)
            for z in zs
        )
    elif mode == "all":
        out = None
        for z in zs:
            up = upsample_bilinear(jnp.mean(jnp.square(z), axis=-1), size)
            out = up if out is None else out * up
    elif mode == "largest":
        out = upsample_bilinear(jnp.mean(jnp.square(zs[0]), axis=-1), size)
    else:
        raise errors.ConfigError(f"config.model.map_mode={mode!r}; expected 'nll', 'all' or 'largest'")
    return gaussian_blur(out, blur_sigma) if float(blur_sigma) > 0 else out
