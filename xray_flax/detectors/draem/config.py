"""Config sections owned by the DRAEM detector: `model`, `loss`, `optim`, `synthesis`.

Sources: [paper] Mezina, Burget, Kotrlý, npj Heritage Science 2025 (docs/papers.md, "The X-ray paper");
[DRAEM] Zavrtanik et al., ICCV 2021 and its code VitjanZ/DRAEM; [ours] this project's choice.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from xray_flax.synthesis import config as synthesis_config


def defaults() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.method = "DRAEM + Nested U-Net (Mezina et al. 2025)"  # name shown in reports
    config.paper_row = "Proposed"  # Table 2 of the paper

    model = ml_collections.ConfigDict()
    model.reconstructive = "nested_unet"  # 'nested_unet' [paper] | 'draem' (DRAEM's encoder-decoder)
    model.discriminative = "unet"  # 'unet' [paper] | 'draem' (DRAEM's 6-level U-Net)
    model.nested_unet_levels = 5  # [paper] 5 levels, filters 32/64/128/256/512
    model.unet_levels = 4  # [paper] 4 levels 64/128/256/512 (+ bottleneck)
    model.width_multiplier = 1.0  # scales every width; < 1 makes CPU-sized models [ours]
    model.deep_supervision = False  # UNet++ deep supervision heads; [paper] off
    model.align_corners = True  # bilinear upsampling as in the reference UNet++ code
    model.init_scheme = "draem"  # [DRAEM] conv N(0, 0.02), BN scale N(1, 0.02) (weights_init)
    model.compute_dtype = "float32"  # 'bfloat16' computes convs in bf16, parameters stay fp32
    config.model = model

    loss = ml_collections.ConfigDict()
    loss.ssim_weight = 2.0  # lambda in lambda*(1-SSIM) + L2; [paper] and [DRAEM]: 2
    loss.ssim_window = 11  # Gaussian window; [DRAEM] 11
    loss.ssim_sigma = 1.5  # [DRAEM] 1.5
    loss.focal_gamma = 2.0  # [paper] and [DRAEM]: 2
    loss.focal_alpha = config_dict.placeholder(float)  # None = no class weighting [DRAEM]
    config.loss = loss

    optim = ml_collections.ConfigDict()
    optim.learning_rate = 1e-4  # [paper] and [DRAEM]: Adam 1e-4
    optim.b1 = 0.9
    optim.b2 = 0.999
    optim.weight_decay = 0.0  # [DRAEM] none
    optim.milestones = (0.8, 0.9)  # [DRAEM code] lr x decay_factor at 80% and 90% of the run
    optim.decay_factor = 0.2  # [DRAEM code] gamma 0.2
    config.optim = optim

    config.synthesis = synthesis_config.defaults()
    return config


def shrink_for_tests(config: ml_collections.ConfigDict) -> None:
    """Tiny widths and depths for the CPU test config (32-pixel patches)."""
    config.model.width_multiplier = 0.125  # filters 4..64 (UNet++), 8..64 (U-Net)
    config.model.nested_unet_levels = 4
    config.model.unet_levels = 3
    config.optim.learning_rate = 1e-3
