"""The pyramidal autoencoder's pure train step, anomaly map and preview images.

Training sees clean normal tiles only and reconstructs them; nothing is synthesised, so the
step needs no key and no auxiliary arrays.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from xray_flax import errors
from xray_flax.detectors.base import TrainState
from xray_flax.detectors.pyramid_ae.loss import pyramid_error_map, reconstruction_loss

IMAGE_SCORES = ("max", "mean")


def train_step(
    state: TrainState,
    batch: dict,
    key: jax.Array,
    aux: None,
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    loss_config: ml_collections.ConfigDict,
) -> tuple[TrainState, dict]:
    """One optimisation step: reconstruct the batch of normal tiles."""
    del key, aux
    images = batch["image"]

    def loss_fn(params):
        reconstruction, updates = model.apply(
            {"params": params, **state.collections}, images, train=True, mutable=["batch_stats"]
        )
        total, terms = reconstruction_loss(
            images,
            reconstruction,
            ssim_weight=loss_config.ssim_weight,
            ssim_window=loss_config.ssim_window,
            ssim_sigma=loss_config.ssim_sigma,
        )
        return total, (terms, updates)

    (_, (terms, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = state.apply_gradients(grads, tx, collections={**state.collections, **updates})
    return new_state, dict(terms, grad_norm=optax.tree.norm(grads))


def anomaly_map(variables: dict, images: jax.Array, *, model: nn.Module, levels: int, image_score: str) -> dict:
    """{'map': pyramid reconstruction error [B, H, W], 'reconstruction' [B, H, W, C]} and, with
    image_score 'mean', 'score' [B] = the mean of the map (else the shared filtered max)."""
    reconstruction = model.apply(variables, images, train=False)
    error = pyramid_error_map(images, reconstruction, levels)
    out = {"map": error, "reconstruction": reconstruction}
    if image_score == "mean":
        out["score"] = jnp.mean(error, axis=(1, 2))
    elif image_score != "max":
        raise errors.ConfigError(f"config.model.image_score={image_score!r}; expected one of {IMAGE_SCORES}")
    return out


def preview(variables: dict, batch: dict, key: jax.Array, aux: None, *, model: nn.Module, levels: int) -> dict:
    """Images for TensorBoard: input, reconstruction and the map scaled by each tile's maximum."""
    del key, aux
    out = anomaly_map(variables, batch["image"], model=model, levels=levels, image_score="max")
    error = out["map"]
    peak = jnp.max(error, axis=(1, 2), keepdims=True)
    return {
        "input": batch["image"],
        "reconstruction": out["reconstruction"],
        "error_map": (error / jnp.maximum(peak, 1e-12))[..., None],
    }
