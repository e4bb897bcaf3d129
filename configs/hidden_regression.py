"""Visible-to-band regression residual (Blazek et al. 2017; xray_flax/hidden_art/regression.py):
a per-pixel network predicts each band from the RGB, the residual is the hidden content."""

from xray_flax.hidden_art.config import get_hidden_config


def get_config():
    config = get_hidden_config("regression")
    config.model.hidden = (64, 64)  # 1x1-conv MLP widths [ours: small, per pixel]
    config.model.pixels_per_step = 16_384  # random pixels per step [ours]
    # L1 fits the median colour-to-band relation, which the minority of hidden pixels does not move
    # (measured in development: residual outside the hidden region 0.07 vs 0.11 band std with L2).
    # [Blazek et al.: least squares; ours: l1]
    config.model.loss = "l1"
    # Map form (xray_flax/hidden_art/maps.py): the signed residual prediction - band of the longest
    # band over its MAD noise scale (docs/results.md, "Hidden-art extraction": chosen on simulation
    # seed 0's validation paintings; the first version's |residual| mean over bands: 0.573).
    config.model.sign = "signed"
    config.model.scale = "noise"
    config.model.combination = "longest"
    # Test-time training (xray_flax/hidden_art/regression.py): Adam steps on the analysed painting's
    # own pixels before predicting, from the trained network; 0 = off. Measured on seed 0's validation
    # paintings: 0 steps AUROC 0.897, 200 steps 0.910 (docs/results.md). [ours]
    config.model.test_time_steps = 200
    config.model.test_time_learning_rate = 1e-3
    config.train.num_steps = 2000  # 400 steps: AUROC 0.872, 2,000: 0.897 (docs/results.md)
    config.train.crop = 96
    return config
