"""The plain baseline of hidden-art extraction: the per-band difference normalise(grey(RGB)) - normalise(band)
(xray_flax/hidden_art/dissimilarity.py), training-free, on the simulated multispectral paintings."""

from xray_flax.hidden_art.config import get_hidden_config


def get_config():
    config = get_hidden_config("plain")
    config.model.normalisation = "zscore"  # per image and band [ours]
    # Map form (xray_flax/hidden_art/maps.py): the signed difference z(grey(RGB)) - z(band) of the
    # longest band. Measured on the validation paintings of simulation seed 0 (docs/results.md,
    # "Map forms"): AUROC 0.685; the reference's |difference| averaged over the bands: 0.468.
    config.model.sign = "signed"  # 'absolute': the reference's |z(band) - z(grey)|
    config.model.scale = "none"  # already z-scored per band
    config.model.combination = "longest"
    return config
