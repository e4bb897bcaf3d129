"""Config sections owned by Reverse Distillation: `method`, `backbone`, `model`, `optim`.

Sources: [paper] Deng & Li, "Anomaly Detection via Reverse Distillation from One-Class
Embedding", CVPR 2022; [original code] hq-deng/RD4AD (MIT); [anomalib] anomalib 2.7
models/image/reverse_distillation (Apache-2.0); [ours] this project's choice. Settings of each
source: docs/papers.md, "The baselines". The defaults are the paper's / anomalib's WRN50-2 model; configs/
reverse_distillation_cpu.py puts it on EfficientNet-Lite0 for 2 CPU cores.
"""

from __future__ import annotations

import ml_collections

from xray_flax import backbones


def defaults() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.method = "Reverse Distillation (Deng & Li 2022)"  # name shown in reports
    config.paper_row = "Reverse Distillation"  # Table 2 of Mezina et al. 2025

    # Frozen encoder: WRN50-2 layer1-3 (256@64^2, 512@32^2, 1024@16^2 at 256 px). [paper,
    # original code, anomalib] The taps must halve in size one after the other (strides s, 2s,
    # 4s, ...); the head's widths are derived from their channels, so any backbone works.
    config.backbone = backbones.defaults("wide_resnet50_2", ("layer1", "layer2", "layer3"))

    model = ml_collections.ConfigDict()
    # Block of the OCBE layer and of the decoder stages: 'bottleneck', 'basic', or 'auto' =
    # anomalib's rule (get_bottleneck_layer / get_decoder): 'basic' for resnet18/resnet34,
    # 'bottleneck' otherwise. [anomalib, original code]
    model.block = "auto"
    # Blocks of the OCBE's ResNet layer; 0 = 3 Bottlenecks / 2 BasicBlocks. [anomalib, original code]
    model.ocbe_blocks = 0
    # Inner width of the OCBE Bottlenecks = planes * width_per_group / 64, planes = channels / 4.
    # [anomalib: 64 for every backbone (get_bottleneck_layer passes no width), i.e. 512 for
    # WRN50-2; original code: 128 for wide_resnet50_2 (its kwargs reach BN_layer), i.e. 1024]
    model.ocbe_width_per_group = 64
    # Channels of the one-class embedding; 0 = twice the deepest tap's (anomalib's 512 x
    # expansion: 2048 for WRN50-2, 512 for ResNet-18). [anomalib, original code]
    model.ocbe_channels = 0
    # Blocks per decoder stage, deep to shallow, one per tap; () = ResNet's (3, 4, 6, 3) for
    # Bottlenecks or (2, 2, 2, 2) for BasicBlocks, first len(taps) entries (de_wide_resnet50_2:
    # [3, 4, 6]; de_resnet18: [2, 2, 2]). [anomalib, original code]
    model.decoder_blocks = ()
    # Inner width of the decoder Bottlenecks = planes * width_per_group / 64; 0 = 128 for
    # wide_resnet* backbones (de_wide_resnet50_2), 64 otherwise (de_resnet50). [anomalib,
    # original code]
    model.decoder_width_per_group = 0
    # The ReLU at the end of every decoder stage: 'relu' [anomalib, original code: ResNet taps
    # are post-ReLU], 'none' (signed decoded taps) [ours: EfficientNet stage ends are linear-
    # bottleneck outputs, about half negative, which a ReLU'd decoder cannot reproduce], or
    # 'auto' = 'relu' for resnet*/wide_resnet* encoders, 'none' for the others.
    model.tap_activation = "auto"
    # Combining the per-tap distance maps: 'add' [anomalib's ReverseDistillation default; the
    # original code's evaluation, amap_mode='a'] or 'multiply' [the original cal_anomaly_map's
    # and anomalib's AnomalyMapGenerator's default argument].
    model.map_mode = "add"
    model.blur_sigma = 4.0  # [anomalib, original code: Gaussian sigma 4 after upsampling]
    # Blur borders: 'torch' = anomalib's GaussianBlur2d ('reflect' without repeating the edge
    # pixel); 'scipy' = the original's scipy.ndimage.gaussian_filter (edge pixel repeated).
    model.blur_border = "torch"
    config.model = model

    optim = ml_collections.ConfigDict()
    # Adam on the OCBE + decoder only (the encoder is frozen): lr 0.005, b1 0.5. [paper,
    # original code, anomalib]
    optim.learning_rate = 0.005
    optim.b1 = 0.5
    # [original code: betas (0.5, 0.999) in main.py; anomalib 2.7 configure_optimizers: (0.5, 0.99)]
    optim.b2 = 0.999
    optim.weight_decay = 0.0  # [original code, anomalib: none]
    optim.milestones = ()  # [original code, anomalib: constant learning rate]
    optim.decay_factor = 0.1  # used only with milestones (the shared make_optimizer)
    config.optim = optim
    return config


def shrink_for_tests(config: ml_collections.ConfigDict) -> None:
    """Lite0 stage2 (24 ch, stride 4) + stage3 (40 ch, stride 8) at 32 px: taps 8^2 and 4^2, the
    embedding 80@2^2; one narrow block per OCBE / decoder stage."""
    config.backbone = backbones.defaults("efficientnet_lite0", ("stage2", "stage3"))
    config.model.block = "bottleneck"
    config.model.ocbe_blocks = 1
    config.model.ocbe_width_per_group = 16
    config.model.decoder_blocks = (1, 1)
    config.model.decoder_width_per_group = 16
