"""DRAEM-style detector: a reconstructive network followed by a discriminative network.

The discriminator sees cat(augmented image, reconstruction) and predicts two logits per pixel;
the anomaly map is the softmax probability of the anomalous class. With the Nested U-Net and
U-Net this is the model of Mezina et al. 2025; with DRAEM's own networks it is DRAEM.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from xray_flax.detectors.draem.networks import DraemDiscriminative, DraemReconstructive
from xray_flax.nn.layers import scaled_width
from xray_flax.nn.nested_unet import NestedUNet
from xray_flax.nn.precision import compute_dtype
from xray_flax.nn.unet import UNet


class Draem(nn.Module):
    reconstructive: nn.Module
    discriminative: nn.Module

    def __call__(self, images: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        """images [B, H, W, C] in [0, 1] -> (reconstruction [B, H, W, C], logits [B, H, W, 2])."""
        reconstruction = self.reconstructive(images, train)
        logits = self.discriminative(jnp.concatenate([images, reconstruction], axis=-1), train)
        return reconstruction, logits


def anomaly_probability(logits: jax.Array) -> jax.Array:
    """Per-pixel probability of the anomalous class, [B, H, W]."""
    return jax.nn.softmax(logits, axis=-1)[..., 1]


def _widths(base: tuple[int, ...], levels: int, multiplier: float) -> tuple[int, ...]:
    if not 1 <= levels <= len(base):
        raise ValueError(f"levels={levels} must be between 1 and {len(base)}")
    return tuple(scaled_width(w, multiplier) for w in base[:levels])


def build_reconstructive(cfg: ml_collections.ConfigDict, channels: int) -> nn.Module:
    dtype = compute_dtype(cfg.compute_dtype)
    if cfg.reconstructive == "nested_unet":
        return NestedUNet(
            out_channels=channels,
            filters=_widths((32, 64, 128, 256, 512), cfg.nested_unet_levels, cfg.width_multiplier),
            deep_supervision=cfg.deep_supervision,
            align_corners=cfg.align_corners,
            init_scheme=cfg.init_scheme,
            dtype=dtype,
        )
    if cfg.reconstructive == "draem":
        return DraemReconstructive(
            out_channels=channels,
            base_width=scaled_width(128, cfg.width_multiplier),
            init_scheme=cfg.init_scheme,
            dtype=dtype,
        )
    raise ValueError(f"config.model.reconstructive={cfg.reconstructive!r}; expected 'nested_unet' or 'draem'")


def build_discriminative(cfg: ml_collections.ConfigDict) -> nn.Module:
    dtype = compute_dtype(cfg.compute_dtype)
    if cfg.discriminative == "unet":
        return UNet(
            out_channels=2,
            widths=_widths((64, 128, 256, 512), cfg.unet_levels, cfg.width_multiplier),
            align_corners=cfg.align_corners,
            init_scheme=cfg.init_scheme,
            dtype=dtype,
        )
    if cfg.discriminative == "draem":
        return DraemDiscriminative(
            out_channels=2,
            base_width=scaled_width(64, cfg.width_multiplier),
            init_scheme=cfg.init_scheme,
            dtype=dtype,
        )
    raise ValueError(f"config.model.discriminative={cfg.discriminative!r}; expected 'unet' or 'draem'")


def build_model(cfg: ml_collections.ConfigDict, channels: int) -> Draem:
    return Draem(build_reconstructive(cfg, channels), build_discriminative(cfg))


def size_multiple(cfg: ml_collections.ConfigDict) -> int:
    """Patch sizes must be multiples of this (every max-pool halves the size exactly)."""
    rec = 2 ** (cfg.nested_unet_levels - 1) if cfg.reconstructive == "nested_unet" else 16
    disc = 2**cfg.unet_levels if cfg.discriminative == "unet" else 32
    return max(rec, disc)
