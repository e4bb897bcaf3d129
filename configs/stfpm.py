"""STFPM (Wang et al. 2021) with anomalib's settings: ResNet-18 layers 1-3, 256 px, SGD 0.4.

Teacher: an ImageNet ResNet-18, frozen; student: the same network from scratch (docs/papers.md, "The baselines";
xray_flax/detectors/stfpm). The ResNet-18 weights cannot be downloaded here:
pass a torchvision or timm state dict with --config.backbone.weights=/path/resnet18.pth (or
.safetensors). anomalib uses timm's resnet18.a1_in1k; the paper torchvision's V1 weights.

Point it at real scans: --config.data.source=scans --config.data.root=/path/to/scans
(docs/data.md). Tiles are 256 px, the side anomalib resizes every image to; the paper's
benchmark fed its 512-px patches to anomalib, which resized them to 256 (our pipeline tiles
and does not resize: --config.data.patch_size=512 keeps the paper's field of view at twice
the resolution).
"""

from xray_flax.config_base import get_base_config


def get_config():
    config = get_base_config("stfpm")
    config.data.patch_size = 256  # [anomalib, paper: 256 x 256 input]
    config.data.stride = 256
    config.data.channels = 1  # grey X-rays, replicated to the teacher's RGB input
    config.train.batch_size = 32  # [paper, anomalib: 32]
    # [paper, anomalib: 100 epochs]. Over the paper's 11,988 normal patches at batch 32 that
    # is 37,463 steps; set it from the number of training tiles of your data
    # (xray_flax.data.pipeline.count_training_tiles).
    config.train.num_steps = 37_500
    config.train.log_every = 50
    config.train.image_summary_every = 2000
    config.train.eval_every = 375  # about once per epoch of 11,988 patches (the loop keeps the best on val)
    config.train.checkpoint_every = 375
    config.eval.batch_size = 32
    return config
