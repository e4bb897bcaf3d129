"""SuperSimpleNet's feature aggregation, adaptor and segmentation-detection heads (NHWC, pure).

    upscaled_features   every tap upsampled to twice the first tap's side, concatenated, 3x3 mean
    Adaptor             1x1 convolution (a dense layer over channels), same width
    SegmentationHead    1x1 conv -> BatchNorm -> LeakyReLU(0.2) -> 1x1 conv to one logit, no bias
    ClassificationHead  [features, map] -> 5x5 conv -> BatchNorm -> ReLU; global max and mean of
                        it and of the map -> one linear logit

Sources: [paper] B. Rolih, M. Fučka, D. Skočaj, "SuperSimpleNet: Unifying Unsupervised and
Supervised Learning for Fast and Reliable Surface Defect Detection", ICPR 2024 (arXiv
2408.03143); [anomalib] anomalib 2.7 models/image/supersimplenet/torch_model.py; [original
code] the authors' model/supersimplenet.py and model/feature_extractor.py.

Initialisation as both references' `init_weights`: xavier_normal_ on every conv and linear
kernel, BatchNorm weight 1 (and bias 0, torch's default), biases left at torch's default
U(+-1/sqrt(fan_in)).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from xray_flax.nn.anomaly_maps import upsample_bilinear

# torch.nn.init.xavier_normal_: N(0, 2 / (fan_in + fan_out)), fan = channels x kernel area
# (a true normal; jax's glorot_normal is truncated).
xavier_normal = nn.initializers.variance_scaling(1.0, "fan_avg", "normal")

# torch.nn.BatchNorm2d: momentum 0.1 (Flax's 0.9 keeps 0.9 of the old statistic), eps 1e-5.
BN_MOMENTUM = 0.9
BN_EPS = 1e-5


def torch_bias_init(fan_in: int):
    """torch Conv2d / Linear default bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / float(fan_in) ** 0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def avg_pool(x: jax.Array, size: int = 3) -> jax.Array:
    """torch nn.AvgPool2d(size, stride=1, padding=size // 2) with count_include_pad=True (torch's
    default): zero padding counts, every window divides by size^2. [anomalib, original code]"""
    pad = size // 2
    padding = ((0, 0), (pad, pad), (pad, pad), (0, 0))
    sums = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, size, size, 1), (1, 1, 1, 1), padding)
    return sums / float(size * size)


def upscaled_features(features: dict[str, jax.Array], taps: Sequence[str], pool_size: int = 3) -> jax.Array:
    """[B, 2 h0, 2 w0, sum C]: every tap (the first one too) upsampled bilinearly to twice the
    first tap's side (half-pixel centres: F.interpolate's align_corners=False, as anomalib; the
    original code aligns corners), concatenated on channels in tap order, then the 3x3 local
    mean ("neighbouring patch aggregation"). [anomalib UpscalingFeatureExtractor]"""
    _, h, w, _ = features[taps[0]].shape
    size = (2 * h, 2 * w)
    parts = [upsample_bilinear(features[t].astype(jnp.float32), size) for t in taps]
    return avg_pool(jnp.concatenate(parts, axis=-1), pool_size)


def _dense(features: int, fan_in: int, name: str, use_bias: bool = True) -> nn.Dense:
    return nn.Dense(
        features, use_bias=use_bias, kernel_init=xavier_normal, bias_init=torch_bias_init(fan_in), name=name
    )


def _batch_norm(train: bool, name: str) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPS, name=name)


class Adaptor(nn.Module):
    """The feature adaptor: a 1x1 convolution C -> C. [paper, anomalib FeatureAdapter]"""

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        channels = features.shape[-1]
        return _dense(channels, channels, "projection")(features)


class SegmentationHead(nn.Module):
    """[B, h, w, C] -> the anomaly-map logits [B, h, w]. [paper, anomalib seg_head]"""

    hidden: int = 1024

    @nn.compact
    def __call__(self, features: jax.Array, train: bool) -> jax.Array:
        x = _dense(self.hidden, features.shape[-1], "conv1")(features)
        x = nn.leaky_relu(_batch_norm(train, "bn")(x), negative_slope=0.2)
        return _dense(1, self.hidden, "conv2", use_bias=False)(x)[..., 0]


class ClassificationHead(nn.Module):
    """(features [B, h, w, C], map logits [B, h, w]) -> the image-score logit [B].

    conv 5x5 'same' on [features, map] -> BatchNorm -> ReLU -> global max and mean (128 + 128)
    beside the map's global max and mean (1 + 1) -> linear 258 -> 1, in that order.
    `stop_grad` detaches the map from this head (both the conv input and the pooled map), so the
    classification loss does not train the segmentation head. [paper, anomalib cls_conv,
    cls_fc; stop_grad True when unsupervised]"""

    channels: int = 128
    kernel: int = 5
    stop_grad: bool = True

    @nn.compact
    def __call__(self, features: jax.Array, map_logits: jax.Array, train: bool) -> jax.Array:
        seg_map = jax.lax.stop_gradient(map_logits) if self.stop_grad else map_logits
        x = jnp.concatenate([features, seg_map[..., None].astype(features.dtype)], axis=-1)
        fan_in = x.shape[-1] * self.kernel * self.kernel
        x = nn.Conv(
            self.channels,
            (self.kernel, self.kernel),
            padding="SAME",
            kernel_init=xavier_normal,
            bias_init=torch_bias_init(fan_in),
            name="conv",
        )(x)
        x = nn.relu(_batch_norm(train, "bn")(x))
        pooled = [
            jnp.max(x, axis=(1, 2)),
            jnp.mean(x, axis=(1, 2)),
            jnp.max(seg_map, axis=(1, 2))[:, None],
            jnp.mean(seg_map, axis=(1, 2))[:, None],
        ]
        pooled = jnp.concatenate(pooled, axis=-1)
        return _dense(1, pooled.shape[-1], "fc")(pooled)[:, 0]
