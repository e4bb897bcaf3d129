"""Config sections owned by PaDiM: `backbone`, `model`, `eval` overrides.

Sources: [paper] Defard et al., ICPR-W 2021 (arXiv 2011.08785); [original code]
xiahaifeng1995/PaDiM-Anomaly-Detection-Localization-master; [anomalib] anomalib 2.7
models/image/padim; [ours] this project's choice. Settings and memory of each source:
docs/papers.md, "PatchCore and PaDiM".
"""

from __future__ import annotations

import ml_collections

from xray_flax import backbones


def defaults() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.method = "PaDiM (Defard et al. 2021)"  # name shown in reports
    config.paper_row = ""  # not in Table 2 of Mezina et al. 2025 (it ran out of memory there)

    # Frozen pretrained backbone; its taps are nearest-upsampled to the first tap and
    # concatenated (ResNet-18 layers 1-3: 64 + 128 + 256 = 448 channels at stride 4).
    # [paper, anomalib: resnet18; wide_resnet50_2 with n_features 550 is the paper's other row]
    config.backbone = backbones.defaults("resnet18", ("layer1", "layer2", "layer3"))

    model = ml_collections.ConfigDict()
    # d: random subset of the concatenated channels. [paper, anomalib: 100 for ResNet-18, 550 for
    # WRN50-2]. Memory of the fitted Gaussian: P d^2 x bytes (see xray_flax/detectors/padim).
    model.n_features = 100
    model.channel_seed = 0  # the subset's draw [ours: NumPy, so not anomalib's torch.randperm draw]
    # Covariance regulariser: S / (n - 1) + ridge I. [paper, original code: 0.01; anomalib adds
    # a further 1e-5 I: 0.01001 reproduces it]
    model.ridge = 0.01
    # Feature-resolution lever: average-pool the embedding by this factor (P shrinks by its
    # square). [ours; 1 = the paper]
    model.feature_pool = 1
    # Storage of the fitted L^-1 [P, d, d]: 'float32', 'bfloat16' or 'float16' (halves the
    # checkpoint and inference memory; distances then carry ~3 significant digits). [ours]
    model.storage_dtype = "float32"
    # The streaming accumulator: 'float64' (NumPy on the host, Chan merge; 8 P d^2 bytes) or
    # 'float32' (on device, no per-batch transfer; 4 P d^2 bytes). [ours]
    model.accumulate = "float64"
    # With accumulate='float32': shard the accumulator over the mesh along the positions
    # (P must divide by the devices). [ours]
    model.shard_positions = False
    # One Gaussian per feature position ('per_position', the paper's PaDiM) or one for all
    # positions ('shared'): the per-position (count, mean, scatter) are merged into one (Chan
    # merge, float64 on the host) and its mean and L^-1 serve every position. [ours] Paintings
    # are not aligned objects: where a tile sits says nothing about what it shows, and a shared
    # Gaussian has P times more samples (a few hundred tiles give a noisy covariance per
    # position). The fitted arrays keep their [P, ...] shapes (broadcast), so the checkpoint,
    # predict and export are the same for both.
    model.gaussian = "per_position"
    # Upsample each tile by this whole factor (bilinear) before the backbone: P grows by its
    # square, and so do the fit's memory and time. [ours; 1 = the paper] For defects a few pixels
    # wide, smaller than the backbone's stride of 4 (docs/results.md measures it on the hard set).
    model.input_scale = 1
    # Gaussian blur of the upsampled map. [anomalib: sigma 4, kernel 33, reflect; original code:
    # scipy gaussian_filter sigma 4]
    model.blur_sigma = 4.0
    config.model = model

    # The score is PaDiM's own (max of the map); no mean filter.
    config.eval = ml_collections.ConfigDict({"score_filter_size": 1})
    return config


def shrink_for_tests(config: ml_collections.ConfigDict) -> None:
    """EfficientNet-Lite0 with two shallow taps for 32-pixel patches (stage2 24 ch at 8x8,
    stage3 40 ch at 4x4: 64 channels), d = 16: 64 positions x 16^2."""
    config.backbone = backbones.defaults("efficientnet_lite0", ("stage2", "stage3"))
    config.model.n_features = 16
    config.train.batch_size = 4
