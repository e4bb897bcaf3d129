"""STFPM: Student-Teacher Feature Pyramid Matching (Wang, Han, Ding, Huang, BMVC 2021).

A pretrained backbone (the teacher, frozen) and the same network randomly initialised (the
student) see the same normal tiles; the student learns to reproduce the teacher's
L2-normalised features at several depths. Where it fails, the tile is anomalous: the map is
the product over layers of half the squared distance of the normalised features, each
upsampled to the tile. `bounded_map=False`: the shared loop fits a score normalisation on
normal validation tiles.

    loss.py    normalisation, per-layer loss, the anomaly map (pure, NHWC)
    steps.py   init (teacher + student), pretrained (teacher from its file), SGD, train step, map
    config.py  the `backbone`, `model`, `loss`, `optim` sections, each knob with its source

What is whose. [paper] teacher = ImageNet ResNet-18, student = the same architecture from
scratch, layers 1-3, features L2-normalised over channels, loss = sum over layers of the mean
over positions of the squared distance (eq. 2, per image), map = product of the per-layer
maps, SGD lr 0.4 momentum 0.9 weight decay 1e-4, 256 px. [anomalib] the same, with the loss
0.5 / (h w) * the squared distance summed over the batch too (MSELoss(reduction='sum')) —
`loss.batch_reduction` picks 'sum' (anomalib, the default) or 'mean' (paper) — the student
in train mode (batch statistics), the image score = the maximum of the map, bilinear
upsampling with half-pixel centres and no blur. [ours] any backbone of xray_flax.backbones
(the CPU configs use EfficientNet-Lite0, the only ImageNet weights that install offline) and
its grey-input rule; an optional blur (`model.blur_sigma`, default off as anomalib).
Written from the paper and anomalib's Apache-2.0 code; the original code (GPL-3.0) was not
used.
"""

from __future__ import annotations

import functools

import ml_collections

from xray_flax import backbones, errors
from xray_flax.backbones.base import fill_pretrained
from xray_flax.detectors.base import GRADIENT, Detector
from xray_flax.detectors.stfpm import steps
from xray_flax.detectors.stfpm.config import BATCH_REDUCTIONS


def build(config: ml_collections.ConfigDict) -> Detector:
    if config.loss.batch_reduction not in BATCH_REDUCTIONS:
        raise errors.ConfigError(
            f"config.loss.batch_reduction={config.loss.batch_reduction!r}; expected one of {BATCH_REDUCTIONS}"
        )
    if float(config.optim.learning_rate) <= 0:
        raise errors.ConfigError(f"config.optim.learning_rate must be > 0, got {config.optim.learning_rate}")
    backbone = backbones.build(config.backbone, config.data.channels)
    tx = steps.make_optimizer(config.optim)
    blur_sigma = float(config.model.blur_sigma)
    return Detector(
        name="stfpm",
        kind=GRADIENT,
        init=functools.partial(steps.init, backbone=backbone),
        anomaly_map=functools.partial(steps.anomaly_map, backbone=backbone, blur_sigma=blur_sigma),
        # Every tap's map must upsample by a whole factor to the tile.
        size_multiple=max(backbone.strides.values()),
        bounded_map=False,
        metric_names=("loss", *(f"loss_{tap}" for tap in backbone.taps)),
        optimizer=tx,
        train_step=functools.partial(steps.train_step, backbone=backbone, tx=tx, loss_config=config.loss),
        preview=functools.partial(steps.preview, backbone=backbone, blur_sigma=blur_sigma),
        pretrained=functools.partial(fill_pretrained, backbone=backbone),
    )
