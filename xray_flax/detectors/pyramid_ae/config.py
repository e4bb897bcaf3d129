"""Config sections owned by the pyramidal autoencoder: `model`, `loss`, `optim`.

Sources: [PIADE] the authors' related code (Mishra, Piciarelli, Foresti; pankajmishra000/PIADE,
docs/papers.md, "The pyramidal autoencoder"); [PSPNet] Zhao et al., CVPR 2017, whose pyramid pooling PIADE's
branches come from; [ours] this project's choice. The ICPR-W 2021 paper gives no setting we
can read, so none is attributed to it.
"""

from __future__ import annotations

import ml_collections


def defaults() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.method = "Pyramidal autoencoder (after Mishra et al. 2021)"  # name shown in reports

    model = ml_collections.ConfigDict()
    # Encoder stage widths, one DoubleConv per stage, a 2x2 max-pool between stages; the
    # decoder mirrors them. [ours: PIADE's encoder is an ImageNet ResNet-50, not available
    # offline and far too large for the CPU runs]
    model.widths = (32, 64, 128, 256)
    # Grid sides of the pyramid-pooling branches on the last encoder map. [PSPNet: 1, 2, 3, 6;
    # PIADE pools all four branches to 1x1, which (1, 1, 1, 1) reproduces]
    model.pyramid_bins = (1, 2, 3, 6)
    # Each branch's 1x1 conv has C // reduction channels, C = widths[-1]. [PIADE: C/1..C/8]
    model.pyramid_reductions = (1, 2, 4, 8)
    # Channels of the 1x1 bottleneck after the concatenation. [ours: PIADE's bottleneck is 2
    # capsules of 64, dropped with the capsules]
    model.latent_channels = 32
    # Gaussian-pyramid levels of the anomaly map (1 = the plain per-pixel squared error). [ours]
    model.map_levels = 3
    # Image score: 'max' = the shared max of the mean-filtered map (localised defects, the X-ray
    # case); 'mean' = the mean of the map over the tile, like PIADE's per-image loss score
    # (whole-image anomalies, the one-class benchmarks). [ours]
    model.image_score = "max"
    # 'default' = PyTorch's default init, which PIADE ends up with (its initialize_weights is
    # guarded by `test == 'False'` on a bool and never runs); 'draem' = N(0, 0.02). [PIADE]
    model.init_scheme = "default"
    model.compute_dtype = "float32"  # 'bfloat16' computes convs in bf16, parameters stay fp32
    config.model = model

    loss = ml_collections.ConfigDict()
    # loss = MSE + ssim_weight * (1 - SSIM). [PIADE: MSE - 1.0 * SSIM (+ a VGG perceptual term,
    # dropped); 1 - SSIM differs from -SSIM by a constant only]
    loss.ssim_weight = 1.0
    loss.ssim_window = 11  # [PIADE: pytorch_ssim's default window 11, sigma 1.5]
    loss.ssim_sigma = 1.5
    config.loss = loss

    optim = ml_collections.ConfigDict()
    optim.learning_rate = 1e-3  # [PIADE: Adam lr 1e-3]
    optim.b1 = 0.9  # [PIADE: torch Adam defaults]
    optim.b2 = 0.999
    optim.weight_decay = 1e-3  # [PIADE: Adam weight_decay 1e-3]
    # 'coupled': weight_decay * params added to the gradient before Adam, which is what
    # torch.optim.Adam(weight_decay=...) does [PIADE]; 'decoupled': AdamW (the shared
    # make_optimizer's behaviour for weight_decay > 0).
    optim.weight_decay_mode = "coupled"
    optim.milestones = ()  # [PIADE: constant learning rate]
    optim.decay_factor = 0.2  # used only with milestones (as the shared make_optimizer)
    config.optim = optim
    return config


def shrink_for_tests(config: ml_collections.ConfigDict) -> None:
    """Tiny widths for the CPU test config (32-pixel patches: last encoder map 8x8)."""
    config.model.widths = (4, 8, 16)
    config.model.pyramid_bins = (1, 2)
    config.model.pyramid_reductions = (1, 2)
    config.model.latent_channels = 8
