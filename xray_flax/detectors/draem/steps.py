"""DRAEM's pure train step, anomaly map and preview images.

The synthetic anomalies are made inside the train step from its key, so the accelerator
never waits for a host-side augmenter; `aux` is the device-resident texture bank.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from xray_flax.detectors.base import TrainState
from xray_flax.detectors.draem.loss import draem_loss
from xray_flax.detectors.draem.network import anomaly_probability
from xray_flax.synthesis import SynthesisSpec, synthesize_batch


def train_step(
    state: TrainState,
    batch: dict,
    key: jax.Array,
    textures: jax.Array,
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    spec: SynthesisSpec,
    loss_config: ml_collections.ConfigDict,
) -> tuple[TrainState, dict]:
    """One optimisation step on a batch of normal patches with synthetic anomalies pasted in."""
    clean = batch["image"]
    synthetic = synthesize_batch(key, clean, textures, spec)

    def loss_fn(params):
        (reconstruction, logits), updates = model.apply(
            {"params": params, **state.collections}, synthetic["image"], train=True, mutable=["batch_stats"]
        )
        total, terms = draem_loss(
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
        return total, (terms, updates)

    (_, (terms, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = state.apply_gradients(grads, tx, collections={**state.collections, **updates})
    metrics = dict(terms, grad_norm=optax.tree.norm(grads), anomaly_fraction=jnp.mean(synthetic["has_anomaly"]))
    return new_state, metrics


def anomaly_map(variables: dict, images: jax.Array, *, model: nn.Module) -> dict:
    """{'map': softmax probability of the anomalous class [B, H, W], 'reconstruction' [B, H, W, C]}."""
    reconstruction, logits = model.apply(variables, images, train=False)
    return {"map": anomaly_probability(logits), "reconstruction": jnp.clip(reconstruction, 0.0, 1.0)}


def refresh_statistics(variables: dict, batch: dict, key: jax.Array, textures: jax.Array, *, model, spec) -> dict:
    """`variables` with the BatchNorm running statistics updated by one training-mode pass over
    `batch` with synthetic anomalies pasted in, as the train step makes them; weights unchanged."""
    synthetic = synthesize_batch(key, batch["image"], textures, spec)
    _, updates = model.apply(variables, synthetic["image"], train=True, mutable=["batch_stats"])
    return {**variables, **updates}


def preview(variables: dict, batch: dict, key: jax.Array, textures: jax.Array, *, model, spec) -> dict:
    """Images for TensorBoard: input, synthetic anomaly and its mask, reconstruction, predicted map."""
    synthetic = synthesize_batch(key, batch["image"], textures, spec)
    out = anomaly_map(variables, synthetic["image"], model=model)
    return {
        "input": batch["image"],
        "synthetic": synthetic["image"],
        "synthetic_mask": synthetic["mask"],
        "reconstruction": out["reconstruction"],
        "predicted_mask": out["map"][..., None],
    }
