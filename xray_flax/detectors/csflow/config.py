"""Config sections owned by CS-Flow: `backbone`, `model`, `loss`, `optim`.

Sources: [paper] M. Rudolph, T. Wehrbein, B. Rosenhahn, B. Wandt, "Fully Convolutional
Cross-Scale-Flows for Image-based Defect Detection", WACV 2022 (arXiv 2110.02855);
[original] the authors' code, marco-rudolph/cs-flow (config.py, model.py, freia_funcs.py,
train.py, utils.py, evaluate.py); [anomalib] anomalib 2.7 (models/image/csflow: torch_model.py,
loss.py, anomaly_map.py, lightning_model.py); [ours] this project's choice. Settings of each
source: docs/papers.md, "The baselines".
"""

from __future__ import annotations

import ml_collections

from xray_flax import backbones

IMAGE_SCORES = ("mean", "filtered_max")
MAP_MODES = ("nll", "all", "largest")
IMAGE_RESIZES = ("nearest", "area")
LOGDET_REDUCTIONS = ("per_sample", "batch_sum")


def defaults() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.method = "CS-Flow (Rudolph et al. 2022)"  # name shown in reports
    config.paper_row = "CS-Flow"  # Table 2 of Mezina et al. 2025

    # One tap of a frozen backbone, applied to the image at every scale. [original, anomalib:
    # EfficientNet-B5, the end of stage 6 (torchvision features.6.8, lukemelas' block 35):
    # 304 ch at stride 32, in eval mode]
    config.backbone = backbones.defaults("efficientnet_b5", ("stage6",))

    model = ml_collections.ConfigDict()
    # Scale k sees the image resized to side / 2^k. [original, anomalib: 3 scales; 768, 384, 192]
    model.scales = 3
    # How the image is resized for scales k > 0: 'nearest' = torch F.interpolate's default
    # (every 2^k-th pixel) [original, anomalib]; 'area' = the mean of each 2^k x 2^k block [ours].
    model.image_resize = "nearest"
    model.coupling_blocks = 4  # [original, anomalib: 4]
    model.hidden_channels = 1024  # subnet hidden width [original fc_internal, anomalib: 1024]
    # Subnet kernel per block; () = 3 in every block but the last, 5 there [original, anomalib].
    model.kernel_sizes = ()
    model.clamp = 3.0  # log s = clamp * 0.636 * atan(s / clamp) [original, anomalib: 3]
    # One channel permutation per block shared by all scales [anomalib: default_rng(block)
    # restarted per scale]; True: an independent one per scale [original: np.random.seed(block)
    # then one draw per scale].
    model.independent_scale_permutations = False
    # Map: 'nll' = the upsampled per-position mean_c z^2 / 2 of every scale, averaged with weights
    # proportional to each scale's positions, so that its tile mean IS the image score
    # mean(z^2 / 2) [ours: the shared loop normalises maps and scores with one affine map and
    # cuts map pixels (regions) at the threshold chosen on image scores, so the two must share
    # a scale]; 'all' = the product over scales of the upsampled mean_c z^2 [anomalib
    # AnomalyMapMode.ALL, its default]; 'largest' = the first (largest) scale's mean_c z^2
    # [original evaluate.py; anomalib MAX]. 'all' and 'largest' are on another scale than the
    # 'mean' image score: rankings (ROC-AUC, pixel AUROC) are right, normalised values and
    # regions are not; pair them with image_score='filtered_max' for those.
    model.map_mode = "nll"
    # Image score: 'mean' = mean(z^2 / 2) over all positions, channels and scales [original,
    # anomalib]; 'filtered_max' = the shared mean-filtered maximum of the map [ours].
    model.image_score = "mean"
    model.blur_sigma = 0.0  # Gaussian blur of the upsampled map, 0 = none [original, anomalib: none]
    config.model = model

    loss = ml_collections.ConfigDict()
    # loss = mean_b(0.5 * |z_b|^2 - logdet) / D with D = latent dimensions per image.
    # 'per_sample': logdet = the image's own log|det J| [original utils.get_loss]; 'batch_sum':
    # logdet = the sum over the whole batch [anomalib 2.7: ParallelGlowCouplingLayer returns
    # torch.stack(...).sum() over batch and scales], which weighs the volume term batch-size
    # times more than the likelihood's. The default is the original (the actual likelihood).
    loss.logdet_reduction = "per_sample"
    config.loss = loss

    optim = ml_collections.ConfigDict()
    optim.learning_rate = 2e-4  # [original lr_init, anomalib: Adam 2e-4, constant]
    # [original: torch Adam defaults (0.9, 0.999); anomalib 2.7: betas (0.5, 0.9)]
    optim.b1 = 0.9
    optim.b2 = 0.999
    optim.eps = 1e-4  # [original, anomalib]
    # Coupled L2 as torch.optim.Adam(weight_decay=...). [original, anomalib: 1e-5]
    optim.weight_decay = 1e-5
    optim.grad_clip_norm = 1.0  # global-norm clip before the step [original max_grad_norm, anomalib: 1]
    config.optim = optim
    return config


def shrink_for_tests(config: ml_collections.ConfigDict) -> None:
    """EfficientNet-Lite0 (installed weights) at its shallow stage2 tap (24 ch, stride 4) for the
    32-px test config: maps 8x8, 4x4, 2x2; two coupling blocks (3x3 and 5x5) of 8 hidden channels."""
    config.backbone = backbones.defaults("efficientnet_lite0", ("stage2",))
    config.model.coupling_blocks = 2
    config.model.hidden_channels = 8
