"""Config sections owned by FastFlow: `backbone`, `model`, `loss`, `optim`.

Sources: [paper] J. Yu, Y. Zheng, X. Wang, W. Li, Y. Wu, R. Zhao, L. Wu, "FastFlow: Unsupervised
Anomaly Detection and Localization via 2D Normalizing Flows", arXiv 2111.07677 (2021);
[anomalib] anomalib 2.7 (models/image/fastflow: torch_model.py, loss.py, anomaly_map.py,
lightning_model.py; FrEIA's AllInOneBlock vendored in models/components/flow); [ours] this
project's choice. Settings of each source: docs/papers.md, "The baselines".
"""

from __future__ import annotations

import ml_collections

from xray_flax import backbones

IMAGE_SCORES = ("max", "filtered_max")


def defaults() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.method = "FastFlow (Yu et al. 2021)"  # name shown in reports
    config.paper_row = "FastFlow"  # Table 2 of Mezina et al. 2025

    # Frozen ImageNet backbone and its taps, one flow per tap. [anomalib: timm resnet18
    # features_only out_indices [1, 2, 3] = layer1-3, 64/128/256 ch at strides 4/8/16]
    config.backbone = backbones.defaults("resnet18", ("layer1", "layer2", "layer3"))

    model = ml_collections.ConfigDict()
    model.flow_steps = 8  # AllInOne blocks per tap [anomalib, paper: 8 for ResNet-18]
    # Subnet hidden width = int(ratio * ceil(C / 2)) (the subnet sees half the channels).
    # [anomalib: 1.0 for ResNet-18; paper: 1.0 for ResNet-18, 0.16 for CaiT/DeiT]
    model.hidden_ratio = 1.0
    # True: 3x3 subnets in every step; False: 3x3 on even steps, 1x1 on odd. [anomalib: False]
    model.conv3x3_only = False
    model.clamp = 2.0  # affine clamp, s = clamp * tanh(0.1 a) [anomalib: 2.0]
    # A trainable LayerNorm over [C, H, W] of each tap, with an elementwise affine of shape
    # [H, W, C]: it depends on the patch size, as anomalib's (built for its input size).
    # [anomalib: on for CNN backbones]
    model.layer_norm = True
    # Image score: 'max' = the maximum of the map [anomalib: torch.amax of the map];
    # 'filtered_max' = the shared mean-filtered maximum (config.eval.score_filter_size).
    model.image_score = "max"
    # Gaussian blur (sigma, px) of the upsampled map, 0 = none. [anomalib: FastFlow's map is
    # not blurred]
    model.blur_sigma = 0.0
    config.model = model

    # loss = sum over taps of mean_b(0.5 * sum z^2 - log|det J|) [anomalib FastflowLoss]; no knobs.
    config.loss = ml_collections.ConfigDict()

    optim = ml_collections.ConfigDict()
    optim.learning_rate = 1e-3  # [anomalib: Adam lr 0.001, constant]
    optim.b1 = 0.9  # [anomalib: torch Adam defaults]
    optim.b2 = 0.999
    optim.eps = 1e-8
    # Coupled L2 as torch.optim.Adam(weight_decay=...): weight_decay * params is added to the
    # gradient before Adam's moments. [anomalib: 1e-5]
    optim.weight_decay = 1e-5
    optim.grad_clip_norm = 0.0  # global-norm clip, 0 = none [anomalib: gradient_clip_val 0]
    config.optim = optim
    return config


def shrink_for_tests(config: ml_collections.ConfigDict) -> None:
    """EfficientNet-Lite0 (installed weights) with two shallow taps for the 32-px test config:
    stage2 (24 ch, 8x8) and stage3 (40 ch, 4x4); two flow steps (a 3x3 and a 1x1 subnet)."""
    config.backbone = backbones.defaults("efficientnet_lite0", ("stage2", "stage3"))
    config.model.flow_steps = 2
    config.model.hidden_ratio = 0.5
