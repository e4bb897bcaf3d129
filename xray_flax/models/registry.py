"""Builds detectors by name from `config.model` (one entry per network family)."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from xray_flax.models.draem import Draem
from xray_flax.models.draem_networks import DraemDiscriminative, DraemReconstructive
from xray_flax.models.layers import scaled_width
from xray_flax.models.nested_unet import NestedUNet
from xray_flax.models.unet import UNet

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str):
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(f"config.model.compute_dtype={name!r}; expected one of {sorted(_DTYPES)}") from None


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
            out_channels=2, base_width=scaled_width(64, cfg.width_multiplier), init_scheme=cfg.init_scheme, dtype=dtype
        )
    raise ValueError(f"config.model.discriminative={cfg.discriminative!r}; expected 'unet' or 'draem'")


def build_model(cfg: ml_collections.ConfigDict, channels: int) -> Draem:
    if cfg.name != "draem":
        raise ValueError(f"config.model.name={cfg.name!r}; available detectors: ['draem']")
    return Draem(build_reconstructive(cfg, channels), build_discriminative(cfg))


def size_multiple(cfg: ml_collections.ConfigDict) -> int:
    """Patch sizes must be multiples of this (every max-pool halves the size exactly)."""
    rec = 2 ** (cfg.nested_unet_levels - 1) if cfg.reconstructive == "nested_unet" else 16
    disc = 2**cfg.unet_levels if cfg.discriminative == "unet" else 32
    return max(rec, disc)
