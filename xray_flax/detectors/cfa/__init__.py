"""CFA: Coupled-hypersphere-based Feature Adaptation (Lee, Lee and Song, IEEE Access 2022).

A frozen pretrained backbone gives patch features (taps pooled 3x3, upsampled to the first
tap, concatenated); a 1x1 CoordConv descriptor adapts them to the target data; a memory bank
holds one centre per position, the mean descriptor map of the training tiles; training pulls
each descriptor's K nearest centres inside a tiny hypersphere and pushes the next J beyond a
margin. The map is the softmin-weighted distance to the nearest centre, upsampled and
blurred; the image score its maximum. `bounded_map=False`: the shared loop fits a score
normalisation on normal validation tiles.

    network.py patch features, CoordConv descriptor, distances, the softmin score
    loss.py    the soft-boundary loss
    steps.py   init, pretrained, torch's AdamW with AMSGrad (xray_flax/optim.py), the train step
               (memory-bank pass, then training), the map
    config.py  the `backbone`, `model`, `loss`, `optim` sections, each knob with its source

What is whose. [paper] WRN50-2 layers 1-3, the descriptor, gamma_c = gamma_d = 1, K = J = 3,
alpha = 0.1, the loss and the score. [anomalib, original code] r = 1e-5, x1000, AdamW 1e-3 wd
5e-4 amsgrad, the memory bank as a running mean of batch means over one pass with the
initial descriptor, the coordinate channels in [-1, 1] without the radius channel, the map
upsampled and blurred with sigma 4. The original picks its best epoch on the test set; here
the shared loop picks the best checkpoint on validation only. [ours] the memory-bank pass
runs as the first `model.memory_bank_steps` train steps (steps.py says why), any backbone of
xray_flax.backbones (the CPU configs use EfficientNet-Lite0, the only ImageNet weights that
install offline) without anomalib's EfficientNet-B5 rescaling (pooled features / C and twice
the descriptor width, B5 only there), and gamma_c > 1 (K-means) is not implemented.
"""

from __future__ import annotations

import functools

import ml_collections

from xray_flax import backbones, errors
from xray_flax.backbones.base import fill_pretrained
from xray_flax.detectors.base import GRADIENT, Detector
from xray_flax.detectors.cfa import steps
from xray_flax.detectors.cfa.network import Descriptor


def _check(config: ml_collections.ConfigDict) -> None:
    model, loss = config.model, config.loss
    if int(model.gamma_c) != 1:
        raise errors.ConfigError(
            f"config.model.gamma_c={model.gamma_c}: only gamma_c = 1 (one memory-bank centre per position, the "
            f"paper's and anomalib's default) is implemented; gamma_c > 1 needs K-means over the bank"
        )
    if int(model.gamma_d) < 1:
        raise errors.ConfigError(f"config.model.gamma_d must be >= 1, got {model.gamma_d}")
    steps_ = int(model.memory_bank_steps)
    if steps_ < 1 or steps_ >= int(config.train.num_steps):
        raise errors.ConfigError(
            f"config.model.memory_bank_steps={steps_} must be >= 1 and < config.train.num_steps="
            f"{config.train.num_steps}: the first steps build the memory bank, the rest train the descriptor"
        )
    if int(loss.num_nearest) < 1 or int(loss.num_hard_negatives) < 0:
        raise errors.ConfigError(
            f"config.loss.num_nearest={loss.num_nearest} must be >= 1 and num_hard_negatives="
            f"{loss.num_hard_negatives} >= 0"
        )
    if float(loss.nu) <= 0:
        raise errors.ConfigError(f"config.loss.nu must be > 0, got {loss.nu}")


def build(config: ml_collections.ConfigDict) -> Detector:
    _check(config)
    backbone = backbones.build(config.backbone, config.data.channels)
    channels = sum(backbone.channels[t] for t in backbone.taps)
    if channels // int(config.model.gamma_d) < 1:
        raise errors.ConfigError(
            f"config.model.gamma_d={config.model.gamma_d} leaves no descriptor channel of {channels}"
        )
    descriptor = Descriptor(out_channels=channels // int(config.model.gamma_d))
    tx = steps.make_optimizer(config.optim)
    map_options = {
        "backbone": backbone,
        "descriptor": descriptor,
        "num_nearest": int(config.loss.num_nearest),
        "blur_sigma": float(config.model.blur_sigma),
    }
    return Detector(
        name="cfa",
        kind=GRADIENT,
        init=functools.partial(steps.init, backbone=backbone, descriptor=descriptor),
        anomaly_map=functools.partial(steps.anomaly_map, **map_options),
        # Deeper taps must upsample by whole factors onto the first tap's grid.
        size_multiple=max(backbone.strides.values()),
        bounded_map=False,
        metric_names=("loss", "attraction", "repulsion", "memory_bank_pass"),
        optimizer=tx,
        train_step=functools.partial(
            steps.train_step,
            backbone=backbone,
            descriptor=descriptor,
            tx=tx,
            loss_config=config.loss,
            memory_bank_steps=int(config.model.memory_bank_steps),
        ),
        preview=functools.partial(steps.preview, **map_options),
        pretrained=functools.partial(fill_pretrained, backbone=backbone),
    )
