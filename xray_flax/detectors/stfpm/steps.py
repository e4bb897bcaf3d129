"""STFPM's pure init, train step, anomaly map and preview on a `Backbone`.

Variables:

    params        the student: the backbone's network, randomly initialised, trained
    batch_stats   the student's BatchNorm running statistics (updated in train mode)
    backbone      the teacher: {"params", "batch_stats"} of the pretrained backbone, frozen

The student runs in train mode during training (BatchNorm on batch statistics, running
statistics updated), as anomalib's student (a timm feature extractor with requires_grad),
and in inference mode in `anomaly_map`. The teacher always runs in inference mode; its
features carry no gradient. [anomalib]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

from xray_flax.backbones import COLLECTION, Backbone
from xray_flax.backbones.base import frozen
from xray_flax.detectors.base import TrainState
from xray_flax.detectors.stfpm import loss as stfpm_loss
from xray_flax.optim import make_torch_optimizer


def make_optimizer(optim: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """torch.optim.SGD(lr, momentum, weight_decay): the decay is added to the gradient first
    (coupled L2), then the heavy-ball momentum buffer b = momentum * b + g, p -= lr * b
    (optax's trace starts at zero, so its first buffer is g, as torch's). [paper, anomalib]"""
    return make_torch_optimizer(optim, "sgd")


def init(key: jax.Array, sample: jax.Array, *, backbone: Backbone) -> dict:
    """Random teacher and student (different keys); `pretrained` replaces the teacher."""
    teacher_key, student_key = jax.random.split(key)
    student = backbone.init(student_key, sample)
    return {
        "params": student["params"],
        "batch_stats": student["batch_stats"],
        COLLECTION: backbone.init(teacher_key, sample),
    }


def _student(variables: dict) -> dict:
    return {"params": variables["params"], "batch_stats": variables["batch_stats"]}


def train_step(
    state: TrainState,
    batch: dict,
    key: jax.Array,
    aux: None,
    *,
    backbone: Backbone,
    tx: optax.GradientTransformation,
    loss_config: ml_collections.ConfigDict,
) -> tuple[TrainState, dict]:
    """One SGD step of the student towards the frozen teacher's normalised features."""
    del key, aux
    images = batch["image"]
    teacher = frozen(backbone.features(state.collections[COLLECTION], images))
    inputs = backbone.preprocess(images)

    def loss_fn(params):
        student, updates = backbone.module.apply(
            {"params": params, "batch_stats": state.collections["batch_stats"]},
            inputs,
            train=True,
            mutable=["batch_stats"],
        )
        total, per_layer = stfpm_loss.stfpm_loss(
            teacher,
            student,
            layer_scale=loss_config.layer_scale,
            batch_reduction=loss_config.batch_reduction,
        )
        return total, (per_layer, updates["batch_stats"])

    (total, (per_layer, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = state.apply_gradients(grads, tx, collections={**state.collections, "batch_stats": batch_stats})
    metrics = {"loss": total, "grad_norm": optax.tree.norm(grads)}
    metrics.update({f"loss_{tap}": value for tap, value in per_layer.items()})
    return new_state, metrics


def anomaly_map(variables: dict, images: jax.Array, *, backbone: Backbone, blur_sigma: float) -> dict:
    """{'map' [B, H, W]: product of the upsampled per-layer maps, 'score' [B]: its maximum}.
    [anomalib: pred_score = amax of the map]"""
    teacher = backbone.features(variables[COLLECTION], images)
    student = backbone.features(_student(variables), images)
    out = stfpm_loss.anomaly_map(teacher, student, images.shape[1:3], blur_sigma=blur_sigma)
    return {"map": out, "score": jnp.max(out, axis=(1, 2))}


def preview(variables: dict, batch: dict, key: jax.Array, aux: None, *, backbone: Backbone, blur_sigma: float) -> dict:
    """TensorBoard images: the input and its map scaled by each tile's maximum."""
    del key, aux
    out = anomaly_map(variables, batch["image"], backbone=backbone, blur_sigma=blur_sigma)["map"]
    peak = jnp.max(out, axis=(1, 2), keepdims=True)
    return {"input": batch["image"], "anomaly_map": (out / jnp.maximum(peak, 1e-12))[..., None]}
