"""CS-Flow: fully convolutional cross-scale flows for defect detection (Rudolph et al., WACV 2022).

One frozen backbone tap of the tile at several scales (side, side / 2, side / 4) goes through
a normalising flow whose coupling subnets mix the scales; normal tiles map to a standard
normal. The image score is the mean of z^2 / 2 over all latents, the map the product over
scales of the upsampled mean_c z^2. The map is not a probability (`bounded_map=False`): the
shared loop fits a score normalisation on normal validation tiles.

    loss.py    multi-scale inputs, loss, map and image score
    steps.py   init, pretrained backbone, clipped Adam with coupled weight decay, train step, map, preview
    config.py  the `backbone`, `model`, `loss` and `optim` sections, each knob with its source
    xray_flax/nn/flows.py   the parallel Glow couplings and cross convolutions (CrossScaleFlow)

What is whose. [paper, original] EfficientNet-B5 features of block 35 (304 ch, stride 32) at
3 scales of a 768-px image (24, 12, 6 positions a side), smaller scales by nearest
resizing; 4 blocks, each a fixed permutation and a parallel Glow coupling with cross
convolutions (hidden 1024, kernels 3, 3, 3, 5, LeakyReLU 0.1, gammas starting at 0), soft
clamp 3 * 0.636 atan(s / 3); loss mean_b(0.5 |z|^2 - log|det J|) / D with the per-image
log-determinant; Adam 2e-4, eps 1e-4, coupled weight decay 1e-5, gradient norm clipped to
1, batch 16, 240 epochs; image score mean(z^2 / 2); a map of the largest scale's mean_c z^2
(`model.map_mode='largest'`). [anomalib 2.7] one permutation per block shared by the scales,
the product over scales of the upsampled mean_c z^2 as the map ('all'); the
log-determinant summed over the batch
(`loss.logdet_reduction='batch_sum'`) and betas (0.5, 0.9) are offered as config values, not
defaults. [ours] the default map 'nll', the position-weighted mean over scales of the
upsampled mean_c z^2 / 2, whose tile mean is exactly the image score (the shared loop
normalises maps and scores with one affine map and cuts map pixels at the threshold chosen
on scores, so they must share a scale; loss.py); any backbone of xray_flax.backbones with one tap (the CPU configs use
EfficientNet-Lite0), the permutations drawn from the init key, 'area' resizing and the shared
filtered-max score as options, the exact inverse (both PyTorch versions' reverse pass mixes
up the shifts of one half-step; only the forward pass is used for training and scoring).
"""

from __future__ import annotations

import functools

import ml_collections

from xray_flax import backbones, errors
from xray_flax.backbones.base import fill_pretrained
from xray_flax.detectors.base import GRADIENT, Detector
from xray_flax.detectors.csflow import steps
from xray_flax.detectors.csflow.config import IMAGE_RESIZES, IMAGE_SCORES, LOGDET_REDUCTIONS, MAP_MODES
from xray_flax.nn.flows import CrossScaleFlow, csflow_kernel_sizes


def _choice(value: str, key: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise errors.ConfigError(f"config.{key}={value!r}; expected one of {allowed}")
    return value


def build_flow(config: ml_collections.ConfigDict, backbone: backbones.Backbone) -> CrossScaleFlow:
    model = config.model
    if len(backbone.taps) != 1:
        raise errors.ConfigError(
            f"CS-Flow uses one backbone tap at several scales; config.backbone.taps={tuple(backbone.taps)}"
        )
    blocks, scales = int(model.coupling_blocks), int(model.scales)
    if blocks < 1 or scales < 1:
        raise errors.ConfigError(
            f"config.model.coupling_blocks ({blocks}) and config.model.scales ({scales}) must be >= 1"
        )
    kernels = tuple(int(k) for k in model.kernel_sizes) or csflow_kernel_sizes(blocks)
    if len(kernels) != blocks or any(k < 1 or k % 2 == 0 for k in kernels):
        raise errors.ConfigError(
            f"config.model.kernel_sizes={tuple(model.kernel_sizes)}: need one odd size per block ({blocks}), "
            "or () for the original's (3, ..., 3, 5)"
        )
    return CrossScaleFlow(
        channels=backbone.channels[backbone.taps[0]],
        scales=scales,
        blocks=blocks,
        hidden_channels=int(model.hidden_channels),
        kernel_sizes=kernels,
        clamp=float(model.clamp),
        independent_scale_permutations=bool(model.independent_scale_permutations),
    )


def build(config: ml_collections.ConfigDict) -> Detector:
    model = config.model
    resize = _choice(model.image_resize, "model.image_resize", IMAGE_RESIZES)
    map_mode = _choice(model.map_mode, "model.map_mode", MAP_MODES)
    image_score = _choice(model.image_score, "model.image_score", IMAGE_SCORES)
    reduction = _choice(config.loss.logdet_reduction, "loss.logdet_reduction", LOGDET_REDUCTIONS)
    if float(config.optim.learning_rate) <= 0:
        raise errors.ConfigError(f"config.optim.learning_rate must be > 0, got {config.optim.learning_rate}")
    backbone = backbones.build(config.backbone, config.data.channels)
    flow = build_flow(config, backbone)
    tx = steps.make_optimizer(config.optim)
    map_args = dict(backbone=backbone, flow=flow, resize=resize, map_mode=map_mode, blur_sigma=float(model.blur_sigma))
    return Detector(
        name="csflow",
        kind=GRADIENT,
        init=functools.partial(steps.init, backbone=backbone, flow=flow, resize=resize),
        anomaly_map=functools.partial(steps.anomaly_map, image_score=image_score, **map_args),
        # The smallest scale must still have side / stride positions exactly, and each scale
        # exactly twice the next one's (the cross convolutions add them): stride * 2^(scales-1)
        # [original: image sides multiples of 128 for B5 and 3 scales].
        size_multiple=backbone.strides[backbone.taps[0]] * 2 ** (flow.scales - 1),
        bounded_map=False,
        metric_names=("loss", "logdet"),
        optimizer=tx,
        train_step=functools.partial(
            steps.train_step, backbone=backbone, flow=flow, tx=tx, resize=resize, logdet_reduction=reduction
        ),
        preview=functools.partial(steps.preview, **map_args),
        pretrained=functools.partial(fill_pretrained, backbone=backbone),
    )
