"""SuperSimpleNet's pure init, optimiser, train step, anomaly map and preview on a `Backbone`.

Variables:

    params        {"adaptor", "seg_head", "cls_head"}, trained
    batch_stats   {"seg_head", "cls_head"}: the heads' BatchNorm running statistics
    backbone      the frozen pretrained backbone {"params", "batch_stats"}

The heads run in train mode during training (BatchNorm on the statistics of the duplicated
batch, running statistics updated) and in inference mode in `anomaly_map`, as the references'
model.train() / model.eval(); the backbone always runs in inference mode, without gradient.

Batches. A training batch is {"image" [b, P, P, C]} of clean normal tiles (unsupervised). It
MAY also carry real anomalies (supervised): "mask" [b, P, P] or [b, P, P, 1] (1 = defect) and
"label" [b] (1 anomalous, 0 normal, -1 unknown = normal); a "label" needs a "mask" (anomalib
refuses anomalous labels without masks), a "mask" alone gives label = any(mask) on the feature
grid. The mask is brought to the feature grid as the references do (bilinear, half-pixel
centres, then >= 0.5; "the best downsampling proposed by DeSTSeg"). Those tiles are positives
with their real masks; synthetic noise never lands inside a real mask, and lands elsewhere on a
labelled anomalous tile only with anomaly_generator.noise_on_labelled_anomalies (the
references' behaviour, the default). [anomalib, original code]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

from xray_flax.backbones import COLLECTION, Backbone
from xray_flax.backbones.base import frozen
from xray_flax.detectors.base import TrainState
from xray_flax.detectors.supersimplenet import anomaly_generator, network
from xray_flax.detectors.supersimplenet.loss import supersimplenet_loss
from xray_flax.nn.anomaly_maps import gaussian_blur, upsample_bilinear

HEADS = ("seg_head", "cls_head")


def make_optimizer(optim: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
    """torch.optim.AdamW with two parameter groups (adaptor; both heads) under MultiStepLR, after
    an optional clip_grad_norm_ over all parameters. optax.adamw is torch's AdamW: decoupled
    decay scaled by the current rate. The milestones are fractions of the run's steps (the
    references' fractions of the epochs). [anomalib, original code]"""
    boundaries: dict[int, float] = {}
    for milestone in optim.milestones:
        step = int(round(float(milestone) * num_steps))
        boundaries[step] = boundaries.get(step, 1.0) * float(optim.decay_factor)

    def group(learning_rate: float, weight_decay: float) -> optax.GradientTransformation:
        schedule = optax.piecewise_constant_schedule(float(learning_rate), boundaries)
        return optax.adamw(
            schedule, b1=float(optim.b1), b2=float(optim.b2), eps=float(optim.eps), weight_decay=float(weight_decay)
        )

    groups = optax.multi_transform(
        {
            "adaptor": group(optim.adaptor_lr, optim.adaptor_weight_decay),
            "heads": group(optim.head_lr, optim.head_weight_decay),
        },
        {"adaptor": "adaptor", "seg_head": "heads", "cls_head": "heads"},
    )
    clip = float(optim.grad_clip_norm)
    return optax.chain(optax.clip_by_global_norm(clip), groups) if clip > 0 else groups


def features_of(backbone: Backbone, backbone_variables: dict, images: jax.Array, pool_size: int) -> jax.Array:
    """The frozen backbone's upscaled, concatenated, averaged taps [B, h, w, C] (no gradient)."""
    taps = frozen(backbone.features(backbone_variables, images))
    return network.upscaled_features(taps, backbone.taps, pool_size)


