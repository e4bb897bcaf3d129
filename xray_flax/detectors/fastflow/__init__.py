"""FastFlow: unsupervised anomaly detection with 2-D normalising flows (Yu et al., arXiv 2111.07677).

A frozen ImageNet backbone gives feature maps at a few depths; one fully convolutional
normalising flow per depth maps the features of normal tiles to a standard normal. Positions
whose latent is unlikely are anomalous. The map is not a probability (`bounded_map=False`):
the shared loop fits a score normalisation on normal validation tiles.

    network.py the head (LayerNorm + FrEIA AllInOne flow per tap)
    loss.py    the loss and the map
    steps.py   init, pretrained backbone, Adam with coupled weight decay, train step, map, preview
    config.py  the `backbone`, `model`, `loss` and `optim` sections, each knob with its source
    xray_flax/nn/flows.py   the AllInOne coupling blocks (shared with CS-Flow's module)

What is whose. [paper] 2-D flows on the features of a frozen backbone, 8 steps alternating
3x3 and 1x1 subnets for ResNet-18, the likelihood map upsampled to the image. [anomalib 2.7]
everything concrete, which the X-ray paper's benchmark used (docs/papers.md, "The baselines"):
ResNet-18 layers 1-3, a trainable LayerNorm over [C, H, W] per tap, FrEIA's AllInOneBlock
(affine clamp 2, soft tanh clamp of 0.1 x the subnet output, SOFTPLUS global affine starting
at 1, a hard random permutation, no reverse permutation), subnets conv-ReLU-conv with
hidden = int(ratio * ceil(C / 2)), ratio 1.0; loss = sum over taps of
mean_b(0.5 sum z^2 - log|det J|); map = mean over taps of the bilinearly upsampled
-exp(-0.5 mean_c z^2), image score = its maximum; Adam lr 1e-3 with coupled weight decay
1e-5, no clipping. [ours] any backbone of xray_flax.backbones (the CPU configs use
EfficientNet-Lite0, the only ImageNet weights that install offline) and its grey-input rule;
the permutations drawn from the init key; an optional blur (`model.blur_sigma`, off as
anomalib) and the shared filtered-max image score as an option (`model.image_score`).
"""

from __future__ import annotations

import functools

import ml_collections

from xray_flax import backbones, errors
from xray_flax.backbones.base import fill_pretrained
from xray_flax.detectors.base import GRADIENT, Detector
from xray_flax.detectors.fastflow import steps
from xray_flax.detectors.fastflow.config import IMAGE_SCORES
from xray_flax.detectors.fastflow.network import FastFlowHead


def build_head(config: ml_collections.ConfigDict, backbone: backbones.Backbone) -> FastFlowHead:
    model = config.model
    if int(model.flow_steps) < 1:
        raise errors.ConfigError(f"config.model.flow_steps must be >= 1, got {model.flow_steps}")
    if float(model.hidden_ratio) <= 0 or float(model.clamp) <= 0:
        raise errors.ConfigError(
            f"config.model.hidden_ratio ({model.hidden_ratio}) and config.model.clamp ({model.clamp}) must be > 0"
        )
    return FastFlowHead(
        taps=tuple(backbone.taps),
        channels=tuple(backbone.channels[t] for t in backbone.taps),
        flow_steps=int(model.flow_steps),
        hidden_ratio=float(model.hidden_ratio),
        conv3x3_only=bool(model.conv3x3_only),
        clamp=float(model.clamp),
        layer_norm=bool(model.layer_norm),
    )


def build(config: ml_collections.ConfigDict) -> Detector:
    if config.model.image_score not in IMAGE_SCORES:
        raise errors.ConfigError(
            f"config.model.image_score={config.model.image_score!r}; expected one of {IMAGE_SCORES}"
        )
    if float(config.optim.learning_rate) <= 0:
        raise errors.ConfigError(f"config.optim.learning_rate must be > 0, got {config.optim.learning_rate}")
    backbone = backbones.build(config.backbone, config.data.channels)
    head = build_head(config, backbone)
    tx = steps.make_optimizer(config.optim)
    blur_sigma = float(config.model.blur_sigma)
    return Detector(
        name="fastflow",
        kind=GRADIENT,
        init=functools.partial(steps.init, backbone=backbone, head=head),
        anomaly_map=functools.partial(
            steps.anomaly_map, backbone=backbone, head=head, image_score=config.model.image_score, blur_sigma=blur_sigma
        ),
        # Every tap's map has the tile's side / stride positions exactly (the LayerNorm shape
        # and the upsampling factor follow from it).
        size_multiple=max(backbone.strides.values()),
        bounded_map=False,
        metric_names=("loss", *(f"loss_{tap}" for tap in backbone.taps)),
        optimizer=tx,
        train_step=functools.partial(steps.train_step, backbone=backbone, head=head, tx=tx),
        preview=functools.partial(steps.preview, backbone=backbone, head=head, blur_sigma=blur_sigma),
        pretrained=functools.partial(fill_pretrained, backbone=backbone),
    )
