"""Reverse Distillation's pure init, pretrained-weights fill-in, train step, anomaly map, preview.

Variables: {"params": OCBE + decoder (trained), "batch_stats": their BN statistics,
"backbone": the frozen encoder's {"params", "batch_stats"}}. Only "params" reach the optimiser;
the train step runs the head's BatchNorms in training mode (batch statistics, 'batch_stats'
mutable) and the encoder in inference mode with stopped gradients, and writes back the new
'batch_stats' only, so the encoder is bit-for-bit unchanged by training. [anomalib: the
encoder is put in eval() on every forward and only bottleneck + decoder parameters are given
to Adam; original code: encoder.eval(), bn.train(), decoder.train()]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from xray_flax.backbones import COLLECTION, Backbone
from xray_flax.backbones.base import frozen
from xray_flax.detectors.base import TrainState
from xray_flax.detectors.reverse_distillation import loss as rd_loss
from xray_flax.detectors.reverse_distillation.network import ReverseDistillationHead


def encode(backbone: Backbone, variables: dict, images: jax.Array) -> list[jax.Array]:
    """The frozen encoder's taps, shallow to deep, gradients stopped."""
    features = frozen(backbone.features(variables[COLLECTION], images))
    return [features[t] for t in backbone.taps]


def head_variables(variables: dict) -> dict:
    return {k: v for k, v in variables.items() if k != COLLECTION}


def init(key: jax.Array, sample: jax.Array, *, backbone: Backbone, head: ReverseDistillationHead) -> dict:
    """Random encoder and head variables of the right shapes (pure, no file reading)."""
    key_encoder, key_head = jax.random.split(key)
    encoder_variables = backbone.init(key_encoder, sample)
    taps = encode(backbone, {COLLECTION: encoder_variables}, sample)
    head_vars = head.init(key_head, taps, train=False)
    return {**head_vars, COLLECTION: encoder_variables}


def train_step(
    state: TrainState,
    batch: dict,
    key: jax.Array,
    aux: None,
    *,
    backbone: Backbone,
    head: ReverseDistillationHead,
    tx: optax.GradientTransformation,
) -> tuple[TrainState, dict]:
    """One Adam step on the OCBE + decoder: decode the frozen encoder's taps of normal tiles."""
    del key, aux
    taps = encode(backbone, state.collections, batch["image"])

    def loss_fn(params):
        decoded, updates = head.apply(
            {"params": params, "batch_stats": state.collections["batch_stats"]},
            taps,
            train=True,
            mutable=["batch_stats"],
        )
        total, terms = rd_loss.distillation_loss(taps, decoded)
        return total, (terms, updates)

    (total, (terms, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = state.apply_gradients(grads, tx, collections={**state.collections, **updates})
    metrics = {"loss": total, "grad_norm": optax.tree.norm(grads)}
    metrics.update({f"loss_{tap}": term for tap, term in zip(backbone.taps, terms)})
    return new_state, metrics


def anomaly_map(
    variables: dict,
    images: jax.Array,
    *,
    backbone: Backbone,
    head: ReverseDistillationHead,
    mode: str,
    sigma: float,
    border: str,
) -> dict:
    """{'map': [B, H, W] summed (or multiplied) channel cosine distances, blurred; 'score': its max}."""
    taps = encode(backbone, variables, images)
    decoded = head.apply(head_variables(variables), taps, train=False)
    amap = rd_loss.anomaly_map(taps, decoded, images.shape[1:3], mode=mode, sigma=sigma, border=border)
    return {"map": amap, "score": jnp.max(amap, axis=(1, 2))}


def preview(variables: dict, batch: dict, key: jax.Array, aux: None, **map_kwargs) -> dict:
    """TensorBoard images: the input and the map scaled by each tile's maximum."""
    del key, aux
    amap = anomaly_map(variables, batch["image"], **map_kwargs)["map"]
    peak = jnp.max(amap, axis=(1, 2), keepdims=True)
    return {"input": batch["image"], "anomaly_map": (amap / jnp.maximum(peak, 1e-12))[..., None]}
