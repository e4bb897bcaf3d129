"""The 2024 ArtExtract Siamese dissimilarity tool with a stated training objective
(xray_flax/hidden_art/siamese_conv.py: shared residual conv stack, per-band |difference|)."""

from xray_flax.hidden_art.config import get_hidden_config


def get_config():
    config = get_hidden_config("siamese_conv")
    config.model.margin = 1.0  # contrastive margin [ArtExtract 2025 loss]
    config.model.patch = 16  # block size of the patch-level contrast [ours]
    config.model.crop = 0
    config.model.threshold = 0.5
    config.model.reference_quantile = 0.99
    config.train.num_steps = 300
    config.train.crop = 96
    return config
