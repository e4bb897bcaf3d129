"""Nested U-Net (UNet++, Zhou et al. 2018): the reconstructive sub-network of Mezina et al. 2025.

Node X[i, j] (level i, column j) is a VGG block (conv3x3 -> BN -> LeakyReLU(0.2), twice):
    X[i, 0] = H(pool(X[i-1, 0]))                       (X[0, 0] = H(input))
    X[i, j] = H(cat(X[i, 0], ..., X[i, j-1], up(X[i+1, j-1])))
with max-pool 2 and bilinear x2 upsampling. The output is a 1x1 convolution of X[0, L-1]
with no activation (as in DRAEM's reconstructive network). With deep supervision, 1x1 heads
on X[0, 1..L-1] are averaged (UNet++ paper); the paper's model uses it off.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from xray_flax.nn.layers import DoubleConv, Dtype, conv_kernel_init, max_pool2, upsample2x


class NestedUNet(nn.Module):
    out_channels: int = 1
    filters: Sequence[int] = (32, 64, 128, 256, 512)
    deep_supervision: bool = False
    align_corners: bool = True
    init_scheme: str = "draem"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        levels = len(self.filters)
        if x.shape[1] % 2 ** (levels - 1) or x.shape[2] % 2 ** (levels - 1):
            raise ValueError(
                f"NestedUNet with {levels} levels needs height and width divisible by "
                f"{2 ** (levels - 1)}, got {x.shape[1]}x{x.shape[2]}"
            )

        def node(i: int, j: int, inp: jax.Array) -> jax.Array:
            return DoubleConv(
                self.filters[i], act="leaky_relu", init_scheme=self.init_scheme, dtype=self.dtype, name=f"X_{i}_{j}"
            )(inp, train)

        nodes: dict[tuple[int, int], jax.Array] = {}
        h = x
        for i in range(levels):
            h = node(i, 0, h if i == 0 else max_pool2(h))
            nodes[i, 0] = h
        for j in range(1, levels):
            for i in range(levels - j):
                inputs = [nodes[i, k] for k in range(j)]
                inputs.append(upsample2x(nodes[i + 1, j - 1], self.align_corners))
                nodes[i, j] = node(i, j, jnp.concatenate(inputs, axis=-1))

        def head(name: str, feat: jax.Array) -> jax.Array:
            return nn.Conv(
                self.out_channels,
                (1, 1),
                kernel_init=conv_kernel_init(self.init_scheme),
                dtype=self.dtype,
                param_dtype=jnp.float32,
                name=name,
            )(feat)

        if self.deep_supervision:
            outs = [head(f"head_{j}", nodes[0, j]) for j in range(1, levels)]
            return jnp.mean(jnp.stack(outs), axis=0).astype(jnp.float32)
        return head("head", nodes[0, levels - 1]).astype(jnp.float32)
