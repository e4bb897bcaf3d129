"""Config sections owned by STFPM: `backbone`, `model`, `loss`, `optim`.

Sources: [paper] G. Wang, S. Han, E. Ding, D. Huang, "Student-Teacher Feature Pyramid
Matching for Anomaly Detection", BMVC 2021 (arXiv 2103.04257); [anomalib] anomalib 2.7
(models/image/stfpm: torch_model.py, loss.py, anomaly_map.py, lightning_model.py);
[ours] this project's choice. Settings of each source: docs/papers.md, "The baselines".
"""

from __future__ import annotations

import ml_collections

from xray_flax import backbones

BATCH_REDUCTIONS = ("sum", "mean")


def defaults() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.method = "STFPM (Wang et al. 2021)"  # name shown in reports
    config.paper_row = "STFPM"  # Table 2 of Mezina et al. 2025

    # Teacher = this backbone, pretrained and frozen; student = the same network, randomly
    # initialised and trained. [paper, anomalib: ResNet-18, layers 1-3 (64/128/256 ch at
    # strides 4/8/16)]
    config.backbone = backbones.defaults("resnet18", ("layer1", "layer2", "layer3"))

    model = ml_collections.ConfigDict()
    # Gaussian blur of the upsampled map, 0 = none. [anomalib: STFPM's map is not blurred
    # (its AnomalyMapGenerator only upsamples and multiplies); the other anomalib models blur
    # with sigma 4]
    model.blur_sigma = 0.0
    config.model = model

    loss = ml_collections.ConfigDict()
    # Per-layer factor on the summed squared difference of the L2-normalised features, which
    # is divided by that layer's h * w. [anomalib: 0.5 / (h w); paper: the mean over the
    # positions of each image (factor 1, docs/papers.md; a factor 1/2 only rescales the loss,
    # which under SGD acts as half the learning rate)]
    loss.layer_scale = 0.5
    # How the images of a batch combine: 'sum' = anomalib's MSELoss(reduction='sum'), which
    # sums over the batch too (the loss grows with the batch size, so lr 0.4 was tuned
    # against a batch-32 sum); 'mean' = the per-image loss averaged over the batch, the
    # paper's loss over the training set. [anomalib: 'sum'; paper: 'mean']
    loss.batch_reduction = "sum"
    config.loss = loss

    optim = ml_collections.ConfigDict()
    optim.learning_rate = 0.4  # [paper, anomalib: SGD lr 0.4, constant]
    optim.momentum = 0.9  # [paper, anomalib] (no dampening, no Nesterov: torch SGD's defaults)
    # Coupled L2 as torch.optim.SGD's weight_decay: weight_decay * params is added to the
    # gradient before the momentum. [paper: 1e-4; anomalib 2.7's configure_optimizers: 1e-3]
    optim.weight_decay = 1e-4
    config.optim = optim
    return config


def shrink_for_tests(config: ml_collections.ConfigDict) -> None:
    """EfficientNet-Lite0 (weights installed with the package) with two shallow taps for the
    32-pixel test config: stage2 (24 ch, 8x8) and stage3 (40 ch, 4x4)."""
    config.backbone = backbones.defaults("efficientnet_lite0", ("stage2", "stage3"))
