"""The training-free high-pass reference (xray_flax/detectors/highpass) on the default data.

Every knob is the detector's default (sigma 4, 5-px window, measured on the hard simulated set); patches as the
CPU default run, so the two compare on the same tiles.
"""

from xray_flax.config_base import get_base_config


def get_config():
    config = get_base_config("highpass")
    config.data.patch_size = 64
    config.data.stride = 64
    config.train.batch_size = 32  # tiles per fitting batch
    config.eval.batch_size = 32
    return config
