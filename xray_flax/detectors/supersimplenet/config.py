"""Config sections owned by SuperSimpleNet: `backbone`, `model`, `anomaly_generator`, `loss`, `optim`.

Sources: [paper] B. Rolih, M. Fučka, D. Skočaj, "SuperSimpleNet: Unifying Unsupervised and
Supervised Learning for Fast and Reliable Surface Defect Detection", ICPR 2024 (arXiv
2408.03143); [original code] the authors' SuperSimpleNet repository (train.py's run_unsup /
run_sup settings, model/); [anomalib] anomalib 2.7 models/image/supersimplenet; [ours] this
project's choice. Settings of each source: docs/papers.md, "SuperSimpleNet".

The section is `anomaly_generator`, not `synthesis`: that name is DRAEM's image-level
synthesis section, which the config checks read.
"""

from __future__ import annotations

import ml_collections

from xray_flax import backbones

IMAGE_SCORES = ("classification", "map_max")


def defaults() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.method = "SuperSimpleNet (Rolih et al. 2024)"  # name shown in reports
    config.paper_row = ""  # not in Table 2 of Mezina et al. 2025

    # Frozen pretrained backbone; its taps are upsampled to twice the first tap's side,
    # concatenated and 3x3-averaged. [paper, anomalib, original code: WRN50-2 layers 2 and 3
    # (512 + 1024 = 1536 channels at stride 8 -> a stride-4 map), torchvision's V1 weights]
    config.backbone = backbones.defaults("wide_resnet50_2", ("layer2", "layer3"))

    model = ml_collections.ConfigDict()
    model.pool_size = 3  # neighbourhood aggregation window [paper, anomalib, original code: 3]
    model.seg_hidden = 1024  # segmentation head's hidden width [paper, anomalib, original code]
    model.cls_channels = 128  # classification head's conv width [paper, anomalib, original code]
    model.cls_kernel = 5  # classification head's conv side [paper, anomalib, original code]
    # The classification head sees the adapted (and noised) features: True = ICPR 2024 [paper,
    # original code]; False = the journal extension (the raw features with the same noise),
    # anomalib 2.7's default. [anomalib: adapt_cls_features]
    model.adapt_cls_features = True
    # Detach the segmentation map from the classification head (its loss then trains only the
    # classification head). [original code, anomalib: True unsupervised, False supervised]
    model.stop_grad = True
    # The map: segmentation logits upsampled bilinearly to the tile, then a Gaussian blur of
    # sigma 4 with a 2 * ceil(3 sigma) + 1 = 25 tap kernel, reflect borders. [anomalib,
    # original code AnomalyMapGenerator]
    model.blur_sigma = 4.0
    model.blur_kernel = 25
    # Image score: 'classification' = the classification head's logit [paper, anomalib
    # pred_score]; 'map_max' = the maximum of the map (the original code's seg-I-AUROC). [ours:
    # both offered]
    model.image_score = "classification"
    config.model = model

    gen = ml_collections.ConfigDict()
    # Perlin threshold. [paper, anomalib default, original code on MVTec: 0.2; original code on
    # VisA and the supervised runs (SensumSODF, KSDD2): 0.6]
    gen.threshold = 0.2
    gen.noise_std = 0.015  # N(0, 0.015^2) added to the adapted features [paper, anomalib, original code]
    # Probability that a row's Perlin mask is kept (else emptied). [anomalib, original code: 0.5]
    gen.anomaly_probability = 0.5
    # Lattice cells 2^k per axis, k ~ U{min_exponent .. max_exponent}. [anomalib, original code:
    # 0 .. 5; ours: capped on small maps, anomaly_generator.py]
    gen.min_exponent = 0
    gen.max_exponent = 5
    # Rescale a noise field that never exceeds the threshold to [-1, 1] (no empty kept mask).
    # [anomalib: True; original code: False]
    gen.rescale_empty = True
    # Noise also outside the real mask of a labelled anomalous tile (supervised batches only).
    # [original code: `bad` = True in every run; anomalib: True]
    gen.noise_on_labelled_anomalies = True
    config.anomaly_generator = gen

    loss = ml_collections.ConfigDict()
    loss.focal_gamma = 4.0  # [paper, anomalib, original code]
    loss.focal_alpha = -1.0  # < 0 = no class weighting [anomalib, original code]
    loss.truncation = 0.5  # t of the truncated L1 [paper, anomalib, original code: 0.5]
    config.loss = loss

    optim = ml_collections.ConfigDict()
    # torch.optim.AdamW with two parameter groups: the adaptor at lr 1e-4 with AdamW's default
    # weight decay 0.01 (neither reference sets one for it), the two heads at 2e-4 with 1e-5.
    # [anomalib configure_optimizers; original code: seg_lr = dec_lr = 2e-4, adapt_lr 1e-4]
    optim.adaptor_lr = 1e-4
    optim.adaptor_weight_decay = 0.01
    optim.head_lr = 2e-4
    optim.head_weight_decay = 1e-5
    optim.b1 = 0.9  # torch defaults
    optim.b2 = 0.999
    optim.eps = 1e-8
    # MultiStepLR: every rate times 0.4 at 80 % and 90 % of the run. [anomalib, original code:
    # milestones at 0.8 and 0.9 of the epochs, gamma 0.4]
    optim.milestones = (0.8, 0.9)
    optim.decay_factor = 0.4
    # Clip the global gradient norm (0 = off). [original code, anomalib: 0 unsupervised, 1
    # supervised]
    optim.grad_clip_norm = 0.0
    config.optim = optim
    return config


def shrink_for_tests(config: ml_collections.ConfigDict) -> None:
    """EfficientNet-Lite0 (weights installed with the package) with its stride-8 and stride-16
    taps for 32-pixel patches (stage3 40 ch at 4x4, stage4 80 ch at 2x2 -> an 8x8 map of 120
    channels), narrow heads."""
    config.backbone = backbones.defaults("efficientnet_lite0", ("stage3", "stage4"))
    config.model.seg_hidden = 32
    config.model.cls_channels = 16
