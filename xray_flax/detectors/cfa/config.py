"""Config sections owned by CFA: `backbone`, `model`, `loss`, `optim`.

Sources: [paper] Lee, Lee, Song, IEEE Access 2022 (arXiv 2206.04325); [original code]
sungwool/CFA_for_anomaly_localization; [anomalib] anomalib 2.7 models/image/cfa; [ours] this
project's choice. Settings of each source: docs/papers.md, "The baselines".
"""

from __future__ import annotations

import ml_collections

from xray_flax import backbones


def defaults() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.method = "CFA (Lee et al. 2022)"  # name shown in reports
    config.paper_row = "CFA"  # Table 2 of Mezina et al. 2025

    # Frozen pretrained backbone; its taps are pooled, upsampled to the first tap and
    # concatenated (WRN50-2: 256 + 512 + 1024 = 1792 channels at stride 4). [paper, anomalib]
    config.backbone = backbones.defaults("wide_resnet50_2", ("layer1", "layer2", "layer3"))

    model = ml_collections.ConfigDict()
    # Descriptor channels = (sum of tap channels) // gamma_d. [paper, anomalib: 1]
    model.gamma_d = 1
    # Memory-bank centres = positions // gamma_c (K-means when > 1). [paper, anomalib: 1;
    # ours: only 1 is implemented, > 1 is an error]
    model.gamma_c = 1
    # Train steps that build the memory bank (running mean of the initial descriptor's maps,
    # no update), before the descriptor trains: floor(training tiles / batch size) = one pass
    # over the training set, anomalib's initialize_centroid (xray_flax/detectors/cfa/steps.py).
    # The experiment configs set it from their data. [anomalib: one pass; ours: as steps]
    model.memory_bank_steps = 100
    # Gaussian blur of the upsampled map. [anomalib: sigma 4, kernel 33, reflect]
    model.blur_sigma = 4.0
    config.model = model

    loss = ml_collections.ConfigDict()
    loss.num_nearest = 3  # K: attracted centres, and the neighbours of the score [paper, anomalib]
    loss.num_hard_negatives = 3  # J: repelled centres [paper, anomalib]
    loss.radius = 1e-5  # r of the hypersphere, fixed [anomalib, original code]
    loss.alpha = 0.1  # repulsion margin [paper, anomalib]
    loss.nu = 1e-3  # loss = (L_att + L_rep) / nu, i.e. x1000 [original code, anomalib]
    config.loss = loss

    optim = ml_collections.ConfigDict()
    # torch.optim.AdamW(lr=1e-3, weight_decay=5e-4, amsgrad=True), constant rate. [anomalib,
    # original code]
    optim.learning_rate = 1e-3
    optim.weight_decay = 5e-4  # decoupled (AdamW)
    optim.amsgrad = True
    optim.b1 = 0.9  # torch defaults
    optim.b2 = 0.999
    optim.eps = 1e-8
    config.optim = optim
    return config


def shrink_for_tests(config: ml_collections.ConfigDict) -> None:
    """EfficientNet-Lite0 with two shallow taps for 32-pixel patches (stage2 24 ch at 8x8,
    stage3 40 ch at 4x4: 64 patch channels, 64 positions), a 16-channel descriptor, and a
    memory bank built in the first 2 of the tiny config's steps."""
    config.backbone = backbones.defaults("efficientnet_lite0", ("stage2", "stage3"))
    config.model.gamma_d = 4
    config.model.memory_bank_steps = 2