def init(key: jax.Array, sample: jax.Array, *, backbone: Backbone, modules: dict, pool_size: int) -> dict:
    """Random backbone (replaced by `pretrained`), adaptor and heads."""
    backbone_key, adaptor_key, seg_key, cls_key = jax.random.split(key, 4)
    backbone_variables = backbone.init(backbone_key, sample)
    features = features_of(backbone, backbone_variables, sample, pool_size)
    adaptor = modules["adaptor"].init(adaptor_key, features)
    seg = modules["seg_head"].init(seg_key, features, train=False)
    map_logits = modules["seg_head"].apply(seg, features, train=False)
    cls = modules["cls_head"].init(cls_key, features, map_logits, train=False)
    return {
        "params": {"adaptor": adaptor["params"], "seg_head": seg["params"], "cls_head": cls["params"]},
        "batch_stats": {"seg_head": seg["batch_stats"], "cls_head": cls["batch_stats"]},
        COLLECTION: backbone_variables,
    }


def real_targets(batch: dict, size: tuple[int, int]) -> tuple[jax.Array, jax.Array]:
    """(masks [b, h, w], labels [b]) of the batch's real anomalies on the feature grid, 0/1 floats;
    zeros when the batch carries none (module docstring)."""
    b = batch["image"].shape[0]
    if "mask" not in batch:
        if "label" in batch:
            raise ValueError(
                "a SuperSimpleNet training batch with 'label' needs 'mask' too (the real anomalies' masks; "
                "anomalib refuses anomalous labels without masks)"
            )
        return jnp.zeros((b, *size), jnp.float32), jnp.zeros((b,), jnp.float32)
    masks = jnp.asarray(batch["mask"], jnp.float32)
    if masks.ndim == 4:
        masks = masks[..., 0]
    masks = jnp.where(upsample_bilinear(masks, size) < 0.5, 0.0, 1.0)
    if "label" in batch:
        labels = jnp.clip(jnp.asarray(batch["label"], jnp.float32), 0.0, 1.0)
    else:
        labels = jnp.any(masks > 0, axis=(1, 2)).astype(jnp.float32)
    return masks, labels


