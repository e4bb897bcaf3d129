"""Pure training and inference steps of the DRAEM-style detectors.

Every function here is a pure function of explicit state, data and keys; train.py jits them
over the device mesh. The synthetic anomalies are made inside the train step from its key,
so the accelerator never waits for a host-side augmenter.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct

from xray_flax import losses
from xray_flax.anomaly import SynthesisSpec, synthesize_batch
from xray_flax.models.draem import anomaly_probability


class TrainState(struct.PyTreeNode):
    """Everything that changes during training; checkpoints store exactly this."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


def make_optimizer(optim: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
    """Adam with DRAEM's multi-step decay: lr * decay_factor at each milestone (fractions of the run)."""
    boundaries = {int(round(m * num_steps)): optim.decay_factor for m in optim.milestones}
    schedule = optax.piecewise_constant_schedule(optim.learning_rate, boundaries)
    return optax.adam(schedule, b1=optim.b1, b2=optim.b2)


def init_state(model: nn.Module, tx: optax.GradientTransformation, key: jax.Array, sample: jax.Array) -> TrainState:
    variables = model.init(key, sample, train=False)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
    )


def abstract_state(
    model: nn.Module, tx: optax.GradientTransformation, patch_size: int, channels: int, sharding: jax.sharding.Sharding
) -> TrainState:
    """Shapes, dtypes and shardings of a TrainState without allocating it (the restore target)."""
    sample = jnp.zeros((1, patch_size, patch_size, channels), jnp.float32)
    shapes = jax.eval_shape(lambda: init_state(model, tx, jax.random.key(0), sample))
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), shapes)


def train_step(
    state: TrainState,
    batch: dict,
    textures: jax.Array,
    key: jax.Array,
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    spec: SynthesisSpec,
    loss_config: ml_collections.ConfigDict,
) -> tuple[TrainState, dict]:
    """One optimisation step on a batch of normal patches.

    A non-finite loss or gradient leaves the state unchanged and reports `nonfinite` = 1,
    so a NaN never reaches the parameters (nor, therefore, a checkpoint).
    """
    clean = batch["image"]
    synthetic = synthesize_batch(key, clean, textures, spec)

    def loss_fn(params):
        (reconstruction, logits), updates = model.apply(
            {"params": params, "batch_stats": state.batch_stats},
            synthetic["image"],
            train=True,
            mutable=["batch_stats"],
        )
        total, terms = losses.draem_loss(
            clean,
            reconstruction,
            logits,
            synthetic["mask"],
            ssim_weight=loss_config.ssim_weight,
            ssim_window=loss_config.ssim_window,
            ssim_sigma=loss_config.ssim_sigma,
            focal_gamma=loss_config.focal_gamma,
            focal_alpha=loss_config.focal_alpha,
        )
        return total, (terms, updates["batch_stats"])

    (_, (terms, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)

    finite = jnp.isfinite(terms["loss"]) & jnp.isfinite(grad_norm)
    keep = functools.partial(jax.tree.map, lambda new, old: jnp.where(finite, new, old))
    new_state = TrainState(
        step=state.step + 1,
        params=keep(params, state.params),
        batch_stats=keep(batch_stats, state.batch_stats),
        opt_state=keep(opt_state, state.opt_state),
    )
    metrics = dict(
        terms,
        grad_norm=grad_norm,
        anomaly_fraction=jnp.mean(synthetic["has_anomaly"]),
        nonfinite=1.0 - finite.astype(jnp.float32),
    )
    return new_state, metrics


def predict_step(variables: dict, images: jax.Array, *, model: nn.Module) -> tuple[jax.Array, jax.Array]:
    """(anomaly map [B, H, W] in [0, 1], reconstruction [B, H, W, C]) in inference mode."""
    reconstruction, logits = model.apply(variables, images, train=False)
    return anomaly_probability(logits), reconstruction


def preview_step(
    state: TrainState, batch: dict, textures: jax.Array, key: jax.Array, *, model: nn.Module, spec: SynthesisSpec
) -> dict:
    """Images for TensorBoard: input, synthetic anomaly and its mask, reconstruction, predicted map."""
    synthetic = synthesize_batch(key, batch["image"], textures, spec)
    anomaly_map, reconstruction = predict_step(
        {"params": state.params, "batch_stats": state.batch_stats}, synthetic["image"], model=model
    )
    return {
        "input": batch["image"],
        "synthetic": synthetic["image"],
        "synthetic_mask": synthetic["mask"],
        "reconstruction": jnp.clip(reconstruction, 0.0, 1.0),
        "predicted_mask": anomaly_map[..., None],
    }
