"""FastFlow (Yu et al. 2021) with anomalib's settings: ResNet-18 layers 1-3, 256-px tiles, Adam 1e-3.

The head, loss, map and optimiser are the detector's defaults (xray_flax/detectors/fastflow,
each value with its source; docs/papers.md, "The baselines"): a trainable LayerNorm and 8
AllInOne flow steps per tap (3x3 / 1x1 subnets, hidden ratio 1.0, clamp 2), loss = sum over
taps of the per-image negative log-likelihood, map = mean over taps of -exp(-0.5 mean_c z^2)
upsampled, image score = its maximum, Adam lr 1e-3 with coupled weight decay 1e-5. The
ResNet-18 weights cannot be downloaded here: pass a torchvision or timm state dict with
--config.backbone.weights=/path/resnet18.pth (or .safetensors). anomalib uses timm's
resnet18.a1_in1k; the paper torchvision's.

Point it at real scans: --config.data.source=scans --config.data.root=/path/to/scans
(docs/data.md). Tiles are 256 px, the side anomalib resizes every image to; the X-ray paper's
benchmark fed its 512-px patches to anomalib, which resized them to 256 (our pipeline tiles and
does not resize: --config.data.patch_size=512 keeps the paper's field of view at twice the
resolution; sides must be multiples of 16, and the LayerNorm's affine follows the tile size).
"""

from xray_flax.config_base import get_base_config


def get_config():
    config = get_base_config("fastflow")
    config.data.patch_size = 256  # [anomalib: 256 x 256 input]
    config.data.stride = 256
    config.data.channels = 1  # grey X-rays, replicated to the backbone's RGB input
    config.train.batch_size = 32  # [anomalib: the datamodules' train_batch_size 32]
    # 10 epochs of the paper's 11,988 normal patches at batch 32 (375 steps each). [ours:
    # image AUROC peaks after 5-10 epochs in several reproductions and drops later
    # (docs/papers.md, FastFlow); the loop keeps the best checkpoint on val]. Set it from the
    # number of training tiles of your data (xray_flax.data.pipeline.count_training_tiles).
    config.train.num_steps = 3_750
    config.train.log_every = 50
    config.train.image_summary_every = 1000
    config.train.eval_every = 375  # once per epoch of 11,988 patches
    config.train.checkpoint_every = 375
    config.eval.batch_size = 32
    return config
