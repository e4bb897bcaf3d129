"""Mezina et al. 2025 exactly: DRAEM with a Nested U-Net reconstructive and a U-Net discriminative
sub-network on 512x512 patches of X-ray scans (docs/papers.md, "The X-ray paper").

Point it at real scans: --config.data.source=scans --config.data.root=/path/to/scans
(masks `<name>_mask.png` and/or --config.data.labels_csv=labels.csv, see docs/data.md).
"""

from xray_flax.config_base import get_base_config


def get_config():
    config = get_base_config()
    config.data.patch_size = 512  # paper: 512x512 patches
    config.data.stride = 512  # paper: non-overlapping patches
    config.data.channels = 1  # grayscale X-rays
    config.model.width_multiplier = 1.0  # filters 32..512 (UNet++), 64..512 (U-Net)
    config.model.nested_unet_levels = 5
    config.model.unet_levels = 4
    config.loss.ssim_weight = 2.0  # paper: lambda = 2
    config.loss.focal_gamma = 2.0  # paper: gamma = 2
    config.synthesis.blend = "paper"  # eq. (1)
    config.synthesis.beta_range = (0.2, 1.0)  # paper: beta in [0.2, 1]
    config.optim.learning_rate = 1e-4  # paper: Adam 1e-4
    config.train.batch_size = 8  # DRAEM's batch size (the paper keeps DRAEM's training setup)
    # DRAEM trains 700 epochs; over the paper's 11,988 normal patches at batch 8 that is
    # about 1.05M steps. The paper does not state its epoch count.
    config.train.num_steps = 1_048_950
    config.train.log_every = 100
    config.train.image_summary_every = 5000
    config.train.eval_every = 10000
    config.train.checkpoint_every = 5000
    config.eval.score_filter_size = 0  # DRAEM's 21 px at 256 scaled to the patch: 43 px at 512
    return config
