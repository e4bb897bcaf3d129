"""Optimisers of the gradient-kind detectors, from a `config.optim` section.

    make_optimizer(optim, num_steps)     Adam (or AdamW with `weight_decay` > 0) with DRAEM's
                                         multi-step decay: the learning rate is multiplied by
                                         `decay_factor` at each milestone, given as fractions of the run
    make_torch_optimizer(optim, algorithm)
                                         torch.optim.Adam / SGD / AdamW at a constant rate, step
                                         for step as torch applies them (the baselines' optimisers)

torch's rules, for parameters p, gradient g, rate lr and weight decay wd (`optim.weight_decay`):

    clip      torch.nn.utils.clip_grad_norm_(max_norm) before the step (`optim.grad_clip_norm` > 0):
              g <- g * max_norm / |g| when the global norm |g| exceeds max_norm
    'adam'    torch.optim.Adam(weight_decay=wd): coupled L2, g <- g + wd p, then Adam's moments
    'sgd'     torch.optim.SGD(momentum, weight_decay=wd): g <- g + wd p, then the heavy-ball buffer
              b <- momentum b + g (b_1 = g: optax's trace starts at zero), p <- p - lr b
    'adamw'   torch.optim.AdamW(weight_decay=wd): decoupled, p <- p - lr (adam(g) + wd p), with p
              the parameters before the step (torch multiplies by 1 - lr wd first, the same)

`optim.amsgrad` (Adam and AdamW): torch's AMSGrad keeps the running maximum of the *uncorrected*
second moment v and divides it by the bias correction of the current step:
denom = sqrt(max_{s<=t} v_s) / sqrt(1 - b2^t) + eps. optax.amsgrad takes the maximum of the
already corrected v_s / (1 - b2^s) instead, which differs in the first few hundred steps (each
early v_s is corrected by a larger factor), so the update is written here
(`scale_by_torch_amsgrad`). tests/test_optim.py checks every rule against NumPy.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

TORCH_ALGORITHMS = ("adam", "sgd", "adamw")


def make_optimizer(optim: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
    boundaries = {int(round(m * num_steps)): optim.decay_factor for m in optim.milestones}
    schedule = optax.piecewise_constant_schedule(optim.learning_rate, boundaries)
    weight_decay = float(optim.get("weight_decay", 0.0))
    if weight_decay > 0:
        return optax.adamw(schedule, b1=optim.b1, b2=optim.b2, weight_decay=weight_decay)
    return optax.adam(schedule, b1=optim.b1, b2=optim.b2)


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


def make_torch_optimizer(optim: ml_collections.ConfigDict, algorithm: str) -> optax.GradientTransformation:
    """torch.optim.<Adam | SGD | AdamW> (`algorithm` 'adam', 'sgd', 'adamw') at the constant rate
    `optim.learning_rate`, as one optax chain in torch's order: [clip] [coupled decay] direction
    [decoupled decay] rate (see the module docstring).

    Read from `optim` when present (else torch's defaults): weight_decay (0), grad_clip_norm (0 =
    no clipping), b1, b2, eps (0.9, 0.999, 1e-8) and amsgrad (False) for Adam and AdamW, momentum
    (0 = plain SGD) for SGD. A term that is off leaves no element in the chain."""
    if algorithm not in TORCH_ALGORITHMS:
        raise ValueError(f"torch optimiser {algorithm!r}; expected one of {TORCH_ALGORITHMS}")
    learning_rate = float(optim.learning_rate)
    weight_decay = float(optim.get("weight_decay", 0.0))
    clip = float(optim.get("grad_clip_norm", 0.0))
    parts = [optax.clip_by_global_norm(clip)] if clip > 0 else []
    if algorithm != "adamw" and weight_decay > 0:
        parts.append(optax.add_decayed_weights(weight_decay))
    if algorithm == "sgd":
        parts.append(optax.sgd(learning_rate, momentum=float(optim.get("momentum", 0.0)) or None, nesterov=False))
        return optax.chain(*parts)
    b1, b2, eps = float(optim.get("b1", 0.9)), float(optim.get("b2", 0.999)), float(optim.get("eps", 1e-8))
    amsgrad = bool(optim.get("amsgrad", False))
    if algorithm == "adam" and not amsgrad:
        parts.append(optax.adam(learning_rate, b1=b1, b2=b2, eps=eps))
        return optax.chain(*parts)
    parts.append(scale_by_torch_amsgrad(b1, b2, eps) if amsgrad else optax.scale_by_adam(b1, b2, eps))
    if algorithm == "adamw" and weight_decay > 0:
        parts.append(optax.add_decayed_weights(weight_decay))
    parts.append(optax.scale(-learning_rate))
    return optax.chain(*parts)
