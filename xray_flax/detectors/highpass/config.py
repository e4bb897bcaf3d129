"""Config sections owned by the high-pass reference detector: `model`."""

from __future__ import annotations

import ml_collections


def defaults() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.method = "High-pass energy (training-free reference)"
    model = ml_collections.ConfigDict()
    model.sigma = 4.0  # Gaussian sigma in pixels [ours: measured on the hard simulated set, docs/results.md]
    model.window = 5  # box side of the local mean of |x - blur| [ours: measured likewise]
    model.truncate = 4.0  # Gaussian radius in sigmas, as scipy.ndimage's default
    config.model = model
    # The score is the plain max of the map: the box filter already averages locally.
    config.eval = ml_collections.ConfigDict({"score_filter_size": 1})
    return config


def shrink_for_tests(config: ml_collections.ConfigDict) -> None:
    """Nothing to shrink: no network."""
    del config
