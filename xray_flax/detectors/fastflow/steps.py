"""FastFlow's pure init, train step, anomaly map and preview on a frozen `Backbone`.

Variables:

    params      the head: per-tap LayerNorm affines and flow subnets / global affines, trained
    constants   the flows' fixed channel permutations (int32), drawn at init
    backbone    {"params", "batch_stats"} of the pretrained backbone, frozen, inference mode

Only `params` gets gradients and optimiser slots (TrainState keeps the other two in
`collections`). [anomalib: the backbone's parameters have requires_grad=False and it runs in
eval mode; the permutations are non-trainable parameters of each block]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

from xray_flax.backbones import COLLECTION, Backbone
from xray_flax.backbones.base import frozen
from xray_flax.detectors.base import TrainState
from xray_flax.detectors.fastflow.loss import fastflow_loss, fastflow_map
from xray_flax.detectors.fastflow.network import FastFlowHead
from xray_flax.nn.flows import CONSTANTS
from xray_flax.optim import make_torch_optimizer


def make_optimizer(optim: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """torch.optim.Adam(lr, betas, eps, weight_decay) at a constant rate: the decay is added to the
    gradient before the moments (coupled L2), after the optional global-norm clip (torch clips
    the gradients before optimizer.step adds the decay). [anomalib]"""
    return make_torch_optimizer(optim, "adam")


def head_variables(variables: dict) -> dict:
    return {"params": variables["params"], CONSTANTS: variables[CONSTANTS]}


def features(backbone: Backbone, variables: dict, images: jax.Array) -> dict[str, jax.Array]:
    """The frozen backbone's taps (inference mode, no gradient)."""
    return frozen(backbone.features(variables[COLLECTION], images))


def init(key: jax.Array, sample: jax.Array, *, backbone: Backbone, head: FastFlowHead) -> dict:
    """Random backbone and head (separate keys); `pretrained` replaces the backbone."""
    backbone_key, head_key = jax.random.split(key)
    backbone_variables = backbone.init(backbone_key, sample)
    head_vars = head.init(head_key, features(backbone, {COLLECTION: backbone_variables}, sample))
    return {"params": head_vars["params"], CONSTANTS: head_vars[CONSTANTS], COLLECTION: backbone_variables}


def train_step(
    state: TrainState,
    batch: dict,
    key: jax.Array,
    aux: None,
    *,
    backbone: Backbone,
    head: FastFlowHead,
    tx: optax.GradientTransformation,
) -> tuple[TrainState, dict]:
    """One Adam step of the flows on the frozen features of a batch of normal tiles."""
    del key, aux
    feats = features(backbone, state.collections, batch["image"])

    def loss_fn(params):
        zs, logdets = head.apply({"params": params, CONSTANTS: state.collections[CONSTANTS]}, feats)
        total, per_tap = fastflow_loss(zs, logdets)
        return total, per_tap

    (total, per_tap), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = state.apply_gradients(grads, tx)
    metrics = {"loss": total, "grad_norm": optax.tree.norm(grads)}
    metrics.update({f"loss_{tap}": value for tap, value in per_tap.items()})
    return new_state, metrics


def anomaly_map(
    variables: dict, images: jax.Array, *, backbone: Backbone, head: FastFlowHead, image_score: str, blur_sigma: float
) -> dict:
    """{'map' [B, H, W] in [-1, 0]} and, with image_score 'max', 'score' [B] = its maximum [anomalib]."""
    zs, _ = head.apply(head_variables(variables), features(backbone, variables, images))
    out = {"map": fastflow_map(zs, images.shape[1:3], blur_sigma)}
    if image_score == "max":
        out["score"] = jnp.max(out["map"], axis=(1, 2))
    return out


def preview(
    variables: dict,
    batch: dict,
    key: jax.Array,
    aux: None,
    *,
    backbone: Backbone,
    head: FastFlowHead,
    blur_sigma: float,
) -> dict:
    """TensorBoard images: the input and its map rescaled to [0, 1] per tile."""
    del key, aux
    out = anomaly_map(
        variables, batch["image"], backbone=backbone, head=head, image_score="filtered_max", blur_sigma=blur_sigma
    )["map"]
    low = jnp.min(out, axis=(1, 2), keepdims=True)
    high = jnp.max(out, axis=(1, 2), keepdims=True)
    return {"input": batch["image"], "anomaly_map": ((out - low) / jnp.maximum(high - low, 1e-12))[..., None]}
