"""SuperSimpleNet (Rolih, Fučka, Skočaj, ICPR 2024): feature-level synthetic anomalies and a
segmentation-detection head on a frozen backbone; unsupervised, or with labelled anomalies.

A frozen ImageNet backbone gives two taps (WRN50-2 layers 2 and 3), each upsampled to twice the
first tap's side, concatenated and 3x3-averaged; a 1x1 adaptor (same width) adapts them. In
training, every tile appears twice, and in each row Gaussian noise (sigma 0.015) is added to the
adapted features inside a thresholded Perlin mask drawn at the feature resolution (kept with
probability 0.5). A segmentation head (1x1 conv 1024 - BN - LeakyReLU - 1x1 conv) predicts the
mask as logits, trained with a focal loss and a truncated L1; a classification head (5x5 conv
on features + map, BN, ReLU, global max and mean of it and of the map, linear) predicts the
label, trained with a focal loss. Inference: no noise; the map is the segmentation logits
upsampled to the tile and blurred (sigma 4), the image score the classification logit.
`bounded_map=False`: the shared loop fits a score normalisation on normal validation tiles.
A training batch may carry real anomalies ("mask", "label"; steps.py says how they are used).

    network.py            feature aggregation, adaptor, segmentation and classification heads
    anomaly_generator.py  Perlin masks at feature resolution, where the noise goes, the targets
    loss.py               focal loss, truncated L1, their sum
    steps.py              init, pretrained, AdamW in two groups with MultiStepLR, the train step
                          (supervised batches too), the map and score
    config.py             the `backbone`, `model`, `anomaly_generator`, `loss`, `optim` sections,
                          each knob with its source

What is whose. [paper] the architecture, Perlin-masked Gaussian noise on the adapted features,
the loss L = focal(map) + truncated L1(map) + focal(score), the map blurred with sigma 4, the
classification head on adapted features (ICPR), stop-gradient from the map into the
classification head when unsupervised. [anomalib 2.7, original code] WRN50-2 layer2 + layer3
with torchvision V1 weights, 256 px, noise std 0.015, Perlin threshold 0.2 (MVTec), exponents
0..5, the batch duplicated, masks kept with probability 0.5, no noise inside real masks, gamma 4,
truncation 0.5, AdamW (adaptor 1e-4 with AdamW's default weight decay 0.01, heads 2e-4 with
1e-5), MultiStepLR x0.4 at 80 % and 90 %, 300 epochs at batch 32, the gradient clipped at 1 and
no stop-gradient when supervised.

Where this differs from anomalib 2.7, and why:

* `model.adapt_cls_features` defaults to True, the ICPR paper's model; anomalib's default is
  False (the journal extension, raw features into the classification head). Both are offered.
* Upsampling with half-pixel centres as anomalib (F.interpolate's default); the original
  code aligns corners in the feature extractor.
* Perlin noise evaluated on the feature grid, not drawn on the next power of two and resized
  (identical on power-of-two grids, which ours are), and the lattice exponent capped on maps
  smaller than 64 pixels, where 32 cells would be finer than a pixel (anomaly_generator.py).
* anomalib rescales a Perlin field that stays below the threshold (`rescale_empty`, default
  on); the original code does not. A knob.
* BatchNorm: Flax keeps the biased batch variance as the running variance, torch the
  unbiased one (a factor n / (n - 1), n = 2b h w values per channel: under 0.1 % here).
* The MultiStepLR milestones are fractions of the run's steps, not of its epochs (the loop
  counts steps).
* The image score is the raw classification logit as anomalib (the original code reports its
  sigmoid: the same ranking); `model.image_score = 'map_max'` gives the original code's
  second score, the maximum of the map. The map stays in logits (anomalib): the shared
  normalisation, fitted on normal validation tiles, then puts map and score on one scale.
* Any backbone of xray_flax.backbones: the CPU configs use EfficientNet-Lite0's stride-8 and
  stride-16 taps (stage3, stage4), the only ImageNet weights that install offline, with the
  noise std scaled to Lite0's features (2.5, their per-channel std; 0.015 is WRN50-2's) and 10x
  the learning rates for a 400-step run (configs/supersimplenet_cpu.py says why).
* Supervised training: the train step takes batches with "mask" and "label"
  (`labelled_anomalies=True`); the loop mixes labelled anomalous tiles of the train split into
  every batch with config.train.labelled_anomalies > 0 (xray_flax/data/labelled.py). The
  supervised settings of the references (stop_grad off, gradient clipped at 1, threshold 0.6)
  are not switched by it: set them in the config.

Written from the paper and anomalib's Apache-2.0 code, checked against the authors' MIT code.
"""