def synthetic_targets(
    key: jax.Array, batch: dict, size: tuple[int, int], generator_config: ml_collections.ConfigDict
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(noise mask [2b, h, w], target masks [2b, h, w], target labels [2b]) of a training batch
    of b tiles on the h x w feature grid: the rows duplicated (tile i is rows i and b + i), a
    Perlin mask drawn per row, the real anomalies' masks and labels (`real_targets`) combined
    with it (anomaly_generator.noise_targets). [anomalib AnomalyGenerator, original code]"""
    real_masks, real_labels = real_targets(batch, size)
    real_masks = jnp.concatenate([real_masks, real_masks])
    real_labels = jnp.concatenate([real_labels, real_labels])
    g = generator_config
    perlin = anomaly_generator.perlin_masks(
        key,
        real_masks.shape[0],
        size,
        threshold=float(g.threshold),
        min_exponent=int(g.min_exponent),
        max_exponent=anomaly_generator.max_exponent_for(*size, int(g.max_exponent)),
        anomaly_probability=float(g.anomaly_probability),
        rescale_empty=bool(g.rescale_empty),
    )
    return anomaly_generator.noise_targets(
        perlin, real_masks, real_labels, noise_on_labelled_anomalies=bool(g.noise_on_labelled_anomalies)
    )


def _heads(modules, params, batch_stats, seg_features, cls_features, *, train: bool):
    """(map logits [n, h, w], score logits [n], new batch statistics or None)."""
    if not train:
        map_logits = modules["seg_head"].apply(
            {"params": params["seg_head"], "batch_stats": batch_stats["seg_head"]}, seg_features, train=False
        )
        score = modules["cls_head"].apply(
            {"params": params["cls_head"], "batch_stats": batch_stats["cls_head"]},
            cls_features,
            map_logits,
            train=False,
        )
        return map_logits, score, None
    map_logits, seg_updates = modules["seg_head"].apply(
        {"params": params["seg_head"], "batch_stats": batch_stats["seg_head"]},
        seg_features,
        train=True,
        mutable=["batch_stats"],
    )
    score, cls_updates = modules["cls_head"].apply(
        {"params": params["cls_head"], "batch_stats": batch_stats["cls_head"]},
        cls_features,
        map_logits,
        train=True,
        mutable=["batch_stats"],
    )
    stats = {"seg_head": seg_updates["batch_stats"], "cls_head": cls_updates["batch_stats"]}
    return map_logits, score, stats


def train_step(
    state: TrainState,
    batch: dict,
    key: jax.Array,
    aux: None,
    *,
    backbone: Backbone,
    modules: dict,
    tx: optax.GradientTransformation,
    model_config: ml_collections.ConfigDict,
    generator_config: ml_collections.ConfigDict,
    loss_config: ml_collections.ConfigDict,
) -> tuple[TrainState, dict]:
    """One AdamW step on the duplicated batch with feature-level synthetic anomalies."""
    del aux
    features = features_of(backbone, state.collections[COLLECTION], batch["image"], int(model_config.pool_size))
    b, h, w, c = features.shape
    perlin_key, noise_key = jax.random.split(key)
    noise_mask, target_masks, target_labels = synthetic_targets(perlin_key, batch, (h, w), generator_config)
    # Duplicated rows: each tile twice, with independent masks and noise. [anomalib, original code]
    features = jnp.concatenate([features, features])
    noise_std = float(generator_config.noise_std)
    noise = noise_std * jax.random.normal(noise_key, (2 * b, h, w, c), jnp.float32) * noise_mask[..., None]

    def loss_fn(params):
        adapted = modules["adaptor"].apply({"params": params["adaptor"]}, features) + noise
        # ICPR: both heads see the noised adapted features; the extension gives the
        # classification head the raw features with the same noise. [anomalib]
        cls_features = adapted if model_config.adapt_cls_features else features + noise
        map_logits, score, stats = _heads(
            modules, params, state.collections["batch_stats"], adapted, cls_features, train=True
        )
        total, terms = supersimplenet_loss(
            map_logits,
            score,
            target_masks,
            target_labels,
            gamma=float(loss_config.focal_gamma),
            alpha=float(loss_config.focal_alpha),
            truncation=float(loss_config.truncation),
        )
        return total, (terms, stats)

    (total, (terms, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = state.apply_gradients(grads, tx, collections={**state.collections, "batch_stats": stats})
    metrics = {"loss": total, "grad_norm": optax.tree.norm(grads), **terms}
    metrics["synthetic_fraction"] = jnp.mean(jnp.any(noise_mask > 0, axis=(1, 2)).astype(jnp.float32))
    return new_state, metrics


def anomaly_map(
    variables: dict, images: jax.Array, *, backbone: Backbone, modules: dict, model_config: ml_collections.ConfigDict
) -> dict:
    """{'map' [B, H, W]: the segmentation logits upsampled bilinearly to the tile and blurred
    (sigma 4, 25 taps), 'score' [B]: the classification logit (or the map's maximum with
    model.image_score = 'map_max')}. [anomalib: anomaly_map, pred_score]"""
    features = features_of(backbone, variables[COLLECTION], images, int(model_config.pool_size))
    adapted = modules["adaptor"].apply({"params": variables["params"]["adaptor"]}, features)
    cls_features = adapted if model_config.adapt_cls_features else features
    map_logits, score, _ = _heads(
        modules, variables["params"], variables["batch_stats"], adapted, cls_features, train=False
    )
    out = upsample_bilinear(map_logits, images.shape[1:3])
    sigma = float(model_config.blur_sigma)
    if sigma > 0:
        out = gaussian_blur(out, sigma, int(model_config.blur_kernel))
    if model_config.image_score == "map_max":
        score = jnp.max(out, axis=(1, 2))
    return {"map": out, "score": score}


def preview(variables: dict, batch: dict, key: jax.Array, aux: None, **kwargs) -> dict:
    """TensorBoard images: the input and sigmoid(map), the segmentation head's probability."""
    del key, aux
    out = anomaly_map(variables, batch["image"], **kwargs)["map"]
    return {"input": batch["image"], "anomaly_map": jax.nn.sigmoid(out)[..., None]}
