"""The default CPU run: the paper's model, shrunk, on the embedded simulated X-ray scans.

Trains and evaluates on 2 CPU cores in a few minutes. The data are SIMULATED radiographs of
paintings (xray_flax/data/simulate.py), generated on first use; point the config at real
scans with --config.data.source=scans --config.data.root=DIR (docs/data.md).
"""

from xray_flax.config_base import get_base_config


def get_config():
    config = get_base_config()
    config.method = "DRAEM + Nested U-Net, CPU default"
    config.data.patch_size = 64
    config.data.stride = 64
    config.model.width_multiplier = 0.25  # filters 8..128 (UNet++), 16..128 (U-Net)
    config.train.num_steps = 400
    config.train.batch_size = 8
    config.train.log_every = 20
    config.train.image_summary_every = 200
    config.train.eval_every = 100
    config.train.checkpoint_every = 100
    config.optim.learning_rate = 1e-3  # short run: 10x the paper's rate converges in minutes
    config.eval.batch_size = 32
    return config
