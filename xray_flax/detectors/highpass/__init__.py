"""A training-free reference: local high-pass energy, z-scored on the normal training tiles.

    energy(x) = mean over a `window` x `window` box of |x - Gaussian(x, sigma)|, mean over channels
    map       = (energy - mu) / sd,   mu, sd fitted over every pixel of the clean training tiles

Paint losses, nails and foreign objects are local contrast; a score that knows nothing else
is the floor every learned detector has to beat (on realistic simulated X-rays it reached a
higher ROC-AUC than a briefly trained paper model, docs/results.md). It is also the smallest real
user of the loop's `fit` path: one pass, no optimiser, saved once. Filters use symmetric
(scipy 'reflect') padding so tile borders are not mistaken for edges; the values equal
scipy.ndimage.gaussian_filter / uniform_filter with mode='reflect' (tests/test_highpass.py).
Sources: [ours]; sigma 4 and window 5 chosen by a measurement on the hard simulated set
(docs/data.md, docs/results.md).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from xray_flax.detectors.base import FIT, Detector
from xray_flax.nn.filters import local_highpass_energy


def init(key: jax.Array, sample: jax.Array) -> dict:
    del key, sample
    return {"statistics": {"mean": jnp.zeros((), jnp.float32), "std": jnp.ones((), jnp.float32)}}


def anomaly_map(variables: dict, images: jax.Array, *, sigma: float, window: int, truncate: float) -> dict:
    energy = local_highpass_energy(images, sigma=sigma, window=window, truncate=truncate)
    stats = variables["statistics"]
    return {"map": (energy - stats["mean"]) / stats["std"]}


def _batch_moments(images, valid, *, sigma, window, truncate):
    energy = local_highpass_energy(images, sigma=sigma, window=window, truncate=truncate).astype(jnp.float32)
    weight = jnp.broadcast_to(valid[:, None, None], energy.shape)
    return jnp.sum(weight), jnp.sum(weight * energy), jnp.sum(weight * energy * energy)


def fit_init(variables: dict) -> dict:
    """Float64 pixel count, sum and sum of squares of the energy (host arrays, so resumable)."""
    del variables
    return {name: np.zeros((), np.float64) for name in ("count", "total", "total_sq")}


def fit_update(state: dict, variables: dict, batch: dict, *, moments) -> dict:
    del variables
    n, s, sq = (np.float64(v) for v in jax.device_get(moments(batch["image"], batch["valid"])))
    return {"count": state["count"] + n, "total": state["total"] + s, "total_sq": state["total_sq"] + sq}


def fit_finish(state: dict, variables: dict) -> dict:
    """Mean and standard deviation of the energy over every valid training pixel."""
    count = float(state["count"])
    if count == 0:
        raise ValueError("highpass: no training tiles to fit on")
    mean = float(state["total"]) / count
    std = float(np.sqrt(max(float(state["total_sq"]) / count - mean * mean, 0.0)))
    return {
        **variables,
        "statistics": {"mean": jnp.asarray(mean, jnp.float32), "std": jnp.asarray(max(std, 1e-12), jnp.float32)},
    }


def build(config: ml_collections.ConfigDict) -> Detector:
    options = dict(sigma=config.model.sigma, window=config.model.window, truncate=config.model.truncate)
    return Detector(
        name="highpass",
        kind=FIT,
        init=init,
        anomaly_map=functools.partial(anomaly_map, **options),
        fit_init=fit_init,
        fit_update=functools.partial(fit_update, moments=jax.jit(functools.partial(_batch_moments, **options))),
        fit_finish=fit_finish,
        fit_summary=lambda state: {"pixels": float(state["count"])},
    )
