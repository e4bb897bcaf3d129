"""The 2024 ArtExtract Siamese dissimilarity tool with a contrastive objective
(xray_flax/hidden_art/siamese_conv.py: shared residual conv stack, per-band |difference|).

Kept to compare, and what it is: the objective rewards the RGB and band branches for agreeing, so
the shared stack learns to discard what differs, the hidden layer; its map is at chance level on
the simulated paintings (docs/results.md, "Hidden-art extraction"). The localising form of the
same tool is configs/hidden_siamese_conv.py (the asymmetric predictor).
"""

from xray_flax.hidden_art.config import get_hidden_config


def get_config():
    config = get_hidden_config("siamese_conv")
    config.config_name = "hidden_siamese_conv_contrastive"
    config.model.objective = "contrastive"
    config.model.margin = 1.0  # contrastive margin [ArtExtract 2025 loss]
    config.model.patch = 16  # block size of the patch-level contrast [ours]
    config.model.crop = 0
    config.model.threshold = 0.5
    config.model.reference_quantile = 0.99
    config.train.num_steps = 300
    config.train.crop = 96
    return config
