"""The training-free raw-patch nearest-neighbour reference (xray_flax/detectors/patch_nn) on the
default data.

Every knob is the detector's default (7x7 windows at stride 2, 16,384-entry bank); patches as
the CPU default run, so it compares with the paper's model and the high-pass reference on the
same tiles.
"""

from xray_flax.config_base import get_base_config


def get_config():
    config = get_base_config("patch_nn")
    config.data.patch_size = 64
    config.data.stride = 64
    config.train.batch_size = 32  # tiles per fitting batch
    config.eval.batch_size = 32
    return config
