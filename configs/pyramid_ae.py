"""The pyramidal autoencoder (xray_flax/detectors/pyramid_ae) on the default simulated X-ray scans.

Same data and tiles as configs/default.py (64-px patches of the SIMULATED radiographs,
xray_flax/data/simulate.py), so the two detectors compare on the same test tiles. Widths are
shrunk to 16..128 (428 k parameters; the detector's default 32..256 is 1.6 M, 3x slower per
step) so that the run trains, evaluates and predicts on 2 CPU cores in a few minutes: about
4 steps of 8 tiles per second, and 4 min 12 s for the whole command, measured on the shared
2-core VM on 2026-12-01 (docs/results.md). Everything else is the detector's default:
MSE + SSIM, Adam 1e-3 with coupled weight decay 1e-3 and a constant rate as the authors'
related code, an anomaly map averaged over 3 Gaussian-pyramid levels, the shared filtered-max
image score.
"""

from xray_flax.config_base import get_base_config


def get_config():
    config = get_base_config("pyramid_ae")
    config.method = "Pyramidal autoencoder, CPU default"
    config.data.patch_size = 64
    config.data.stride = 64
    config.model.widths = (16, 32, 64, 128)  # last encoder map 8x8x128 at 64 px
    config.model.latent_channels = 32  # bottleneck 8x8x32 for a 64x64 tile
    config.train.num_steps = 600
    config.train.batch_size = 8
    config.train.log_every = 50
    config.train.image_summary_every = 300
    config.train.eval_every = 150
    config.train.checkpoint_every = 150
    config.eval.batch_size = 32
    return config
