"""The 2024 ArtExtract Siamese tool as an asymmetric predictor (xray_flax/hidden_art/siamese_conv.py:
a trainable RGB branch predicts the bands, the band branch is fixed; signed residual)."""

from xray_flax.hidden_art.config import get_hidden_config


def get_config():
    config = get_hidden_config("siamese_conv")
    # The 2024 tool made to localise (docs/hidden_art.md): the asymmetric predictor, the trainable RGB branch
    # predicts every band, the band branch is a fixed z-score under stop-gradient, map = the signed
    # residual of the longest band. The contrastive objective: configs/hidden_siamese_conv_contrastive.py.
    config.model.objective = "predictor"
    config.model.sign = "signed"
    config.model.scale = "noise"
    config.model.combination = "longest"
    config.model.margin = 1.0  # contrastive margin [ArtExtract 2025 loss]
    config.model.patch = 16  # block size of the patch-level contrast [ours]
    config.model.crop = 0
    config.model.threshold = 0.5
    config.model.reference_quantile = 0.99
    config.train.num_steps = 1000  # [ours: the predictor's L1 loss still falls at 300]
    config.train.crop = 96
    return config
