"""PatchCore: towards total recall in industrial anomaly detection (Roth et al., CVPR 2022).

A frozen pretrained backbone gives locally aware patch features (layers 2 and 3, each averaged
over its 3x3 neighbourhood, layer 3 upsampled to layer 2, concatenated); a greedy k-centre
coreset of the training patches is the memory bank; a test patch's score is the distance to
its nearest bank entry. The map is the patch scores upsampled and blurred; the image score
anomalib's reweighted maximum or the plain maximum. A `fit` detector: one pass, no optimiser;
`bounded_map=False`.

    distance.py  patch features, nearest-neighbour distances, the reweighted image score, the map
    steps.py     init, fit_init / fit_update / fit_finish / fit_summary, the map
    config.py    the `backbone` and `model` sections, each knob with its source
    xray_flax/nn/coreset.py  greedy k-centre, exact and streamed in bounded memory
    xray_flax/nn/knn.py      blocked, shardable exact nearest-neighbour search

Memory that does not grow with the data. anomalib stacks every training patch feature before
the coreset (N x 1536 x 4 B: 6.3 MB per 256-px tile, ~300 GB for the paper's 11,988 patches of
512 px; "nothing anomalib can do", anomalib #1094). Here the features stream through a buffer
of C patches; each time it fills, greedy k-centre picks the M bank entries anew from bank +
buffer, each entry carrying a certified covering radius (xray_flax/nn/coreset.py says which
published construction this is and why it holds). Fit memory is (M + C) x D x 4 bytes plus one
batch of backbone activations, whatever N: for WRN50-2 (D = 1536) with M = 16,384 and C =
65,536, 0.5 GB. The fitted bank is M x D x bytes(storage_dtype); the search compares
query_block x bank_block distances at a time (16 MB by default), on one device or with the bank
split over several (`model.shard_bank`).

What is whose. [paper] layers 2+3 of WRN50-2, 3x3 neighbourhood aggregation, greedy k-centre
coreset on randomly projected features, 1-NN patch score, the reweighted image score (eq. 7).
[anomalib] AvgPool2d(3, 1, 1) aggregation, bilinear layer-3 upsampling, 1536-d concatenation,
num_neighbors 9, Euclidean distances, nearest upsampling of the patch map and the sigma-4 blur.
[original code] the plain max image score (num_neighbors 1), the 1024-d adaptive pooling
(target_dim; its per-layer pooling of unfolded 3x3 patches is not reproduced), bilinear map
upsampling, a dense 128-d projection. [ours] a fixed bank size instead of a ratio, the streamed
coreset with radii, a deterministic greedy start (the first patch; anomalib: random, original:
10 random starts), exact re-scoring of the nearest distances, and any backbone of
xray_flax.backbones (the CPU configs use EfficientNet-Lite0, the only ImageNet weights that
install offline).
"""

from __future__ import annotations

import functools

import ml_collections

from xray_flax import backbones, errors
from xray_flax.backbones.base import fill_pretrained
from xray_flax.detectors import base
from xray_flax.detectors.patchcore import distance, steps
from xray_flax.nn import coreset


def make_plan(config: ml_collections.ConfigDict) -> steps.Plan:
    m = config.model
    if int(m.self_radius) < 0:
        raise errors.ConfigError(f"config.model.self_radius must be >= 0 (0 = off), got {m.self_radius}")
    for key in ("bank_size", "chunk_size", "query_block", "bank_block", "num_neighbors"):
        if int(m[key]) < 1:
            raise errors.ConfigError(f"config.model.{key} must be >= 1, got {m[key]}")
    if m.map_upsample not in distance.UPSAMPLE:
        raise errors.ConfigError(f"config.model.map_upsample={m.map_upsample!r}; expected one of {distance.UPSAMPLE}")
    if m.storage_dtype not in steps.STORAGE_DTYPES:
        raise errors.ConfigError(
            f"config.model.storage_dtype={m.storage_dtype!r}; expected one of {list(steps.STORAGE_DTYPES)}"
        )
    if int(m.target_dim) < 0 or int(m.projection_dim) < 0:
        raise errors.ConfigError(
            f"config.model.target_dim and projection_dim must be >= 0, got {m.target_dim}, {m.projection_dim}"
        )
    backbone = backbones.build(config.backbone, config.data.channels)
    concatenated = sum(backbone.channels[t] for t in backbone.taps)
    dim = int(m.target_dim) or concatenated
    if dim > concatenated:
        raise errors.ConfigError(
            f"config.model.target_dim={m.target_dim} exceeds the {concatenated} concatenated channels"
        )
    stride = backbone.strides[backbone.taps[0]]
    patch = int(config.data.patch_size)
    if patch % stride:
        raise errors.ConfigError(f"config.data.patch_size={patch} is not a multiple of the first tap's stride {stride}")
    per_batch = int(config.train.batch_size) * (patch // stride) ** 2
    chunk = -(-int(m.chunk_size) // per_batch) * per_batch
    return steps.Plan(
        backbone=backbone,
        target_dim=int(m.target_dim),
        dim=dim,
        bank_size=int(m.bank_size),
        chunk_size=chunk,
        patches_per_batch=per_batch,
        projection=coreset.projection_matrix(int(m.projection_seed), dim, int(m.projection_dim)),
        storage_dtype=m.storage_dtype,
        num_neighbors=int(m.num_neighbors),
        self_radius=int(m.self_radius),
        map_upsample=m.map_upsample,
        blur_sigma=float(m.blur_sigma),
        query_block=int(m.query_block),
        bank_block=int(m.bank_block),
        absorb=bool(m.absorb_covered),
        shard_bank=bool(m.shard_bank),
        mesh_config=config.mesh,
    )


def build(config: ml_collections.ConfigDict) -> base.Detector:
    plan = make_plan(config)
    return base.Detector(
        name="patchcore",
        kind=base.FIT,
        init=functools.partial(steps.init, plan=plan),
        anomaly_map=functools.partial(steps.anomaly_map, plan=plan),
        # The deeper tap upsamples onto the first tap's grid by a whole factor.
        size_multiple=max(plan.backbone.strides.values()),
        bounded_map=False,
        pretrained=functools.partial(fill_pretrained, backbone=plan.backbone),
        fit_init=functools.partial(steps.fit_init, plan=plan),
        fit_update=functools.partial(steps.fit_update, plan=plan),
        fit_finish=functools.partial(steps.fit_finish, plan=plan),
        fit_summary=functools.partial(steps.fit_summary, plan=plan),
    )
