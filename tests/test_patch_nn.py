"""The raw-patch nearest-neighbour reference: windows equal NumPy's, the map's distances equal
scipy's exact nearest-neighbour search over every training window (bank large enough), and a
bounded bank still gives each training window a close entry."""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy.spatial.distance import cdist

from configs import tiny
from xray_flax import detectors
from xray_flax.detectors import patch_nn


def _plan(patch=3, stride=2, center=False, channels=1, bank=4096, chunk=4096):
    return patch_nn.Plan(
        patch=patch,
        stride=stride,
        center=center,
        dim=patch * patch * channels,
        bank_size=bank,
        chunk_size=chunk,
        query_block=64,
        bank_block=256,
        blur_sigma=0.0,
    )


def _windows_numpy(images, patch, stride, center):
    b, height, width, c = images.shape
    rows = []
    for y in range(0, height - patch + 1, stride):
        row = []
        for x in range(0, width - patch + 1, stride):
            w = images[:, y : y + patch, x : x + patch, :].reshape(b, -1)
            row.append(w - w.mean(axis=1, keepdims=True) if center else w)
        rows.append(np.stack(row, 1))
    return np.stack(rows, 1)  # [b, h, w, d]


@pytest.mark.parametrize("channels,center", [(1, False), (3, False), (1, True)])
def test_windows_equal_numpy(channels, center):
    images = np.random.default_rng(0).random((2, 11, 9, channels)).astype(np.float32)
    plan = _plan(patch=3, stride=2, center=center, channels=channels)
    got = np.asarray(patch_nn.patch_features(jnp.asarray(images), plan=plan))
    np.testing.assert_allclose(got, _windows_numpy(images, 3, 2, center), rtol=0, atol=1e-6)


def _fit(plan, batches):
    state = patch_nn.fit_init({}, plan=plan)
    for images in batches:
        state = patch_nn.fit_update(
            state, {}, {"image": jnp.asarray(images), "valid": jnp.ones(len(images))}, plan=plan
        )
    return patch_nn.fit_finish(state, {}, plan=plan)


def test_distances_are_the_exact_nearest_training_window_when_the_bank_holds_them_all():
    rng = np.random.default_rng(1)
    train = [rng.random((2, 12, 12, 1)).astype(np.float32) for _ in range(3)]
    plan = _plan(patch=3, stride=3, bank=4096, chunk=96)  # 16 windows x 2 tiles = 32 per batch
    variables = _fit(plan, train)
    assert int(variables[patch_nn.MEMORY]["valid"].sum()) == 96  # every training window kept
    test = rng.random((2, 12, 12, 1)).astype(np.float32)
    got = np.asarray(patch_nn.patch_distances(variables, jnp.asarray(test), plan=plan))
    reference_bank = np.concatenate([_windows_numpy(t, 3, 3, False).reshape(-1, 9) for t in train])
    queries = _windows_numpy(test, 3, 3, False).reshape(-1, 9)
    expected = cdist(queries, reference_bank).min(axis=1).reshape(2, 4, 4)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # A training tile is at distance 0 from itself.
    np.testing.assert_allclose(
        np.asarray(patch_nn.patch_distances(variables, jnp.asarray(train[0]), plan=plan)), 0, atol=1e-5
    )


def test_a_bounded_bank_covers_the_training_windows():
    """More windows than bank entries: the stream keeps 32 of 192, and no training window is
    farther from the bank than the coreset's certified bound."""
    rng = np.random.default_rng(2)
    train = [rng.random((2, 12, 12, 1)).astype(np.float32) for _ in range(6)]
    plan = _plan(patch=3, stride=3, bank=32, chunk=64)
    state = patch_nn.fit_init({}, plan=plan)
    for images in train:
        state = patch_nn.fit_update(state, {}, {"image": jnp.asarray(images), "valid": jnp.ones(2)}, plan=plan)
    state = patch_nn._finish(state)
    windows = np.concatenate([_windows_numpy(t, 3, 3, False).reshape(-1, 9) for t in train])
    bank = np.asarray(state["bank"])[np.asarray(state["bank_valid"])]
    assert len(bank) == 32
    assert cdist(windows, bank).min(axis=1).max() <= float(state["coverage_bound"]) + 1e-5


def test_tiny_config_builds_a_fit_detector_whose_map_has_the_tile_size():
    config = tiny.get_config("patch_nn")
    detector = detectors.build(config)
    assert detector.kind == detectors.FIT
    size = config.data.patch_size
    variables = detector.init(None, jnp.zeros((1, size, size, 1)))
    variables = {
        patch_nn.MEMORY: {"bank": jnp.ones_like(variables[patch_nn.MEMORY]["bank"]), "valid": jnp.ones(128, bool)}
    }
    out = detector.anomaly_map(variables, jnp.zeros((2, size, size, 1)))
    assert out["map"].shape == (2, size, size) and out["score"].shape == (2,)


def test_windows_that_do_not_fit_the_tile_are_a_config_error():
    config = ml_collections.ConfigDict(tiny.get_config("patch_nn").to_dict())
    config.model.patch = 64
    with pytest.raises(ValueError, match="config.model.patch=64"):
        detectors.build(config)
