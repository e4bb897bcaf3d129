"""SuperSimpleNet (Rolih et al., ICPR 2024) with the paper's settings: WRN50-2 layers 2-3, 256 px,
AdamW, 300 epochs at batch 32.

Settings: docs/papers.md, "SuperSimpleNet"; xray_flax/detectors/supersimplenet. The
Wide-ResNet-50-2 weights cannot be downloaded here: pass torchvision's V1 state dict
(IMAGENET1K_V1; the references insist on V1, whose feature scale the noise std 0.015 was tuned
for) with --config.backbone.weights=/path/wide_resnet50_2.pth (or .safetensors).

Unsupervised, as the paper's MVTec runs. With labelled anomalies
(--config.train.labelled_anomalies=N, xray_flax/data/labelled.py) use the paper's supervised
settings too: --config.model.stop_grad=False --config.optim.grad_clip_norm=1
--config.anomaly_generator.threshold=0.6 [original code run_sup; anomalib].

Point it at real scans: --config.data.source=scans --config.data.root=/path/to/scans
(docs/data.md). Tiles are 256 px, the references' input side for MVTec (our pipeline tiles and
does not resize).
"""

from xray_flax.config_base import get_base_config


def get_config():
    config = get_base_config("supersimplenet")  # WRN50-2 layer2 + layer3, the ICPR model [paper]
    config.data.patch_size = 256  # [paper, anomalib, original code: 256 x 256 input on MVTec]
    config.data.stride = 256
    config.data.channels = 1  # grey X-rays, replicated to the backbone's RGB input [ours]
    config.train.batch_size = 32  # [paper, anomalib README, original code: 32]
    # [paper, anomalib README, original code: 300 epochs]. Over the 11,988 normal patches of
    # Mezina et al. at batch 32 an epoch is 375 steps; set it from the number of training tiles
    # of your data (xray_flax.data.pipeline.count_training_tiles). The learning-rate milestones
    # follow (80 % and 90 % of the steps).
    config.train.num_steps = 300 * 375
    config.train.log_every = 50
    config.train.image_summary_every = 3750
    # [original code: evaluates every 4 epochs (on the test set); ours: every 4 epochs on
    # validation, which picks the best checkpoint]
    config.train.eval_every = 4 * 375
    config.train.checkpoint_every = 375
    config.eval.batch_size = 32
    return config
