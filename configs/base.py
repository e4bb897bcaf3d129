"""The full config tree, shared by every experiment config in this folder.

Each package documents its own section (`xray_flax/data/config.py`,
`xray_flax/anomaly/config.py`, `xray_flax/evaluation_config.py`); the sections for the
model, losses, optimiser, loop and mesh live here. Experiment configs start from
`get_base_config()` and override what they change, with the source of each value.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from xray_flax import evaluation_config
from xray_flax.anomaly import config as anomaly_config
from xray_flax.data import config as data_config


def get_base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.method = "DRAEM + Nested U-Net (Mezina et al. 2025)"  # name shown in reports
    config.seed = 0  # initialisation and synthetic-anomaly keys; data order has its own seeds

    config.data = data_config.defaults()
    config.anomaly = anomaly_config.defaults()
    config.eval = evaluation_config.defaults()

    model = ml_collections.ConfigDict()
    model.name = "draem"  # detector family (models/registry.py)
    model.reconstructive = "nested_unet"  # 'nested_unet' (paper) | 'draem' (DRAEM's encoder-decoder)
    model.discriminative = "unet"  # 'unet' (paper) | 'draem' (DRAEM's 6-level U-Net)
    model.nested_unet_levels = 5  # paper: 5 levels, filters 32/64/128/256/512
    model.unet_levels = 4  # paper: 4 levels 64/128/256/512 (+ bottleneck)
    model.width_multiplier = 1.0  # scales every width; < 1 makes CPU-sized models
    model.deep_supervision = False  # UNet++ deep supervision heads; paper: off
    model.align_corners = True  # bilinear upsampling as in the reference UNet++ code
    model.init_scheme = "draem"  # conv N(0, 0.02), BN scale N(1, 0.02) (DRAEM's weights_init)
    model.compute_dtype = "float32"  # 'bfloat16' computes convs in bf16, parameters stay fp32
    config.model = model

    loss = ml_collections.ConfigDict()
    loss.ssim_weight = 2.0  # lambda in lambda*(1-SSIM) + L2; paper and DRAEM: 2
    loss.ssim_window = 11  # Gaussian window; DRAEM: 11
    loss.ssim_sigma = 1.5  # DRAEM: 1.5
    loss.focal_gamma = 2.0  # paper and DRAEM: 2
    loss.focal_alpha = config_dict.placeholder(float)  # None = no class weighting (DRAEM)
    config.loss = loss

    optim = ml_collections.ConfigDict()
    optim.learning_rate = 1e-4  # paper and DRAEM: Adam 1e-4
    optim.b1 = 0.9
    optim.b2 = 0.999
    optim.milestones = (0.8, 0.9)  # DRAEM code: lr x decay_factor at 80% and 90% of the run
    optim.decay_factor = 0.2  # DRAEM code: gamma 0.2
    config.optim = optim

    train = ml_collections.ConfigDict()
    train.num_steps = 1000
    train.batch_size = 8  # global batch (split over devices and processes); DRAEM: 8
    train.log_every = 50  # progress line + TensorBoard scalars
    train.image_summary_every = 500  # TensorBoard images (input, synthetic, reconstruction, map); 0 = off
    train.eval_every = 500  # validation ROC-AUC -> best checkpoint
    train.checkpoint_every = 500  # latest checkpoint for resuming
    train.keep_checkpoints = 3  # latest checkpoints kept
    # Stop this run after this step (with a checkpoint) and resume later with the same
    # command, e.g. to fit a long job into time-limited allocations.
    train.halt_after_steps = config_dict.placeholder(int)
    # After training, whole-scan heatmaps and HTML reports of this many test scans
    # (<workdir>/predictions); 0 = none.
    train.predict_test_scans = 1
    config.train = train

    mesh = ml_collections.ConfigDict()
    mesh.data = -1  # devices on the data-parallel axis; -1 = all devices of all processes
    config.mesh = mesh
    return config
