"""DRAEM-style detector: a reconstructive network followed by a discriminative network.

The discriminator sees cat(augmented image, reconstruction) and predicts two logits per pixel;
the anomaly map is the softmax probability of the anomalous class. With the Nested U-Net and
U-Net this is the model of Mezina et al. 2025; with DRAEM's own networks it is DRAEM.

The original DRAEM sub-networks (Zavrtanik et al., ICCV 2021; reference code VitjanZ/DRAEM).
Reconstructive: an encoder 1x/2x/4x/8x/8x base width (128) with four max-pools and a decoder
without skip connections (bilinear up + conv, then two convs per level), final conv3x3 with
no activation. Discriminative: a U-Net 1x/2x/4x/8x/8x/8x base width (64) with five
max-pools whose decoder concatenates the matching encoder block after each up-conv.
All convs are conv3x3 -> BN -> ReLU; bilinear upsampling uses align_corners=True as there.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from xray_flax import errors
from xray_flax.nn.layers import ConvBNAct, DoubleConv, Dtype, conv_kernel_init, max_pool2, scaled_width, upsample2x
from xray_flax.nn.nested_unet import NestedUNet
from xray_flax.nn.precision import compute_dtype
from xray_flax.nn.unet import UNet


def _final_conv(features: int, init: str, dtype: Dtype, name: str) -> nn.Conv:
    return nn.Conv(
        features, (3, 3), padding=1, kernel_init=conv_kernel_init(init), dtype=dtype, param_dtype=jnp.float32, name=name
    )


class DraemReconstructive(nn.Module):
    out_channels: int = 3
    base_width: int = 128
    init_scheme: str = "draem"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        bw = self.base_width
        if x.shape[1] % 16 or x.shape[2] % 16:
            raise ValueError(f"DRAEM's reconstructive network needs sizes divisible by 16, got {x.shape[1:3]}")
        kw = dict(act="relu", init_scheme=self.init_scheme, dtype=self.dtype)
        h = x
        for level, mult in enumerate((1, 2, 4, 8, 8)):
            h = DoubleConv(bw * mult, name=f"enc_{level}", **kw)(h if level == 0 else max_pool2(h), train)
        # Decoder levels: (width of the up-conv, output width of the level).
        for level, (up_w, out_w) in enumerate(((8, 4), (4, 2), (2, 1), (1, 1))):
            h = ConvBNAct(bw * up_w, name=f"up_{level}", **kw)(upsample2x(h), train)
            h = DoubleConv(bw * out_w, bw * up_w, name=f"dec_{level}", **kw)(h, train)
        return _final_conv(self.out_channels, self.init_scheme, self.dtype, "out")(h).astype(jnp.float32)


class DraemDiscriminative(nn.Module):
    out_channels: int = 2
    base_width: int = 64
    init_scheme: str = "draem"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        bw = self.base_width
        if x.shape[1] % 32 or x.shape[2] % 32:
            raise ValueError(f"DRAEM's discriminative network needs sizes divisible by 32, got {x.shape[1:3]}")
        kw = dict(act="relu", init_scheme=self.init_scheme, dtype=self.dtype)
        mults = (1, 2, 4, 8, 8, 8)
        skips = []
        h = x
        for level, mult in enumerate(mults):
            h = DoubleConv(bw * mult, name=f"enc_{level}", **kw)(h if level == 0 else max_pool2(h), train)
            skips.append(h)
        skips.pop()
        # Decoder: up-conv to the skip's width... except the bottleneck step, which stays 8x.
        for level, up_mult in enumerate((8, 4, 2, 1, 1)):
            up = ConvBNAct(bw * up_mult, name=f"up_{level}", **kw)(upsample2x(h), train)
            h = jnp.concatenate([up, skips.pop()], axis=-1)
            h = DoubleConv(bw * up_mult, name=f"dec_{level}", **kw)(h, train)
        return _final_conv(self.out_channels, self.init_scheme, self.dtype, "out")(h).astype(jnp.float32)


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
    raise errors.ConfigError(f"config.model.reconstructive={cfg.reconstructive!r}; expected 'nested_unet' or 'draem'")


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
    raise errors.ConfigError(f"config.model.discriminative={cfg.discriminative!r}; expected 'unet' or 'draem'")


def build_model(cfg: ml_collections.ConfigDict, channels: int) -> Draem:
    return Draem(build_reconstructive(cfg, channels), build_discriminative(cfg))


def size_multiple(cfg: ml_collections.ConfigDict) -> int:
    """Patch sizes must be multiples of this (every max-pool halves the size exactly)."""
    rec = 2 ** (cfg.nested_unet_levels - 1) if cfg.reconstructive == "nested_unet" else 16
    disc = 2**cfg.unet_levels if cfg.discriminative == "unet" else 32
    return max(rec, disc)
