"""Reverse Distillation (Deng & Li, "Anomaly Detection via Reverse Distillation from One-Class
Embedding", CVPR 2022) on a frozen ImageNet encoder.

A frozen encoder (the teacher: WRN50-2 layer1-3 in the paper) gives multi-scale features of a
normal tile; a trainable one-class bottleneck embedding (OCBE) fuses them into one compact code
and a reversed-ResNet decoder (the student) must rebuild every encoder tap from that code
alone. Trained on normal tiles only, with 1 - cosine similarity per tap; where the decoder
cannot reproduce the encoder's features the tile is anomalous. The map is a sum of cosine
distances, not a probability (`bounded_map=False`): the shared loop fits a score
normalisation on normal validation tiles.

    network.py  OCBE, reversed-ResNet decoder and their blocks (widths derived from the taps)
    loss.py     the loss, the channel-cosine distance maps, align-corners upsampling, the blur
    steps.py    init, pretrained encoder fill-in, train step, anomaly map, preview
    config.py   the `backbone`, `model` and `optim` sections, each knob with its source

What is whose: the architecture, loss, optimiser, map and score follow anomalib 2.7 and the
original code (hq-deng/RD4AD), which agree except where config.py names both (the OCBE's
inner width, Adam's b2, the map mode's default, the blur's borders). Ours: deriving every width
from the encoder taps (any backbone, any number of taps); signed decoded taps (no final ReLU
per decoder stage) for encoders whose taps are signed, as EfficientNets' are
(`model.tap_activation`); the grey-input rule of the shared backbones; and dropping the OCBE's
conv4/bn4, which both PyTorch versions create and never use.
"""

from __future__ import annotations

import functools

import ml_collections

from xray_flax import backbones, errors
from xray_flax.backbones.base import fill_pretrained
from xray_flax.detectors.base import GRADIENT, Detector
from xray_flax.detectors.reverse_distillation import loss as rd_loss
from xray_flax.detectors.reverse_distillation import steps
from xray_flax.detectors.reverse_distillation.network import BLOCKS, ReverseDistillationHead, head_spec
from xray_flax.optim import make_optimizer

# ResNet stage depths [torchvision]; anomalib's decoders use the first three (de_resnet18
# [2, 2, 2], de_resnet50 / de_wide_resnet50_2 [3, 4, 6]).
_RESNET_DEPTHS = {"basic": (2, 2, 2, 2), "bottleneck": (3, 4, 6, 3)}
TAP_ACTIVATIONS = ("auto", "relu", "none")


def resolve_block(model: ml_collections.ConfigDict, backbone_name: str) -> str:
    """config.model.block with 'auto' = anomalib's rule (BasicBlock for resnet18/34)."""
    block = model.block
    if block == "auto":
        return "basic" if backbone_name in ("resnet18", "resnet34") else "bottleneck"
    if block not in BLOCKS:
        raise errors.ConfigError(f"config.model.block={block!r}; expected 'auto' or one of {BLOCKS}")
    return block


def resolve_tap_relu(model: ml_collections.ConfigDict, backbone_name: str) -> bool:
    """config.model.tap_activation: 'auto' = a ReLU for ResNet encoders (post-ReLU taps), none
    for the others (EfficientNets' stage ends are signed)."""
    activation = model.get("tap_activation", "auto")
    if activation not in TAP_ACTIVATIONS:
        raise errors.ConfigError(f"config.model.tap_activation={activation!r}; expected one of {TAP_ACTIVATIONS}")
    if activation == "auto":
        return backbone_name.startswith(("resnet", "wide_resnet"))
    return activation == "relu"


def build_head(config: ml_collections.ConfigDict, backbone: backbones.Backbone) -> ReverseDistillationHead:
    """The OCBE + decoder for `backbone`'s taps, every 0 / () / 'auto' resolved as config.py says."""
    model = config.model
    taps = backbone.taps
    strides = [backbone.strides[t] for t in taps]
    for shallow, deep, s_shallow, s_deep in zip(taps, taps[1:], strides, strides[1:]):
        if s_deep != 2 * s_shallow:
            raise errors.ConfigError(
                f"config.backbone.taps {tuple(taps)}: Reverse Distillation needs each tap at twice the stride of the "
                f"previous one (the OCBE halves, the decoder doubles); {shallow} has stride {s_shallow}, "
                f"{deep} {s_deep}"
            )
    block = resolve_block(model, backbone.name)
    n = len(taps)
    if n > 4 and not tuple(model.decoder_blocks):
        raise errors.ConfigError(f"config.model.decoder_blocks must be given for {n} taps (the default covers up to 4)")
    decoder_blocks = tuple(model.decoder_blocks) or _RESNET_DEPTHS[block][:n]
    ocbe_blocks = int(model.ocbe_blocks) or (3 if block == "bottleneck" else 2)
    decoder_wpg = int(model.decoder_width_per_group) or (128 if backbone.name.startswith("wide_resnet") else 64)
    spec = head_spec(
        tuple(backbone.channels[t] for t in taps),
        block=block,
        ocbe_blocks=ocbe_blocks,
        ocbe_width_per_group=int(model.ocbe_width_per_group),
        ocbe_channels=int(model.ocbe_channels),
        decoder_blocks=decoder_blocks,
        decoder_width_per_group=decoder_wpg,
        tap_relu=resolve_tap_relu(model, backbone.name),
    )
    return ReverseDistillationHead(spec)


def build(config: ml_collections.ConfigDict) -> Detector:
    model = config.model
    if model.map_mode not in rd_loss.MAP_MODES:
        raise errors.ConfigError(f"config.model.map_mode={model.map_mode!r}; expected one of {rd_loss.MAP_MODES}")
    if model.blur_border not in rd_loss.BLUR_BORDERS:
        raise errors.ConfigError(
            f"config.model.blur_border={model.blur_border!r}; expected one of {rd_loss.BLUR_BORDERS}"
        )
    backbone = backbones.build(config.backbone, config.data.channels)
    head = build_head(config, backbone)
    tx = make_optimizer(config.optim, config.train.num_steps)
    map_kwargs = dict(
        backbone=backbone, head=head, mode=model.map_mode, sigma=float(model.blur_sigma), border=model.blur_border
    )
    return Detector(
        name="reverse_distillation",
        kind=GRADIENT,
        init=functools.partial(steps.init, backbone=backbone, head=head),
        anomaly_map=functools.partial(steps.anomaly_map, **map_kwargs),
        # The OCBE halves the deepest tap once more and the decoder doubles back: sides must be
        # multiples of twice the deepest stride for the decoded sizes to equal the taps'.
        size_multiple=2 * backbone.strides[backbone.taps[-1]],
        bounded_map=False,
        metric_names=("loss",),
        optimizer=tx,
        train_step=functools.partial(steps.train_step, backbone=backbone, head=head, tx=tx),
        preview=functools.partial(steps.preview, **map_kwargs),
        pretrained=functools.partial(fill_pretrained, backbone=backbone),
    )
