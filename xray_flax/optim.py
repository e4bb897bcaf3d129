"""Optimisers of the gradient-kind detectors, from a `config.optim` section.

Adam (or AdamW with `weight_decay` > 0) with DRAEM's multi-step decay: the learning rate is
multiplied by `decay_factor` at each milestone, given as fractions of the run.
"""

from __future__ import annotations

import ml_collections
import optax


def make_optimizer(optim: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
    boundaries = {int(round(m * num_steps)): optim.decay_factor for m in optim.milestones}
    schedule = optax.piecewise_constant_schedule(optim.learning_rate, boundaries)
    weight_decay = float(optim.get("weight_decay", 0.0))
    if weight_decay > 0:
        return optax.adamw(schedule, b1=optim.b1, b2=optim.b2, weight_decay=weight_decay)
    return optax.adam(schedule, b1=optim.b1, b2=optim.b2)
