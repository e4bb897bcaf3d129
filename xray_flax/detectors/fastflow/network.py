"""FastFlow's trainable head on frozen backbone features (NHWC).

    per tap t:  x_t = LayerNorm_[C,H,W](features_t)          trainable affine of shape [H, W, C]
                z_t, logdet_t = AllInOneFlow(x_t)            flow_steps FrEIA AllInOne blocks

The loss and the anomaly map on its latents are in loss.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from xray_flax.nn.flows import AllInOneFlow


class FastFlowHead(nn.Module):
    """One LayerNorm + AllInOneFlow per tap; features {tap: [B, h, w, C]} -> ({tap: z}, {tap: logdet [B]})."""

    taps: Sequence[str]
    channels: Sequence[int]
    flow_steps: int = 8
    hidden_ratio: float = 1.0
    conv3x3_only: bool = False
    clamp: float = 2.0
    layer_norm: bool = True

    @nn.compact
    def __call__(self, features: dict[str, jax.Array]) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
        zs, logdets = {}, {}
        for tap, channels in zip(self.taps, self.channels):
            x = features[tap].astype(jnp.float32)
            if x.shape[-1] != channels:
                raise ValueError(f"FastFlow tap {tap!r}: expected {channels} channels, got features {x.shape}")
            if self.layer_norm:
                # torch.nn.LayerNorm([C, H, W]): statistics over all three axes, biased
                # variance, eps 1e-5, elementwise scale and bias per (h, w, c). [anomalib]
                x = nn.LayerNorm(
                    epsilon=1e-5,
                    reduction_axes=(1, 2, 3),
                    feature_axes=(1, 2, 3),
                    use_fast_variance=False,
                    name=f"norm_{tap}",
                )(x)
            flow = AllInOneFlow(
                channels,
                steps=self.flow_steps,
                hidden_ratio=self.hidden_ratio,
                clamp=self.clamp,
                conv3x3_only=self.conv3x3_only,
                name=f"flow_{tap}",
            )
            zs[tap], logdets[tap] = flow(x)
        return zs, logdets
