"""CFA (Lee et al. 2022) with anomalib's settings: WRN50-2 layers 1-3, 256 px, AdamW amsgrad.

Settings: docs/papers.md, "The baselines"; xray_flax/detectors/cfa. The Wide-ResNet-50-2 weights cannot
be downloaded here: pass a torchvision or timm state dict with
--config.backbone.weights=/path/wide_resnet50_2.pth (anomalib's CFA loads torchvision's
DEFAULT weights, IMAGENET1K_V2; the paper the V1 weights, 78.47 % top-1).

Point it at real scans: --config.data.source=scans --config.data.root=/path/to/scans
(docs/data.md). Tiles are 256 px, anomalib's input side (the original code resizes to 256
and centre-crops 224; our pipeline tiles and does not resize).
"""

from xray_flax.config_base import get_base_config


def get_config():
    config = get_base_config("cfa")
    config.data.patch_size = 256  # [anomalib: 256 x 256 input]
    config.data.stride = 256
    config.data.channels = 1  # grey X-rays, replicated to the backbone's RGB input
    config.train.batch_size = 4  # [anomalib, original code: 4]
    # One pass that builds the memory bank, then 30 epochs [anomalib, original code]. Over
    # the paper's 11,988 normal patches at batch 4 an epoch is 2,997 steps; set both from
    # the number of training tiles of your data (xray_flax.data.pipeline.count_training_tiles):
    # memory_bank_steps = floor(tiles / batch), num_steps = memory_bank_steps + 30 epochs.
    config.model.memory_bank_steps = 2_997
    config.train.num_steps = 2_997 + 30 * 2_997
    config.train.log_every = 100
    config.train.image_summary_every = 6000
    config.train.eval_every = 2_997  # once per epoch; the best checkpoint is picked on validation only
    config.train.checkpoint_every = 2_997
    config.eval.batch_size = 32
    return config
