"""CS-Flow's pure init, train step, anomaly map and preview on a frozen `Backbone`.

Variables:

    params      the cross-scale flow's subnets and gammas, trained
    constants   its fixed channel permutations (int32), drawn at init
    backbone    {"params", "batch_stats"} of the pretrained backbone, frozen, inference mode

The backbone always runs in inference mode (BatchNorm running statistics, which never
change): `Backbone.features` has no training mode. [original, anomalib: the extractor in eval
mode; a bug reported to anomalib, NaN batch statistics in CS-Flow's B5 extractor left in train
mode, cannot arise here]
"""

from __future__ import annotations

import jax
import ml_collections
import optax

from xray_flax.backbones import COLLECTION, Backbone
from xray_flax.backbones.base import frozen
from xray_flax.detectors.base import TrainState
from xray_flax.detectors.csflow.loss import csflow_loss, csflow_map, csflow_score, resize_for_scale
from xray_flax.nn.flows import CONSTANTS, CrossScaleFlow
from xray_flax.optim import make_torch_optimizer


def make_optimizer(optim: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """torch: clip_grad_norm_(params, max_norm), then Adam(lr, betas, eps, weight_decay) at a constant
    rate, whose weight decay is added to the (clipped) gradient before the moments. [original]"""
    return make_torch_optimizer(optim, "adam")


def features(backbone: Backbone, variables: dict, images: jax.Array, *, scales: int, resize: str) -> list[jax.Array]:
    """[the backbone's tap of the image resized to side / 2^k] for k < scales, frozen."""
    (tap,) = backbone.taps
    return [
        frozen(backbone.features(variables[COLLECTION], resize_for_scale(images, k, resize)))[tap]
        for k in range(scales)
    ]


def init(key: jax.Array, sample: jax.Array, *, backbone: Backbone, flow: CrossScaleFlow, resize: str) -> dict:
    """Random backbone and flow (separate keys); `pretrained` replaces the backbone."""
    backbone_key, flow_key = jax.random.split(key)
    backbone_variables = backbone.init(backbone_key, sample)
    feats = features(backbone, {COLLECTION: backbone_variables}, sample, scales=flow.scales, resize=resize)
    flow_variables = flow.init(flow_key, feats)
    return {"params": flow_variables["params"], CONSTANTS: flow_variables[CONSTANTS], COLLECTION: backbone_variables}


def train_step(
    state: TrainState,
    batch: dict,
    key: jax.Array,
    aux: None,
    *,
    backbone: Backbone,
    flow: CrossScaleFlow,
    tx: optax.GradientTransformation,
    resize: str,
    logdet_reduction: str,
) -> tuple[TrainState, dict]:
    """One clipped Adam step of the flow on the frozen multi-scale features of normal tiles."""
    del key, aux
    feats = features(backbone, state.collections, batch["image"], scales=flow.scales, resize=resize)

    def loss_fn(params):
        zs, logdet = flow.apply({"params": params, CONSTANTS: state.collections[CONSTANTS]}, feats)
        return csflow_loss(zs, logdet, logdet_reduction), jax.numpy.mean(logdet)

    (loss, logdet), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = state.apply_gradients(grads, tx)
    return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads), "logdet": logdet}


def anomaly_map(
    variables: dict,
    images: jax.Array,
    *,
    backbone: Backbone,
    flow: CrossScaleFlow,
    resize: str,
    map_mode: str,
    image_score: str,
    blur_sigma: float,
) -> dict:
    """{'map' [B, H, W] >= 0} and, with image_score 'mean', 'score' [B] = mean(z^2 / 2) [original, anomalib]."""
    feats = features(backbone, variables, images, scales=flow.scales, resize=resize)
    zs, _ = flow.apply({"params": variables["params"], CONSTANTS: variables[CONSTANTS]}, feats)
    out = {"map": csflow_map(zs, images.shape[1:3], map_mode, blur_sigma)}
    if image_score == "mean":
        out["score"] = csflow_score(zs)
    return out


def preview(variables: dict, batch: dict, key: jax.Array, aux: None, **kwargs) -> dict:
    """TensorBoard images: the input and its map scaled by each tile's maximum."""
    del key, aux
    out = anomaly_map(variables, batch["image"], image_score="filtered_max", **kwargs)["map"]
    peak = jax.numpy.max(out, axis=(1, 2), keepdims=True)
    return {"input": batch["image"], "anomaly_map": (out / jax.numpy.maximum(peak, 1e-12))[..., None]}
