"""Frozen ImageNet backbones with named feature taps: what every backbone gives the detectors.

A backbone is a `Backbone` value built by `xray_flax.backbones.build(config.backbone)`. It is
always used in inference mode (BatchNorm running statistics, no dropout) and its variables
live outside the trainable ``params`` of a detector (every detector keeps them in the collection
``COLLECTION``, ``variables["backbone"]``), so they get no gradients and no optimiser slots.

    backbone.init(key, sample)     -> {"params": ..., "batch_stats": ...}   random, right shapes
    backbone.load()                -> the same tree as numpy arrays, from the weights file
    backbone.features(vars, images)-> {tap: [B, h, w, channels[tap]]}      images in [0, 1]
    backbone.preprocess(images)    -> the network's input (grey rule + input normalisation)
    backbone.module                   Flax module: module.apply(vars, preprocess(images),
                                      train=False) -> {tap: features}; train=True uses batch
                                      statistics with 'batch_stats' mutable (STFPM's student,
                                      the same architecture trained from scratch)

``features`` applies the backbone's own input normalisation and the grey-input rule
(``grey``: 'replicate' copies one channel to three; 'fold' sums the first convolution's
weights over its three input channels, done once in ``load``/``init``, and normalises with
the mean of the per-channel statistics), then runs the network up to the deepest requested
tap only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xray_flax import errors

Variables = dict[str, Any]

GREY_MODES = ("replicate", "fold")

# The variables collection a detector keeps its frozen backbone in: {"params", "batch_stats"}
# of the network, outside the trained `params` (no gradient, no optimiser slot). One name for
# every detector, so checkpoints and `fill_pretrained` agree on where the backbone is.
COLLECTION = "backbone"


@dataclasses.dataclass(frozen=True)
class Backbone:
    name: str
    # Tap names requested, shallow to deep, e.g. ("layer1", "layer2", "layer3").
    taps: tuple[str, ...]
    channels: dict[str, int]  # tap -> feature channels
    strides: dict[str, int]  # tap -> input pixels per feature pixel
    module: nn.Module
    # images [B, H, W, C] in [0, 1] -> the module's input.
    preprocess: Callable[[jax.Array], jax.Array]
    # (key, sample images [1, H, W, C] in [0, 1]) -> random variables of the right shapes; pure.
    init: Callable[[jax.Array, jax.Array], Variables]
    # Host-side: the pretrained variables (numpy) converted from the configured weights file.
    load: Callable[[], Variables]
    # (variables, images [B, H, W, C] in [0, 1]) -> {tap: features}; inference mode.
    features: Callable[[Variables, jax.Array], dict[str, jax.Array]]
    # Where `load` reads from (for messages and reports).
    weights: str = ""


def frozen(features: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Features with gradients stopped (a frozen backbone never needs its backward pass)."""
    return jax.tree.map(jax.lax.stop_gradient, features)


def to_rgb_input(images: jax.Array, grey: str) -> jax.Array:
    """[B, H, W, C] -> the channels the first convolution expects (3, or 1 when folded)."""
    channels = images.shape[-1]
    if grey not in GREY_MODES:
        raise errors.ConfigError(f"config.backbone.grey={grey!r}; expected one of {GREY_MODES}")
    if channels == 3:
        return images
    if channels != 1:
        raise ValueError(f"backbones take 1 (grey) or 3 (RGB) channels, got {channels}")
    return jnp.repeat(images, 3, axis=-1) if grey == "replicate" else images


def _leaf_shapes(tree) -> dict[str, tuple[int, ...]]:
    return {
        jax.tree_util.keystr(path): tuple(np.shape(leaf)) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def fill_pretrained(variables: Variables, *, backbone: Backbone, collection: str = COLLECTION) -> Variables:
    """`Detector.pretrained` of a detector whose frozen backbone sits in `variables[collection]`:
    the same variables (host side) with that collection replaced by `backbone.load()`, after
    checking that the loaded tree has the leaves and shapes of the network built from
    config.backbone (the weights file itself was checked key by key in `load`)."""
    loaded = backbone.load()
    expected, got = _leaf_shapes(variables[collection]), _leaf_shapes(loaded)
    if expected != got:
        missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        shaped = [(k, expected[k], got[k]) for k in sorted(set(expected) & set(got)) if expected[k] != got[k]]
        raise errors.ConfigError(
            f"the backbone weights from {backbone.weights or backbone.name!r} do not match config.backbone "
            f"({backbone.name}, taps {backbone.taps}): missing {missing[:5]}, extra {extra[:5]}, "
            f"mis-shaped {shaped[:5]}"
        )
    return {**variables, collection: jax.tree.map(np.asarray, loaded)}
