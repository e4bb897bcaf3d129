"""The original DRAEM sub-networks (Zavrtanik et al., ICCV 2021; reference code VitjanZ/DRAEM).

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

from xray_flax.nn.layers import ConvBNAct, DoubleConv, Dtype, conv_kernel_init, max_pool2, upsample2x


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
