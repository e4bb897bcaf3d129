"""PaDiM: a Patch Distribution Modeling framework (Defard, Setkanov, Loesch, Audigier, ICPR-W 2021).

A frozen pretrained backbone embeds every position of a tile (taps nearest-upsampled to the
first tap, concatenated, a random subset of d channels); the normal training tiles give, per
position, a Gaussian (mean and covariance + 0.01 I). The map is the Mahalanobis distance of a
test embedding to its position's Gaussian, upsampled bilinearly and blurred (sigma 4); the
image score its maximum. A `fit` detector: one pass, no optimiser; `bounded_map=False`.

    distance.py  embedding, streaming moments (Chan et al. merge), Cholesky whitening, Mahalanobis
    steps.py     init, fit_init / fit_update / fit_finish / fit_summary, the map
    config.py    the `backbone` and `model` sections, each knob with its source

Memory that does not grow with the data. anomalib and the original code keep every training
embedding ([N, d, P] floats: 11,988 tiles x 100 x 4,096 positions x 4 B = 19.6 GB for ResNet-18
at 256 px) and compute the covariance at the end. Here the fit state is a constant
(count, mean [P, d], scatter [P, d, d]) merged batch by batch, so memory is

    fit state   P d^2 x 8 bytes (accumulate='float64', host) or x 4 (accumulate='float32', device)
    fitted      P d^2 x bytes(storage_dtype) for L^-1, + P d x 4 for the mean

with P = (patch / (stride of the first tap x feature_pool))^2 positions. The paper's settings
(float32 storage; the fit state is twice that in float64):

    ResNet-18, d = 100, 224 px (paper): P = 3,136        125 MB
    ResNet-18, d = 100, 256 px (anomalib): P = 4,096     164 MB
    WRN50-2,   d = 550, 224 px (paper): P = 3,136        3.8 GB
    WRN50-2,   d = 550, 256 px (anomalib): P = 4,096     5.0 GB
    WRN50-2,   d = 550, 512 px (the paper's X-ray patches, unresized): P = 16,384   19.8 GB
      levers: feature_pool 2 -> 5.0 GB; storage_dtype bfloat16 halves; d = 200 -> 2.6 GB;
      accumulate 'float32' + shard_positions over n devices -> 19.8 / n GB of fit state each
    EfficientNet-Lite0 (CPU configs), d = 100, 64 px: P = 256  10 MB; 512 px: P = 16,384  655 MB

None of these depends on the number of training tiles.

What is whose. [paper] ResNet-18 layers 1-3 with d = 100 or WRN50-2 with d = 550, random
channel subset, per-position Gaussian with ddof-1 covariance + 0.01 I, Mahalanobis map,
Gaussian blur sigma 4, image score = max. [anomalib] nearest upsampling of the deeper taps
(the original code's unfold concat is the same for whole factors), bilinear upsampling of the
map, kornia blur kernel 33 with reflect borders, an extra 1e-5 I (config: ridge 0.01001).
[ours] the streaming merge, L^-1 from a Cholesky factor instead of an explicit inverse, NumPy's
draw of the channel subset (anomalib: torch.randperm, a different subset for the same seed),
the levers feature_pool, storage_dtype, accumulate, shard_positions, the variant
gaussian='shared' (one Gaussian for all positions: paintings are not aligned), and any backbone of
xray_flax.backbones (the CPU configs use EfficientNet-Lite0, the only ImageNet weights that
install offline).
"""

from __future__ import annotations

import functools
import math

import ml_collections

from xray_flax import backbones, errors
from xray_flax.backbones.base import fill_pretrained
from xray_flax.detectors import base
from xray_flax.detectors.padim import distance, steps


def make_plan(config: ml_collections.ConfigDict) -> steps.Plan:
    m = config.model
    if m.accumulate not in steps.ACCUMULATE:
        raise errors.ConfigError(f"config.model.accumulate={m.accumulate!r}; expected one of {steps.ACCUMULATE}")
    if m.storage_dtype not in steps.STORAGE_DTYPES:
        raise errors.ConfigError(
            f"config.model.storage_dtype={m.storage_dtype!r}; expected one of {list(steps.STORAGE_DTYPES)}"
        )
    if m.shard_positions and m.accumulate != "float32":
        raise errors.ConfigError(
            "config.model.shard_positions needs config.model.accumulate='float32' (a device accumulator)"
        )
    if m.gaussian not in steps.GAUSSIANS:
        raise errors.ConfigError(f"config.model.gaussian={m.gaussian!r}; expected one of {steps.GAUSSIANS}")
    if int(m.feature_pool) < 1:
        raise errors.ConfigError(f"config.model.feature_pool must be >= 1, got {m.feature_pool}")
    if int(m.get("input_scale", 1)) < 1:
        raise errors.ConfigError(f"config.model.input_scale must be an integer >= 1, got {m.input_scale}")
    if float(m.ridge) <= 0:
        raise errors.ConfigError(
            f"config.model.ridge must be > 0 (the covariance must stay positive definite), got {m.ridge}"
        )
    backbone = backbones.build(config.backbone, config.data.channels)
    channels = [backbone.channels[t] for t in backbone.taps]
    subset = distance.channel_subset(sum(channels), int(m.n_features), int(m.channel_seed))
    return steps.Plan(
        backbone=backbone,
        per_tap=tuple(distance.split_subset(subset, channels)),
        n_features=int(m.n_features),
        pool=int(m.feature_pool),
        ridge=float(m.ridge),
        storage_dtype=m.storage_dtype,
        accumulate=m.accumulate,
        shard_positions=bool(m.shard_positions),
        gaussian=m.gaussian,
        mesh_config=config.mesh,
        blur_sigma=float(m.blur_sigma),
        input_scale=int(m.get("input_scale", 1)),
    )


def build(config: ml_collections.ConfigDict) -> base.Detector:
    plan = make_plan(config)
    return base.Detector(
        name="padim",
        kind=base.FIT,
        init=functools.partial(steps.init, plan=plan),
        anomaly_map=functools.partial(steps.anomaly_map, plan=plan),
        # Deeper taps upsample onto the first tap's grid by whole factors.
        size_multiple=math.lcm(
            max(plan.backbone.strides.values()), plan.backbone.strides[plan.backbone.taps[0]] * plan.pool
        ),
        bounded_map=False,
        pretrained=functools.partial(fill_pretrained, backbone=plan.backbone),
        fit_init=functools.partial(steps.fit_init, plan=plan),
        fit_update=functools.partial(steps.fit_update, plan=plan),
        fit_finish=functools.partial(steps.fit_finish, plan=plan),
        fit_summary=functools.partial(steps.fit_summary, plan=plan),
    )
