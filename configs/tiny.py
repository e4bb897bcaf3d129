"""A few-second config for tests: tiny widths, 32-pixel patches, a handful of steps.

`--config configs/tiny.py` is the DRAEM detector; `--config configs/tiny.py:NAME` any other
registered detector, shrunk by its own `config.shrink_for_tests`.
"""

from xray_flax import detectors
from xray_flax.config_base import get_base_config


def get_config(detector: str | None = None):
    detector = detector or "draem"
    config = get_base_config(detector)
    config.method = f"tiny {detector} (tests)"
    config.data.patch_size = 32
    config.data.stride = 32
    config.data.simulated.n_scans = 5
    config.data.simulated.height = 256
    config.data.simulated.width = 224
    config.train.num_steps = 6
    config.train.batch_size = 4
    config.train.log_every = 2
    config.train.image_summary_every = 6
    config.train.eval_every = 3
    config.train.checkpoint_every = 3
    config.eval.batch_size = 16
    config.eval.timing_batches = 3
    config.eval.timing_warmup_batches = 1
    detectors.config_module(detector).shrink_for_tests(config)
    return config
