"""DRAEM (Zavrtanik et al., ICCV 2021) and the paper's model (Mezina et al. 2025): one detector.

A reconstructive sub-network learns to remove synthetic anomalies pasted into normal tiles,
and a discriminative sub-network segments them from cat(image, reconstruction). With
`model.reconstructive='nested_unet'`, `model.discriminative='unet'` and the paper's blend this
is the paper's model (configs/paper.py, configs/default.py); with DRAEM's own sub-networks
and blend it is DRAEM (configs/draem.py). The anomaly map is the softmax probability of the
anomalous class, so it is bounded: scores need no normalisation.

    network.py   the Draem module, its sub-networks by config name, DRAEM's own networks
    loss.py      lambda * (1 - SSIM) + L2 + focal
    steps.py     train step (synthesis inside), anomaly map, preview images
    config.py    the `model`, `loss`, `optim` and `synthesis` sections
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import ml_collections

from xray_flax.detectors.base import GRADIENT, Detector, init_module
from xray_flax.detectors.draem import network, steps
from xray_flax.optim import make_optimizer
from xray_flax.synthesis import SynthesisSpec, load_texture_bank


def build(config: ml_collections.ConfigDict) -> Detector:
    channels = config.data.channels
    model = network.build_model(config.model, channels)
    tx = make_optimizer(config.optim, config.train.num_steps)
    spec = SynthesisSpec.from_config(config.synthesis, channels)
    return Detector(
        name="draem",
        kind=GRADIENT,
        init=functools.partial(init_module, model=model),
        anomaly_map=functools.partial(steps.anomaly_map, model=model),
        size_multiple=network.size_multiple(config.model),
        bounded_map=True,
        metric_names=("loss", "ssim", "l2", "focal"),
        optimizer=tx,
        train_step=functools.partial(steps.train_step, model=model, tx=tx, spec=spec, loss_config=config.loss),
        make_aux=lambda: jnp.asarray(load_texture_bank(config.synthesis, config.data.patch_size, channels)),
        refresh_statistics=functools.partial(steps.refresh_statistics, model=model, spec=spec),
        preview=functools.partial(steps.preview, model=model, spec=spec),
    )
