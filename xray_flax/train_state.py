"""The state of gradient training and its NaN guard, for every trained model of the package.

`TrainState` is what `checkpoints/` hold for a gradient-kind detector (xray_flax/train.py) and
for a trained hidden-art method (xray_flax/hidden_art/train.py); `guard_nonfinite` wraps a train
step so that a non-finite loss or gradient never reaches the parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

Variables = dict[str, Any]


class TrainState(struct.PyTreeNode):
    """The state of a gradient-kind detector during training; `checkpoints/` store exactly this.

    `params` are the trainable parameters (the only leaves that get gradients and optimiser
    slots); `collections` every other Flax collection of the variables (e.g. batch_stats).
    """

    step: jax.Array
    params: Any
    collections: Any
    opt_state: Any

    @classmethod
    def create(cls, variables: Variables, tx: optax.GradientTransformation) -> TrainState:
        params, collections = split_variables(variables)
        return cls(step=jnp.zeros((), jnp.int32), params=params, collections=collections, opt_state=tx.init(params))

    @property
    def variables(self) -> Variables:
        return {"params": self.params, **self.collections}

    def apply_gradients(self, grads: Any, tx: optax.GradientTransformation, collections: Any = None) -> TrainState:
        """One optimiser update; `collections` replaces the non-trainable collections when given
        (e.g. the batch statistics of this step's forward pass)."""
        updates, opt_state = tx.update(grads, self.opt_state, self.params)
        return self.replace(
            step=self.step + 1,
            params=optax.apply_updates(self.params, updates),
            collections=self.collections if collections is None else collections,
            opt_state=opt_state,
        )


def split_variables(variables: Variables) -> tuple[Any, dict]:
    """(params, every other collection) of a Flax variables dict."""
    variables = dict(variables)
    return variables.pop("params", {}), variables


def guard_nonfinite(train_step: Callable) -> Callable:
    """Wraps a train step so that a non-finite loss or gradient leaves the state unchanged.

    The step's metrics must hold ``loss`` and ``grad_norm`` (the global norm of the
    gradients, e.g. optax.tree.norm): a finite norm means every gradient is finite, and a
    finite update of finite parameters stays finite. The step counter still advances (the data
    iterator and the keys did), and the metrics report ``nonfinite`` = 1, so the loop stops
    with a clear error before anything non-finite reaches the parameters or a checkpoint.
    """

    def guarded(state: TrainState, batch: dict, key: jax.Array, aux: Any) -> tuple[TrainState, dict]:
        new_state, metrics = train_step(state, batch, key, aux)
        missing = {"loss", "grad_norm"} - set(metrics)
        if missing:
            raise KeyError(f"a gradient detector's train_step must report {sorted(missing)} in its metrics")
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
        kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
        metrics = dict(metrics, nonfinite=1.0 - finite.astype(jnp.float32))
        return kept.replace(step=state.step + 1), metrics

    return guarded
