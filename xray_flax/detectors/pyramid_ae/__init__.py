"""A pyramidal reconstruction autoencoder, after Mishra, Piciarelli and Foresti (ICPR-W 2021).

An encoder-decoder is trained on normal tiles only (no synthetic anomalies) to reconstruct
them; representations of the last encoder map are aggregated over several pyramid levels;
what it cannot reconstruct is anomalous. The map is a reconstruction error, not a
probability (`bounded_map=False`): the shared loop fits a score normalisation on normal
validation tiles.

    network.py  encoder, pyramid pooling, bottleneck, decoder, sigmoid output
    loss.py     MSE + ssim_weight * (1 - SSIM); the per-level error map
    steps.py    train step, anomaly map, preview images
    config.py   the `model`, `loss` and `optim` sections, each knob with its source

What is whose. The ICPR-W paper's text could not be read (docs/papers.md, "The pyramidal
autoencoder"): only its abstract, its protocol (one-class MNIST / Fashion-MNIST, AUROC per
class; MVTec AD) and the authors' closely related PIADE code (IJNS 2020, MIT licence, same
abstract). So:

* from PIADE: the idea of pyramid-pooling branches on the last encoder map, each an adaptive
  average pool, a 1x1 conv without bias to C/1, C/2, C/4, C/8 channels, BN and ReLU; training
  on normal data only with MSE - SSIM (weight 1, window 11, sigma 1.5); Adam 1e-3 with
  weight decay 1e-3 as torch's coupled L2 (`optim.weight_decay_mode='coupled'`), constant
  learning rate; PyTorch's default initialisation; one model per class in the one-class
  protocol; an image score from the reconstruction error of the whole image ('mean').
* from PSPNet (Zhao et al. 2017), which PIADE's PyramidPool is taken from: branches pooled to
  different grid sizes (1, 2, 3, 6), upsampled bilinearly and concatenated with the map. In
  PIADE's code all four branches pool to 1x1 and only their widths differ; pyramid_bins =
  (1, 1, 1, 1) reproduces that.
* ours: the encoder (DoubleConv stages with max-pools, not PIADE's ImageNet ResNet-50 with
  squeeze-excitation: no pretrained weights offline, and 25 M parameters do not train on 2
  CPU cores); the 1x1 bottleneck and the conv decoder mirroring the encoder (PIADE routes the
  branches through capsules, 3 iterations to 2 capsules of 64, then linear layers
  64->128->512->8192 concatenated with the encoder map and transposed convs); a sigmoid
  output in [0, 1] (PIADE: tanh); grey or RGB input; and the anomaly map, the per-pixel
  squared error of the image and of its Gaussian-pyramid levels against the
  reconstruction's, each resized back to the tile and averaged (loss.py; PIADE scores
  whole images by their loss and has no map). Also dropped: the VGG perceptual term of
  PIADE's loss, because it needs ImageNet-pretrained VGG weights, which cannot be downloaded
  here, and ImageNet features mean little on single-channel radiographs; and the capsules,
  which turn the map into a global code with no spatial layout left for a per-pixel map.
"""

from __future__ import annotations

import functools

import ml_collections
import optax

from xray_flax import errors
from xray_flax.detectors.base import GRADIENT, Detector, init_module
from xray_flax.detectors.pyramid_ae import steps
from xray_flax.detectors.pyramid_ae.network import PyramidAutoencoder, size_multiple
from xray_flax.nn.precision import compute_dtype
from xray_flax.optim import make_optimizer

WEIGHT_DECAY_MODES = ("coupled", "decoupled")


def build_model(model_config: ml_collections.ConfigDict, channels: int) -> PyramidAutoencoder:
    return PyramidAutoencoder(
        out_channels=channels,
        widths=tuple(int(w) for w in model_config.widths),
        bins=tuple(int(b) for b in model_config.pyramid_bins),
        reductions=tuple(int(r) for r in model_config.pyramid_reductions),
        latent_channels=int(model_config.latent_channels),
        init_scheme=model_config.init_scheme,
        dtype=compute_dtype(model_config.compute_dtype),
    )


def make_pyramid_optimizer(optim: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
    """The shared Adam with its schedule; 'coupled' weight decay adds weight_decay * params to
    the gradient first (torch.optim.Adam's weight_decay, what PIADE trains with)."""
    mode = optim.get("weight_decay_mode", "decoupled")
    if mode not in WEIGHT_DECAY_MODES:
        raise errors.ConfigError(f"config.optim.weight_decay_mode={mode!r}; expected one of {WEIGHT_DECAY_MODES}")
    weight_decay = float(optim.get("weight_decay", 0.0))
    if mode == "decoupled" or weight_decay == 0:
        return make_optimizer(optim, num_steps)
    plain = ml_collections.ConfigDict(optim.to_dict())
    plain.weight_decay = 0.0
    return optax.chain(optax.add_decayed_weights(weight_decay), make_optimizer(plain, num_steps))


def build(config: ml_collections.ConfigDict) -> Detector:
    model_config = config.model
    if len(model_config.pyramid_bins) != len(model_config.pyramid_reductions):
        raise errors.ConfigError(
            f"config.model.pyramid_bins {tuple(model_config.pyramid_bins)} and pyramid_reductions "
            f"{tuple(model_config.pyramid_reductions)} must have the same length (one entry per branch)"
        )
    if model_config.image_score not in steps.IMAGE_SCORES:
        raise errors.ConfigError(
            f"config.model.image_score={model_config.image_score!r}; expected one of {steps.IMAGE_SCORES}"
        )
    if int(model_config.map_levels) < 1:
        raise errors.ConfigError(f"config.model.map_levels must be >= 1, got {model_config.map_levels}")
    model = build_model(model_config, config.data.channels)
    tx = make_pyramid_optimizer(config.optim, config.train.num_steps)
    levels = int(model_config.map_levels)
    return Detector(
        name="pyramid_ae",
        kind=GRADIENT,
        init=functools.partial(init_module, model=model),
        anomaly_map=functools.partial(
            steps.anomaly_map, model=model, levels=levels, image_score=model_config.image_score
        ),
        # Encoder max-pools halve exactly; the map's pyramid levels halve exactly too.
        size_multiple=max(size_multiple(len(model_config.widths)), 2 ** (levels - 1)),
        bounded_map=False,
        metric_names=("loss", "mse", "ssim"),
        optimizer=tx,
        train_step=functools.partial(steps.train_step, model=model, tx=tx, loss_config=config.loss),
        preview=functools.partial(steps.preview, model=model, levels=levels),
    )
