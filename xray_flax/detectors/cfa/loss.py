"""CFA's soft-boundary loss on squared descriptor-to-centre distances (pure).

    n = K + J nearest centres of each position's descriptor (squared distances, ascending)
    L_att = mean(relu(d[:K] - r^2))             pull the K nearest inside the hypersphere
    L_rep = mean(relu(r^2 - d[K:K+J] - alpha))  push the J next ones beyond r^2 - alpha
    L = (L_att + L_rep) / nu

[paper eq. 5-7, anomalib loss.py, original code: K = J = 3, r = 1e-5, alpha = 0.1,
nu = 1e-3 (x1000)]. anomalib and the original code take the repulsive entries as
d[J:] of the K + J nearest, the paper as the J after the K nearest (d[K:]); with K = J,
the defaults of all three, these are the same entries. Means run over batch, positions and
neighbours.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from xray_flax.detectors.cfa.network import nearest


def cfa_loss(
    squared: jax.Array, *, num_nearest: int, num_hard_negatives: int, radius: float, alpha: float, nu: float
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(loss, {'attraction', 'repulsion'} before the 1/nu scale) for squared distances [B, N, M]."""
    d = nearest(squared, num_nearest + num_hard_negatives)
    r2 = float(radius) ** 2
    attraction = jnp.mean(jax.nn.relu(d[..., :num_nearest] - r2))
    repulsion = jnp.mean(jax.nn.relu(r2 - d[..., num_nearest:] - float(alpha)))
    return (attraction + repulsion) / float(nu), {"attraction": attraction, "repulsion": repulsion}
