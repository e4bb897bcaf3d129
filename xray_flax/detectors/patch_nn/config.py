"""Config sections owned by the raw-patch nearest-neighbour reference detector: `model`."""

from __future__ import annotations

import ml_collections


def defaults() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.method = "Raw-patch nearest neighbour (training-free reference)"
    model = ml_collections.ConfigDict()
    model.patch = 7  # side of the raw pixel patches [ours: measured on the hard simulated set, docs/results.md]
    model.stride = 2  # step between patch origins in the tile [ours]
    # Subtract each patch's mean before comparing (insensitive to slow density changes). [ours]
    model.center = False
    # Memory-bank entries kept by the streamed greedy k-centre coreset (xray_flax/nn/coreset.py):
    # memory (bank + chunk) x patch^2 x channels x 4 B, for any number of training tiles. [ours]
    model.bank_size = 16_384
    model.chunk_size = 65_536  # features buffered between reductions, rounded up to whole batches
    model.query_block = 4_096  # nearest-neighbour blocks: queries x bank entries at once
    model.bank_block = 8_192
    model.blur_sigma = 2.0  # Gaussian blur of the upsampled distance map, pixels [ours]
    config.model = model
    # The score is the plain max of the (blurred) map.
    config.eval = ml_collections.ConfigDict({"score_filter_size": 1})
    return config


def shrink_for_tests(config: ml_collections.ConfigDict) -> None:
    """5x5 patches at stride 4 of the 32-px test tiles (7 x 7 = 49 per tile), a 128-entry bank
    streamed through a buffer of a few batches (several reductions on the tiny data)."""
    config.model.patch = 5
    config.model.stride = 4
    config.model.bank_size = 128
    config.model.chunk_size = 400
    config.model.query_block = 256
    config.model.bank_block = 64
    config.train.batch_size = 4
