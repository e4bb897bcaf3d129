"""torch.optim.AdamW(amsgrad=True) as an optax transformation. [anomalib: AdamW lr 1e-3,
weight_decay 5e-4, amsgrad, torch's default betas (0.9, 0.999) and eps 1e-8]

torch's AMSGrad keeps the running maximum of the *uncorrected* second moment v and divides it
by the bias correction of the current step: denom = sqrt(max_{s<=t} v_s) / sqrt(1 - b2^t) + eps.
optax.amsgrad takes the maximum of the already corrected v_s / (1 - b2^s) instead, which
differs in the first few hundred steps (each early v_s is corrected by a larger factor), so
the update is written here. The decay is decoupled as in AdamW: p <- p - lr (wd p + update),
with p the parameters before the step (torch multiplies by 1 - lr wd first, the same).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax


class TorchAmsgradState(NamedTuple):
    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates
    nu_max: optax.Updates


def scale_by_torch_amsgrad(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformation:
    """Adam's direction with torch's AMSGrad maximum (see the module docstring)."""

    def init_fn(params):
        zeros = lambda: jax.tree.map(jnp.zeros_like, params)  # noqa: E731
        return TorchAmsgradState(count=jnp.zeros([], jnp.int32), mu=zeros(), nu=zeros(), nu_max=zeros())

    def update_fn(updates, state, params=None):
        del params
        count = state.count + 1
        t = count.astype(jnp.float32)
        mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
        nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * jnp.square(g), state.nu, updates)
        nu_max = jax.tree.map(jnp.maximum, state.nu_max, nu)
        correction1 = 1 - b1**t
        correction2_sqrt = jnp.sqrt(1 - b2**t)
        out = jax.tree.map(lambda m, v: (m / correction1) / (jnp.sqrt(v) / correction2_sqrt + eps), mu, nu_max)
        return out, TorchAmsgradState(count=count, mu=mu, nu=nu, nu_max=nu_max)

    return optax.GradientTransformation(init_fn, update_fn)


def make_optimizer(optim: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """AdamW (amsgrad or plain Adam moments) with decoupled weight decay, constant rate."""
    b1, b2, eps = float(optim.b1), float(optim.b2), float(optim.eps)
    if optim.amsgrad:
        direction = scale_by_torch_amsgrad(b1, b2, eps)
    else:
        direction = optax.scale_by_adam(b1, b2, eps)
    parts = [direction]
    if float(optim.weight_decay) > 0:
        parts.append(optax.add_decayed_weights(float(optim.weight_decay)))
    parts.append(optax.scale(-float(optim.learning_rate)))
    return optax.chain(*parts)
