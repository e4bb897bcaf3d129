"""The high-pass reference detector: its filters equal scipy's, its fit the NumPy moments."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from configs import tiny
from xray_flax import detectors
from xray_flax.detectors.base import run_fit
from xray_flax.nn import filters


def test_filters_equal_scipy_reflect_mode():
    x = np.random.default_rng(0).random((2, 40, 36, 3)).astype(np.float32)
    got = np.asarray(filters.gaussian_reflect(jnp.asarray(x), 4.0))
    want = np.stack([scipy.ndimage.gaussian_filter(x[i], (4.0, 4.0, 0), mode="reflect") for i in range(2)])
    np.testing.assert_allclose(got, want, atol=2e-6)
    got = np.asarray(filters.box_mean_reflect(jnp.asarray(x), 5))
    want = np.stack([scipy.ndimage.uniform_filter(x[i], (5, 5, 1), mode="reflect") for i in range(2)])
    np.testing.assert_allclose(got, want, atol=2e-6)
    with pytest.raises(ValueError, match="odd"):
        filters.box_mean_reflect(jnp.asarray(x), 4)


def test_energy_is_the_box_mean_of_the_absolute_residual():
    x = np.random.default_rng(1).random((1, 32, 32, 1)).astype(np.float32)
    residual = np.abs(x[0, ..., 0] - scipy.ndimage.gaussian_filter(x[0, ..., 0], 4.0, mode="reflect"))
    want = scipy.ndimage.uniform_filter(residual, 5, mode="reflect")
    got = np.asarray(filters.local_highpass_energy(jnp.asarray(x), sigma=4.0, window=5))[0]
    np.testing.assert_allclose(got, want, atol=2e-6)


def test_fit_z_scores_the_energy_of_the_valid_training_pixels_only():
    detector = detectors.build(tiny.get_config("highpass"))
    rng = np.random.default_rng(2)
    images = [rng.random((4, 32, 32, 1)).astype(np.float32) for _ in range(3)]
    valid = [np.ones(4, np.float32), np.ones(4, np.float32), np.array([1, 1, 0, 0], np.float32)]
    batches = [{"image": jnp.asarray(i), "valid": jnp.asarray(v)} for i, v in zip(images, valid)]
    variables = run_fit(detector, detector.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1))), batches)
    energy = np.concatenate(
        [
            np.asarray(filters.local_highpass_energy(jnp.asarray(i), sigma=4.0, window=5))[v > 0]
            for i, v in zip(images, valid)
        ]
    )
    np.testing.assert_allclose(float(variables["statistics"]["mean"]), energy.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(variables["statistics"]["std"]), energy.std(), rtol=1e-4)
    z = np.asarray(detector.anomaly_map(variables, jnp.asarray(images[0]))["map"])
    np.testing.assert_allclose(z, (energy[:4] - energy.mean()) / energy.std(), rtol=1e-3, atol=1e-4)
