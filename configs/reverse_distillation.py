"""Reverse Distillation (Deng & Li, CVPR 2022) with the paper's / anomalib's settings: a frozen
Wide-ResNet-50-2 encoder (layers 1-3), 256-px tiles, batch 16, Adam 0.005.

The encoder, OCBE, decoder, loss, map and optimiser are the detector's defaults
(xray_flax/detectors/reverse_distillation/config.py, each value with its source; docs/papers.md,
"The baselines"). The WRN50-2 weights cannot be downloaded here: pass a torchvision or timm
state dict with --config.backbone.weights=/path/wide_resnet50_2.pth (or .safetensors). The
paper used torchvision's V1 weights; anomalib uses timm's wide_resnet50_2.racm_in1k.

Point it at real scans: --config.data.source=scans --config.data.root=/path/to/scans
(docs/data.md). Tiles are 256 px, the side the paper and anomalib resize every image to; the
paper's benchmark fed its 512-px patches to anomalib, which resized them to 256 (our pipeline
tiles and does not resize: --config.data.patch_size=512 keeps the paper's field of view at
twice the resolution; the sides must be multiples of 32).
"""

from xray_flax.config_base import get_base_config


def get_config():
    config = get_base_config("reverse_distillation")
    config.data.patch_size = 256  # [paper, original code, anomalib: 256 x 256 input]
    config.data.stride = 256
    config.data.channels = 1  # grey X-rays, replicated to the encoder's RGB input
    config.train.batch_size = 16  # [paper, original code: batch 16]
    # [paper, original code: 200 epochs]. Over the paper's 11,988 normal patches at batch 16
    # that is 149,850 steps; set it from the number of training tiles of your data
    # (xray_flax.data.pipeline.count_training_tiles).
    config.train.num_steps = 149_850
    config.train.log_every = 50
    config.train.image_summary_every = 2000
    # About once per epoch of 11,988 patches (the loop keeps the best on val; the original code
    # evaluates every 10 epochs on the test set, which we do not copy).
    config.train.eval_every = 750
    config.train.checkpoint_every = 750
    config.eval.batch_size = 16
    return config
