"""Anomaly detectors by name: one folder each, one line each in `_DETECTORS`.

Every detector package `xray_flax/detectors/<name>/` provides

    build(config) -> base.Detector            (its __init__.py)
    config.defaults() -> ConfigDict           the config sections it owns (model, loss, optim, ...)
    config.shrink_for_tests(config)           tiny widths for the CPU test config

and keeps everything that is its own (networks, losses, steps) in that folder. The shared
loop, evaluation, predict and reports only ever see the `Detector` it builds.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import ml_collections

from xray_flax import errors
from xray_flax.detectors.base import FIT, GRADIENT, Detector, TrainState

__all__ = ["FIT", "GRADIENT", "Detector", "TrainState", "build", "check", "config_module", "names"]

# name -> package. Imported on first use, so a run loads only the detector it trains.
_DETECTORS = {
    "draem": "xray_flax.detectors.draem",  # DRAEM and the paper's model (Mezina et al. 2025)
    "highpass": "xray_flax.detectors.highpass",  # training-free local-contrast reference (fit kind)
    "pyramid_ae": "xray_flax.detectors.pyramid_ae",  # pyramidal reconstruction autoencoder (Mishra et al. 2021)
    "stfpm": "xray_flax.detectors.stfpm",  # student-teacher feature pyramid matching (Wang et al. 2021)
    "reverse_distillation": "xray_flax.detectors.reverse_distillation",  # Deng & Li, CVPR 2022
    "fastflow": "xray_flax.detectors.fastflow",  # 2D normalising flows on backbone features (Yu et al. 2021)
    "csflow": "xray_flax.detectors.csflow",  # cross-scale flows (Rudolph et al., WACV 2022)
    "cfa": "xray_flax.detectors.cfa",  # coupled-hypersphere feature adaptation (Lee et al. 2022)
    "supersimplenet": "xray_flax.detectors.supersimplenet",  # feature-level synthetic anomalies (Rolih et al. 2024)
    "padim": "xray_flax.detectors.padim",  # patch distribution modelling (Defard et al. 2021; fit kind)
    "patchcore": "xray_flax.detectors.patchcore",  # memory bank + coreset (Roth et al. 2022; fit kind)
    "patch_nn": "xray_flax.detectors.patch_nn",  # training-free raw-patch nearest neighbour (fit kind)
}


# Detectors whose train step takes labelled anomalous tiles (Detector.labelled_anomalies), named
# here so that the error for the others can list them without importing every detector.
_LEARNS_FROM_LABELS = ("supersimplenet",)


def names() -> list[str]:
    return sorted(_DETECTORS)


def _package(name: str) -> str:
    try:
        return _DETECTORS[name]
    except KeyError:
        raise errors.ConfigError(f"unknown detector {name!r} (config.detector); known detectors: {names()}") from None


def module(name: str) -> ModuleType:
    return importlib.import_module(_package(name))


def config_module(name: str) -> ModuleType:
    return importlib.import_module(_package(name) + ".config")


def build(config: ml_collections.ConfigDict) -> Detector:
    """The detector named by `config.detector`, built from the rest of `config`."""
    detector = module(config.detector).build(config)
    if not isinstance(detector, Detector):
        raise TypeError(f"{_package(config.detector)}.build returned {type(detector).__name__}, not a Detector")
    return detector


def check(config: ml_collections.ConfigDict) -> list[str]:
    """The problems of the detector's config: what `build` refuses (it is pure and writes
    nothing: its ConfigError is the problem, or the problems it lists) and the patch size the
    built detector needs."""
    try:
        detector = build(config)
    except errors.ConfigError as e:
        return errors.problems_of(e)
    return patch_size_problems(config.data.patch_size, detector) + labelled_problems(config, detector)


def labelled_problems(config: ml_collections.ConfigDict, detector: Detector) -> list[str]:
    """Labelled anomalies go only to a detector whose train step learns from real positives."""
    count = config.train.get("labelled_anomalies", 0)
    if not count or detector.labelled_anomalies:
        return []
    able = [name for name in names() if name in _LEARNS_FROM_LABELS]
    return [
        f"config.train.labelled_anomalies={count}: detector {detector.name!r} learns from normal tiles only "
        f"(detectors that use labelled anomalies: {able}); set it to 0"
    ]


def patch_size_problems(patch_size: int, detector: Detector) -> list[str]:
    """Patch sides must be multiples of the detector's `size_multiple` (pooling levels, strides)."""
    multiple = detector.size_multiple
    if patch_size % multiple == 0:
        return []
    return [
        f"config.data.patch_size={patch_size} must be a multiple of {multiple} for the {detector.name} detector "
        "as configured (its pooling levels or its backbone's strides)"
    ]
