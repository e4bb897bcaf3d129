"""Pixel hidden-art methods: the plain baseline, collage and overlay (NumPy references), the
visible-to-band regression residual, and the 2024 Siamese dissimilarity tool."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from xray_flax.detectors.base import TrainState
from xray_flax.hidden_art import dissimilarity as dis
from xray_flax.hidden_art import regression, siamese_conv

BT601 = np.array([0.2989, 0.5870, 0.1140])
# Jitted once and shared by the tests (all Siamese tests use [N, 16, 16, 3] batches): op-by-op
# execution would compile every operation separately and dominate the run time.
_siamese_init = jax.jit(siamese_conv.init)
_siamese_apply = jax.jit(siamese_conv.MODEL.apply)
_siamese_dissimilarity = jax.jit(siamese_conv.dissimilarity)
_siamese_loss = jax.jit(functools.partial(siamese_conv.loss_fn, margin=1.0, patch=8))


def _smooth(rng, shape, sigma):
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    field = (field - field.min()) / (field.max() - field.min())
    return field


def _random_batch(seed=0, n=2, size=32, bands=4):
    rng = np.random.default_rng(seed)
    return {
        "rgb": rng.uniform(size=(n, size, size, 3)).astype(np.float32),
        "bands": rng.uniform(size=(n, size, size, bands)).astype(np.float32),
    }


def _zscore_np(image):
    return (image - image.mean()) / (image.std() + 1e-6)


# ----------------------------------------------------------------------------- plain baseline


def test_grey_is_bt601():
    rgb = _random_batch()["rgb"]
    np.testing.assert_allclose(np.asarray(dis.grey(rgb)), rgb.astype(np.float64) @ BT601, atol=1e-6)


def test_normalise_per_image_and_channel():
    images = _random_batch(1)["bands"] * np.array([1.0, 3.0, 0.1, 10.0], np.float32) + 2.0
    z = np.asarray(dis.normalise(images, "zscore"))
    p = np.asarray(dis.normalise(images, "percentile"))
    for n in range(images.shape[0]):
        for c in range(images.shape[-1]):
            x = images[n, ..., c].astype(np.float64)
            np.testing.assert_allclose(z[n, ..., c], _zscore_np(x), atol=1e-4)
            lo, hi = np.percentile(x, [1, 99])
            np.testing.assert_allclose(p[n, ..., c], (x - lo) / (hi - lo + 1e-6), atol=1e-4)
    with pytest.raises(ValueError, match="normalisation 'minmax' is unknown"):
        dis.normalise(images, "minmax")


def test_plain_baseline_matches_numpy_loops():
    batch = _random_batch(2, n=2, size=16, bands=5)
    out = dis.dissimilarity(dis.init(jax.random.key(0), batch), batch)
    per_band = np.asarray(out["per_band"])
    for n in range(2):
        luma = _zscore_np(batch["rgb"][n].astype(np.float64) @ BT601)
        for b in range(5):
            want = np.abs(_zscore_np(batch["bands"][n, ..., b].astype(np.float64)) - luma)
            np.testing.assert_allclose(per_band[n, ..., b], want, atol=1e-4)
    np.testing.assert_allclose(np.asarray(out["map"]), per_band.mean(-1), atol=1e-6)
    long_half = dis.dissimilarity({}, batch, combination="long_half")["map"]
    np.testing.assert_allclose(np.asarray(long_half), per_band[..., 2:].mean(-1), atol=1e-6)  # ceil(5 / 2) = 3 bands
    np.testing.assert_allclose(np.asarray(dis.combine(out["per_band"], "max")), per_band.max(-1), atol=1e-6)
    with pytest.raises(ValueError, match="combination 'sum' is unknown"):
        dis.combine(out["per_band"], "sum")


def test_plain_baseline_ignores_band_gain_and_offset():
    batch = _random_batch(3, n=1, size=16, bands=3)
    luma = batch["rgb"] @ BT601.astype(np.float32)
    batch["bands"] = np.stack([0.5 * luma + 0.2, 0.1 * luma, 2.0 * luma - 0.3], axis=-1).astype(np.float32)
    assert float(jnp.max(dis.dissimilarity({}, batch)["per_band"])) < 1e-3


def test_bad_batches_are_named():
    batch = _random_batch()
    with pytest.raises(ValueError, match=r"lacks \['bands'\]"):
        dis.dissimilarity({}, {"rgb": batch["rgb"]})
    with pytest.raises(ValueError, match="'rgb' must be"):
        dis.dissimilarity({}, {"rgb": batch["rgb"][..., :2], "bands": batch["bands"]})
    with pytest.raises(ValueError, match="'bands' must be"):
        dis.dissimilarity({}, {"rgb": batch["rgb"], "bands": batch["bands"][:, :8]})
    with pytest.raises(ValueError, match="my scenes lacks"):
        dis.validate_batch({}, "my scenes")


# ----------------------------------------------------------------------------- collage, overlay


def _collage_np(per_band, threshold, quantile):
    n, h, w, b = per_band.shape
    index = np.full((n, h, w), -1)
    strength = np.zeros((n, h, w))
    for i in range(n):
        peak = per_band[i].max(-1)
        reference = np.quantile(peak, quantile)
        for y in range(h):
            for x in range(w):
                s = min(peak[y, x] / reference, 1.0) if reference > 0 else 0.0
                strength[i, y, x] = s
                if s >= threshold:
                    index[i, y, x] = int(np.argmax(per_band[i, y, x]))
    return index, strength


@pytest.mark.parametrize("quantile", [1.0, 0.9])
def test_collage_matches_numpy(quantile):
    per_band = np.random.default_rng(4).exponential(size=(2, 12, 12, 6)).astype(np.float32)
    got = dis.collage(per_band, threshold=0.4, reference_quantile=quantile)
    index, strength = _collage_np(per_band.astype(np.float64), 0.4, quantile)
    np.testing.assert_allclose(np.asarray(got["strength"]), strength, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(got["collage"]), index)
    assert 0 < (index == -1).mean() < 1  # the threshold acts, but not everywhere
    low, high = per_band.min(-1, keepdims=True), per_band.max(-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(got["across_bands"]), (per_band - low) / (high - low), atol=1e-5)


def test_threshold_acts_where_the_reference_threshold_did_not():
    # Pixel (0, 0) differs strongly in band 2, pixel (0, 1) only weakly in band 1.
    per_band = np.zeros((1, 1, 2, 3), np.float32)
    per_band[0, 0, 0] = [0.1, 0.2, 5.0]
    per_band[0, 0, 1] = [0.0, 0.3, 0.1]
    # The reference: per-pixel min-max across bands, then threshold 0.5: the max is 1 everywhere,
    # so its argmax collage is the raw argmax and no pixel is ever left out.
    reference = np.asarray(dis.across_bands(per_band))
    np.testing.assert_array_equal(reference.max(-1), 1.0)
    got = dis.collage(per_band, threshold=0.5, reference_quantile=1.0)
    np.testing.assert_array_equal(np.asarray(got["collage"]), [[[2, -1]]])
    # All bands equal (no difference at all): strength 0, never a band.
    assert int(dis.collage(np.zeros((1, 2, 2, 3)), threshold=0.0)["collage"].max()) in (-1, 0)
    np.testing.assert_array_equal(np.asarray(dis.across_bands(np.ones((1, 2, 2, 3)))), 0.0)
    with pytest.raises(ValueError, match="reference_quantile"):
        dis.collage(per_band, reference_quantile=0.0)


def test_overlay_matches_numpy():
    batch = _random_batch(5, n=2, size=8)
    hidden_map = np.random.default_rng(6).uniform(size=(2, 8, 8)).astype(np.float32)
    hidden_map[1] = 0.0  # no hidden content: the grey image alone
    got = np.asarray(dis.overlay(batch["rgb"], hidden_map))
    assert got.dtype == np.uint8
    for n in range(2):
        luma = batch["rgb"][n].astype(np.float64) @ BT601
        luma = (luma - luma.min()) / (luma.max() - luma.min())
        blue = hidden_map[n] / hidden_map[n].max() if hidden_map[n].max() > 0 else 0.0
        want = np.round(np.stack([luma, luma, np.clip(luma + blue, 0, 1)], -1) * 255)
        assert np.abs(got[n].astype(int) - want).max() <= 1


# ----------------------------------------------------------------------------- regression residual


def _explained_scene(seed, size=64, bands=6):
    """Bands = an exact nonlinear per-pixel function of the RGB (the same for every scene), minus
    a known hidden layer whose strength grows with the band index (like paint growing transparent)."""
    rng = np.random.default_rng(seed)
    rgb = np.stack([0.1 + 0.8 * _smooth(rng, (size, size), 3.0) for _ in range(3)], -1)
    mix = np.random.default_rng(99).normal(size=(3, bands)) * 2.5
    explained = 0.15 + 0.7 / (1.0 + np.exp(-((rgb - 0.5) @ mix))) * (0.6 + 0.4 * rgb[..., 2:3] ** 2)
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.uniform(0.3, 0.7, 2) * size
    hidden = np.clip(1.5 - np.hypot(yy - cy, xx - cx) / (0.12 * size), 0.0, 1.0)  # a soft disk
    strength = np.linspace(0.0, 0.25, bands)
    observed = explained - strength * hidden[..., None]
    return {
        "rgb": rgb.astype(np.float32),
        "bands": observed.astype(np.float32),
        "hidden": hidden.astype(np.float32),
        "hidden_mask": hidden > 0.25,
    }


def _train_regression(batch, loss, steps=500):
    tx = regression.optimizer({"learning_rate": 3e-3})
    state = TrainState.create(regression.init(jax.random.key(0), batch), tx)
    step = jax.jit(lambda s, b, k: regression.train_step(s, b, k, tx=tx, pixels_per_step=4096, loss=loss))
    losses = []
    for key in jax.random.split(jax.random.key(1), steps):
        state, metrics = step(state, batch, key)
        losses.append(float(metrics["loss"]))
    assert np.isfinite(float(metrics["grad_norm"]))
    return state, losses


def test_regression_residual_explains_the_visible_and_keeps_the_hidden():
    scenes = [_explained_scene(seed) for seed in (10, 11)]
    batch = {k: np.stack([s[k] for s in scenes]) for k in ("rgb", "bands")}
    mask = np.stack([s["hidden_mask"] for s in scenes])
    plain = dis.dissimilarity({}, batch)
    # The same units for all: the regression residual divided by each band's spread (the plain
    # per_band is a difference of z-scores).
    spread = batch["bands"].std(axis=(1, 2), keepdims=True)
    outside_plain = float(np.asarray(plain["per_band"])[~mask].mean())
    auroc_plain = roc_auc_score(mask.ravel(), np.asarray(plain["map"]).ravel())
    outside = {}
    for loss in ("l2", "l1"):
        state, losses = _train_regression(batch, loss)
        assert np.mean(losses[-20:]) < 0.2 * losses[0]
        learned = regression.dissimilarity(state.variables, batch)
        outside[loss] = float((np.asarray(learned["per_band"]) / spread)[~mask].mean())
        auroc = roc_auc_score(mask.ravel(), np.asarray(learned["map"]).ravel())
        # Measured (500 steps): AUROC 0.9999 (l2), 1.0000 (l1) against 0.73 for the plain difference.
        assert auroc > 0.99 and auroc > auroc_plain + 0.2, (loss, auroc, auroc_plain)
    # Measured: outside the hidden disk 0.11 (l2) and 0.07 (l1) band spreads against 1.01 for the
    # plain difference. L2 leaves more: it averages the darkening of the hidden pixels into its
    # prediction for their colours; L1 fits the median, which the minority of hidden pixels
    # does not move.
    assert outside["l2"] < 0.2 * outside_plain, (outside, outside_plain)
    assert outside["l1"] < 0.7 * outside["l2"], outside


def test_regression_loss_is_mse_and_step_is_deterministic():
    batch = _random_batch(7, n=1, size=8, bands=3)
    variables = regression.init(jax.random.key(2), batch)
    prediction = np.asarray(regression.dissimilarity(variables, batch)["prediction"])
    want = np.mean((prediction.astype(np.float64) - batch["bands"]) ** 2)
    got = regression.loss_fn(variables["params"], batch, jax.random.key(0), pixels_per_step=None)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    np.testing.assert_allclose(
        np.asarray(regression.dissimilarity(variables, batch)["per_band"]),
        np.abs(batch["bands"] - prediction),
        atol=1e-6,
    )
    tx = regression.optimizer()
    step = jax.jit(functools.partial(regression.train_step, tx=tx, pixels_per_step=16))
    runs = []
    for _ in range(2):
        state, _ = step(TrainState.create(variables, tx), batch, jax.random.key(3))
        runs.append(state.params)
    jax.tree.map(np.testing.assert_array_equal, runs[0], runs[1])


# ----------------------------------------------------------------------------- Siamese conv tool


def _conv3x3_np(image, kernel, bias):
    """Flax 'SAME' 3x3 convolution (cross-correlation, zero padding) of [H, W, C] -> [H, W]."""
    padded = np.pad(image, ((1, 1), (1, 1), (0, 0)))
    h, w, _ = image.shape
    out = np.full((h, w), float(bias[0]))
    for dy in range(3):
        for dx in range(3):
            out += np.tensordot(padded[dy : dy + h, dx : dx + w], kernel[dy, dx, :, 0], axes=1)
    return out


def test_siamese_branches_share_one_parameter_tree():
    batch = _random_batch(8, n=2, size=16, bands=3)
    variables = _siamese_init(jax.random.key(4), batch)
    assert set(variables) == {"params"}  # no batch statistics
    assert set(variables["params"]) == {"rgb_proj", "stack"}
    # A band equal to the RGB's projection goes through the same stack: difference 0.
    proj = variables["params"]["rgb_proj"]
    kernel, bias = np.asarray(proj["kernel"], np.float64), np.asarray(proj["bias"], np.float64)
    projected = np.stack([_conv3x3_np(batch["rgb"][n].astype(np.float64), kernel, bias) for n in range(2)])
    batch["bands"][..., 1] = projected
    per_band = np.asarray(_siamese_dissimilarity(variables, batch)["per_band"])
    assert per_band[..., 1].max() < 1e-4
    assert per_band[..., 0].mean() > 1e-2  # the other bands do differ


def test_siamese_normalises_each_band_of_each_painting_alone():
    batch = _random_batch(9, n=2, size=16, bands=3)
    variables = _siamese_init(jax.random.key(5), batch)
    _, before = _siamese_apply(variables, batch["rgb"], batch["bands"])
    changed = dict(batch, bands=batch["bands"].copy())
    changed["bands"][1, ..., 2] = 5.0 * changed["bands"][1, ..., 2] + 1.0  # one band of one painting
    _, after = _siamese_apply(variables, changed["rgb"], changed["bands"])
    before, after = np.asarray(before), np.asarray(after)
    np.testing.assert_allclose(after[0], before[0], atol=1e-6)
    np.testing.assert_allclose(after[1, ..., :2], before[1, ..., :2], atol=1e-6)
    assert np.abs(after[1, ..., 2] - before[1, ..., 2]).max() > 1e-2


def _contrastive_np(rgb, bands, margin, patch, roll_batch):
    n, h, w, b = bands.shape
    negative_bands = np.roll(bands, 1, axis=0) if roll_batch else np.roll(bands, (h // 2, w // 2), axis=(1, 2))
    pos, neg = [], []
    for i in range(n):
        for k in range(b):
            for y in range(0, h - patch + 1, patch):
                for x in range(0, w - patch + 1, patch):
                    window = (i, slice(y, y + patch), slice(x, x + patch))
                    pos.append(np.abs(rgb[window] - bands[window + (k,)]).mean())
                    neg.append(np.abs(rgb[window] - negative_bands[window + (k,)]).mean())
    pos, neg = np.array(pos), np.array(neg)
    return np.mean(pos**2) + np.mean(np.maximum(margin - neg, 0.0) ** 2)


@pytest.mark.parametrize("n", [1, 2])
def test_siamese_loss_equals_its_formula(n):
    batch = _random_batch(10, n=n, size=16, bands=3)
    variables = _siamese_init(jax.random.key(6), batch)
    rgb, bands = (np.asarray(a, np.float64) for a in _siamese_apply(variables, batch["rgb"], batch["bands"]))
    loss, terms = _siamese_loss(variables["params"], batch)
    np.testing.assert_allclose(float(loss), _contrastive_np(rgb, bands, 1.0, 8, roll_batch=n > 1), rtol=1e-5)
    # per_band is the per-pixel term the block distances average.
    per_band = np.asarray(_siamese_dissimilarity(variables, batch)["per_band"])
    np.testing.assert_allclose(per_band, np.abs(rgb[..., None] - bands), atol=1e-5)
    assert float(terms["positive"]) > 0
    # Collapse costs margin^2: constant features leave every negative at distance 0.
    zeros = jnp.zeros((2, 16, 16))
    assert float(siamese_conv.contrastive_loss(zeros, zeros[..., None], margin=1.0, patch=8)[0]) == 1.0
    # Block means leave the last H mod patch rows and W mod patch columns out.
    values = np.random.default_rng(12).uniform(size=(1, 7, 5, 2))
    want = [[[values[0, 3 * i : 3 * i + 3, 0:3, k].mean() for k in range(2)]] for i in range(2)]
    np.testing.assert_allclose(np.asarray(siamese_conv.block_mean(values, 3))[0], want, atol=1e-6)
    with pytest.raises(ValueError, match="patch must lie"):
        siamese_conv.block_mean(jnp.zeros((1, 4, 4, 1)), 5)


def test_siamese_training_lowers_the_loss_and_maps_follow_the_contract():
    batch = _random_batch(11, n=2, size=16, bands=3)
    batch["bands"][..., 0] = batch["rgb"] @ BT601.astype(np.float32)  # something the RGB explains
    tx = siamese_conv.optimizer({"learning_rate": 3e-3})
    state = TrainState.create(_siamese_init(jax.random.key(7), batch), tx)
    step = jax.jit(lambda s, b, k: siamese_conv.train_step(s, b, k, tx=tx, patch=8))
    before = float(_siamese_loss(state.params, batch)[0])
    for key in jax.random.split(jax.random.key(8), 15):
        state, metrics = step(state, batch, key)
    after = float(_siamese_loss(state.params, batch)[0])
    assert after < 0.9 * before, (before, after)
    assert {"loss", "grad_norm", "positive", "negative"} <= set(metrics)
    out = _siamese_dissimilarity(state.variables, batch)
    assert out["per_band"].shape == (2, 16, 16, 3) and out["map"].shape == (2, 16, 16)
    assert float(out["per_band"].min()) >= 0.0
    np.testing.assert_allclose(np.asarray(out["map"]), np.asarray(out["per_band"]).mean(-1), atol=1e-6)
    collage = np.asarray(out["collage"])
    assert collage.dtype == np.int32 and collage.min() >= -1 and collage.max() <= 2


def test_random_crop_takes_the_same_window_of_rgb_and_bands():
    yy, xx = np.mgrid[:16, :16].astype(np.float32)
    batch = {"rgb": np.stack([yy, xx, yy], -1)[None], "bands": np.stack([yy, xx], -1)[None]}
    for seed in range(3):
        crop = siamese_conv.random_crop(batch, jax.random.key(seed), 8)
        rgb, bands = np.asarray(crop["rgb"]), np.asarray(crop["bands"])
        np.testing.assert_array_equal(rgb[..., :2], bands)
        y0, x0 = int(rgb[0, 0, 0, 0]), int(rgb[0, 0, 0, 1])
        np.testing.assert_array_equal(bands[0, ..., 0], yy[y0 : y0 + 8, x0 : x0 + 8])
    with pytest.raises(ValueError, match="crop must lie"):
        siamese_conv.random_crop(batch, jax.random.key(0), 17)
