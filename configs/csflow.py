"""CS-Flow (Rudolph et al., WACV 2022) with the original code's settings: EfficientNet-B5 stage-6
features of 768-px tiles at 3 scales, 4 coupling blocks, Adam 2e-4, batch 16, 240 epochs.

The flow, loss, map and optimiser are the detector's defaults (xray_flax/detectors/csflow,
each value with its source; docs/papers.md, "The baselines"): 304-channel maps 24^2, 12^2, 6^2;
cross convolutions with 1024 hidden channels and kernels 3, 3, 3, 5; clamp 3; loss
mean_b(0.5 |z|^2 - log|det J|) / D; Adam lr 2e-4, eps 1e-4, coupled weight decay 1e-5,
gradient norm clipped to 1; image score mean(z^2 / 2). 275 M trainable parameters: a GPU
job. The B5 weights cannot be downloaded here: pass torchvision's efficientnet_b5 state dict
(IMAGENET1K_V1, what anomalib loads) with --config.backbone.weights=/path/efficientnet_b5.pth
(or .safetensors).

Point it at real scans: --config.data.source=scans --config.data.root=/path/to/scans
(docs/data.md). Tiles are 768 px [original img_size, anomalib's README benchmark]; sides must
be multiples of 128 (stride 32 at the third scale), e.g. --config.data.patch_size=512 for
the X-ray paper's patches at their own resolution (maps 16^2, 8^2, 4^2).
"""

from xray_flax.config_base import get_base_config


def get_config():
    config = get_base_config("csflow")
    config.data.patch_size = 768  # [original: img_size (768, 768); anomalib README: 768]
    config.data.stride = 768
    config.data.channels = 1  # grey X-rays, replicated to the backbone's RGB input
    config.train.batch_size = 16  # [original: batch_size 16]
    # [original: meta_epochs 4 x sub_epochs 60 = 240 epochs]. Over the paper's 11,988 normal
    # patches at batch 16 that is 179,820 steps; set it from the number of training tiles of
    # your data (xray_flax.data.pipeline.count_training_tiles).
    config.train.num_steps = 179_820
    config.train.log_every = 100
    config.train.image_summary_every = 5000
    # [original: evaluates every 60 epochs on the test set, which we do not copy]; here once
    # every 10 epochs of 11,988 patches, on val (the loop keeps the best).
    config.train.eval_every = 7_500
    config.train.checkpoint_every = 7_500
    config.eval.batch_size = 16
    return config
