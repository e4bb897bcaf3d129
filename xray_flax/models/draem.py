"""DRAEM-style detector: a reconstructive network followed by a discriminative network.

The discriminator sees cat(augmented image, reconstruction) and predicts two logits per pixel;
the anomaly map is the softmax probability of the anomalous class. With the Nested U-Net and
U-Net this is the model of Mezina et al. 2025; with DRAEM's own networks it is DRAEM.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


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