from __future__ import annotations

import functools

import ml_collections

from xray_flax import backbones, errors
from xray_flax.backbones.base import fill_pretrained
from xray_flax.detectors.base import GRADIENT, Detector
from xray_flax.detectors.supersimplenet import network, steps
from xray_flax.detectors.supersimplenet.config import IMAGE_SCORES


def _check(config: ml_collections.ConfigDict) -> None:
    problems = []
    model, gen, optim = config.model, config.anomaly_generator, config.optim
    if model.image_score not in IMAGE_SCORES:
        problems.append(f"config.model.image_score={model.image_score!r}; expected one of {IMAGE_SCORES}")
    if int(model.pool_size) < 1 or int(model.pool_size) % 2 != 1:
        problems.append(f"config.model.pool_size must be a positive odd number, got {model.pool_size}")
    for name in ("seg_hidden", "cls_channels", "cls_kernel"):
        if int(model[name]) < 1:
            problems.append(f"config.model.{name} must be >= 1, got {model[name]}")
    if float(model.blur_sigma) > 0 and (int(model.blur_kernel) < 1 or int(model.blur_kernel) % 2 != 1):
        problems.append(f"config.model.blur_kernel must be a positive odd number, got {model.blur_kernel}")
    if not 0 <= int(gen.min_exponent) <= int(gen.max_exponent):
        problems.append(
            f"config.anomaly_generator.min_exponent={gen.min_exponent} and max_exponent={gen.max_exponent} "
            "must satisfy 0 <= min <= max"
        )
    if not 0 <= float(gen.anomaly_probability) <= 1:
        problems.append(
            f"config.anomaly_generator.anomaly_probability must be in [0, 1], got {gen.anomaly_probability}"
        )
    if float(gen.noise_std) <= 0:
        problems.append(f"config.anomaly_generator.noise_std must be > 0, got {gen.noise_std}")
    for name in ("adaptor_lr", "head_lr"):
        if float(optim[name]) <= 0:
            problems.append(f"config.optim.{name} must be > 0, got {optim[name]}")
    errors.require(problems)


def build(config: ml_collections.ConfigDict) -> Detector:
    _check(config)
    backbone = backbones.build(config.backbone, config.data.channels)
    if len(backbone.taps) < 1:
        raise errors.ConfigError("config.backbone.taps: SuperSimpleNet needs at least one tap")
    model = config.model
    modules = {
        "adaptor": network.Adaptor(),
        "seg_head": network.SegmentationHead(hidden=int(model.seg_hidden)),
        "cls_head": network.ClassificationHead(
            channels=int(model.cls_channels), kernel=int(model.cls_kernel), stop_grad=bool(model.stop_grad)
        ),
    }
    tx = steps.make_optimizer(config.optim, int(config.train.num_steps))
    map_options = {"backbone": backbone, "modules": modules, "model_config": model}
    return Detector(
        name="supersimplenet",
        kind=GRADIENT,
        init=functools.partial(steps.init, backbone=backbone, modules=modules, pool_size=int(model.pool_size)),
        anomaly_map=functools.partial(steps.anomaly_map, **map_options),
        # Every tap must upsample by a whole factor onto twice the first tap's grid.
        size_multiple=max(backbone.strides.values()),
        bounded_map=False,
        metric_names=("loss", "seg_focal", "seg_l1", "cls_focal"),
        optimizer=tx,
        labelled_anomalies=True,  # a batch may carry real anomalies (steps.py)
        train_step=functools.partial(
            steps.train_step,
            backbone=backbone,
            modules=modules,
            tx=tx,
            model_config=model,
            generator_config=config.anomaly_generator,
            loss_config=config.loss,
        ),
        preview=functools.partial(steps.preview, **map_options),
        pretrained=functools.partial(fill_pretrained, backbone=backbone),
    )
