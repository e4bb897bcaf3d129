"""U-Net discriminator of Mezina et al. 2025 (bilinear U-Net, Ronneberger et al. 2015).

Encoder levels 64/128/256/512 plus a bottleneck as wide as the last level (four max-pools:
512x512 -> 32x32), each level two conv3x3 -> BN -> ReLU. Decoder: bilinear x2 up, concat
with the skip, a double conv whose middle width is half its input (the widely used
'milesial' bilinear U-Net, also the PyTorch peer, benchmarks/peer/unetpp_torch_bench.py), and a 1x1 conv to the
two class logits (normal, anomalous).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from xray_flax.nn.layers import DoubleConv, Dtype, conv_kernel_init, max_pool2, upsample2x


class UNet(nn.Module):
    out_channels: int = 2
    widths: Sequence[int] = (64, 128, 256, 512)
    align_corners: bool = True
    init_scheme: str = "draem"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        depth = len(self.widths)
        if x.shape[1] % 2**depth or x.shape[2] % 2**depth:
            raise ValueError(
                f"UNet with {depth} pools needs height and width divisible by {2**depth}, got {x.shape[1]}x{x.shape[2]}"
            )
        block = lambda f, mid=None, name=None: DoubleConv(  # noqa: E731
            f, mid, act="relu", init_scheme=self.init_scheme, dtype=self.dtype, name=name
        )

        encoder_widths = list(self.widths) + [self.widths[-1]]
        skips = [block(encoder_widths[0], name="enc_0")(x, train)]
        for level in range(1, depth + 1):
            skips.append(block(encoder_widths[level], name=f"enc_{level}")(max_pool2(skips[-1]), train))

        h = skips.pop()
        for k in range(depth):
            skip = skips.pop()
            h = jnp.concatenate([skip, upsample2x(h, self.align_corners)], axis=-1)
            out = self.widths[depth - 2 - k] if k < depth - 1 else self.widths[0]
            h = block(out, h.shape[-1] // 2, name=f"dec_{k}")(h, train)
        logits = nn.Conv(
            self.out_channels,
            (1, 1),
            kernel_init=conv_kernel_init(self.init_scheme),
            dtype=self.dtype,
            param_dtype=jnp.float32,
            name="logits",
        )(h)
        return logits.astype(jnp.float32)
