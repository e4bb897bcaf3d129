"""The plain baseline of hidden-art extraction: per-band |normalise(band) - normalise(grey(RGB))|
(xray_flax/hidden_art/dissimilarity.py), training-free, on the simulated multispectral paintings."""

from xray_flax.hidden_art.config import get_hidden_config


def get_config():
    config = get_hidden_config("plain")
    config.model.normalisation = "zscore"  # per image and band [ours]
    return config
