"""A few-second config for tests: tiny widths, 32-pixel patches, a handful of steps."""

from configs.base import get_base_config


def get_config():
    config = get_base_config()
    config.method = "tiny (tests)"
    config.data.patch_size = 32
    config.data.stride = 32
    config.data.simulated.n_scans = 5
    config.data.simulated.height = 256
    config.data.simulated.width = 224
    config.model.width_multiplier = 0.125  # filters 4..64 (UNet++), 8..64 (U-Net)
    config.model.nested_unet_levels = 4
    config.model.unet_levels = 3
    config.train.num_steps = 6
    config.train.batch_size = 4
    config.train.log_every = 2
    config.train.image_summary_every = 6
    config.train.eval_every = 3
    config.train.checkpoint_every = 3
    config.optim.learning_rate = 1e-3
    config.eval.batch_size = 16
    config.eval.timing_batches = 3
    config.eval.timing_warmup_batches = 1
    return config
