"""Hidden art that is found: the map forms and the per-painting robust polynomial against
NumPy / SciPy references, and honest recovery tests on simulated paintings.

Recovery is scored on paintings of simulation seed 7, a HELD-OUT seed: every setting of the
method and its map form (configs/hidden_polynomial.py) was chosen on seed 0's validation
paintings and seed 7 was never used to choose anything. 96 px paintings (the issue's CI size),
the 4 validation paintings (indices 12-15 of 16). The thresholds sit a little under what
`benchmarks/hidden_art_recovery.py --size 96 --seed 7 ...` measured (docs/results.md,
"Hidden-art extraction"); in brackets below, the measured value:

* held-out seed: mean AUROC >= 0.85 [0.938], every painting >= 0.75 [0.906];
* the negative control, the same paintings with the hidden layer's strength 0: within 0.5 +- 0.06 [0.470];
* shifts: strength 0.5 >= 0.82 [0.857]; band noise 3 % >= 0.86 [0.899]; RGB misregistered by
  1 px >= 0.86 [0.892]; visible bands only (400-700 nm) STAYS LOW, < 0.75 [0.671]: without the
  near infrared the paint hides the layer, the physics leaves little to find;
* the ordering on the same paintings: plain |difference| [0.488] < signed plain [0.672] <
  per-painting regression [0.938] <= the oracle that knows the visible-only band [0.983];
* no peeking: no method's item, batch or training step sees the truth.
"""

from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import jraph
import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy.stats import median_abs_deviation
from sklearn.metrics import roc_auc_score

from xray_flax import errors
from xray_flax.hidden_art import evaluate as hidden_evaluate
from xray_flax.hidden_art import maps, methods, node_regression, paintings, polynomial, regression, siamese_conv, train
from xray_flax.hidden_art import simulate as S

HELD_OUT_SEED = 7  # never used to choose a setting (module text)
SIZE = 96


def _config(name: str):
    return importlib.import_module(f"configs.hidden_{name}").get_config()


def _scenes(shift_rgb: int = 0, **sim) -> list[dict]:
    params = S.SimulationParams(n_scenes=16, n_val=4, size=SIZE, seed=HELD_OUT_SEED, **sim)
    scenes = []
    for i in range(params.n_train, params.n_scenes):
        layers = S.simulate_layers(params, i)
        layers["rgb"] = np.round(layers["rgb"] * 255.0) / 255.0  # as the cache's 8-bit PNG
        layers["bands"] = np.round(layers["bands"] * 65535.0) / 65535.0
        if shift_rgb:
            layers["rgb"] = np.roll(layers["rgb"], (shift_rgb, shift_rgb), axis=(0, 1))
        scenes.append(layers)
    return scenes


def _auroc(config, scenes) -> np.ndarray:
    method = methods.build(config)
    batch = method.collate([method.item(s) for s in scenes], None)
    maps_ = np.asarray(jax.device_get(jax.jit(method.dissimilarity)({}, batch)["map"]))
    return np.asarray([roc_auc_score(s["hidden_mask"].ravel(), m.ravel()) for s, m in zip(scenes, maps_)])


# ----------------------------------------------------------------------------- map forms


def test_form_against_numpy_and_scipy():
    rng = np.random.default_rng(0)
    residual = rng.standard_normal((2, 12, 10, 5)).astype(np.float32) * np.asarray([1, 2, 3, 4, 5], np.float32)
    residual[0, :3, :3, 4] += 20.0  # a darker patch in the longest band of painting 0
    scale = median_abs_deviation(residual.astype(np.float64), axis=(1, 2), scale="normal")  # [2, 5]
    z = residual / scale[:, None, None, :]
    lam = np.arange(5.0)
    wave = lam / lam.sum()
    q01, q99 = np.quantile(z, 0.01, axis=(1, 2)), np.quantile(z, 0.99, axis=(1, 2))
    excess = np.maximum(q01 + q99, 0.0)
    signal = np.where(excess.sum(-1, keepdims=True) > 0, excess / np.maximum(excess.sum(-1, keepdims=True), 1e-30), 0.2)
    want = {
        "longest": z[..., -1],
        "wavelength": z @ wave,
        "signal": np.einsum("nhwb,nb->nhw", z, signal),
        "mean": z.mean(-1),
        "long_half": z[..., 2:].mean(-1),
        "max": z.max(-1),
    }
    for combination, expected in want.items():
        got = maps.form(residual, sign="signed", scale="noise", combination=combination)
        np.testing.assert_allclose(np.asarray(got["per_band"]), z, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.asarray(got["map"]), expected, rtol=1e-4, atol=1e-4, err_msg=combination)
    absolute = maps.form(residual, sign="absolute", scale="none", combination="mean")
    np.testing.assert_allclose(np.asarray(absolute["map"]), np.abs(residual).mean(-1), rtol=1e-5, atol=1e-5)
    assert float(signal[0, -1]) > 0.5  # the darker patch's band carries the signal weight
    with pytest.raises(ValueError, match="combination 'sum'"):
        maps.form(residual, combination="sum")
    with pytest.raises(ValueError, match="map sign"):
        maps.form(residual, sign="up")


def test_wavelength_weights_follow_the_given_wavelengths():
    np.testing.assert_allclose(
        np.asarray(maps.wavelength_weights(3, [400.0, 500.0, 1000.0])), [0, 1 / 7, 6 / 7], atol=1e-6
    )
    np.testing.assert_allclose(np.asarray(maps.wavelength_weights(1)), [1.0])


def test_form_knobs_are_config_errors():
    config = _config("polynomial")
    config.model.combination = "loudest"
    with pytest.raises(errors.ConfigError, match="combination 'loudest'"):
        methods.build(config)
    config = _config("polynomial")
    config.model.robust = "cauchy"
    with pytest.raises(errors.ConfigError, match="robust='cauchy'"):
        methods.build(config)


# ----------------------------------------------------------------------------- the robust fit


def _huber_irls_numpy(x, y, iterations, c=1.345):
    """An independent IRLS (float64, np.linalg.lstsq on sqrt(w)-scaled rows) for one band."""
    beta = np.linalg.lstsq(x, y, rcond=None)[0]
    for _ in range(iterations):
        r = y - x @ beta
        s = median_abs_deviation(r, scale="normal")
        u = np.abs(r / s)
        w = np.minimum(1.0, c / np.maximum(u, 1e-12))
        beta = np.linalg.lstsq(x * np.sqrt(w)[:, None], y * np.sqrt(w), rcond=None)[0]
    return beta


def test_robust_fit_against_numpy():
    rng = np.random.default_rng(1)
    rgb = rng.uniform(size=(1, 600, 3))
    x = np.asarray(polynomial.features(jnp.asarray(rgb, jnp.float32), 2), np.float64)
    truth = rng.normal(size=(10, 2))
    y = x[0] @ truth + 0.01 * rng.standard_normal((600, 2))
    y[:120, 0] -= 0.5  # 20 % darker pixels (the hidden layer) in band 0
    l2 = np.asarray(polynomial.robust_fit(jnp.asarray(x, jnp.float32), jnp.asarray(y[None], jnp.float32), robust="l2"))
    np.testing.assert_allclose(l2[0], np.linalg.lstsq(x[0], y, rcond=None)[0], atol=2e-3)
    huber = np.asarray(
        polynomial.robust_fit(
            jnp.asarray(x, jnp.float32), jnp.asarray(y[None], jnp.float32), robust="huber", iterations=10
        )
    )
    for b in range(2):
        np.testing.assert_allclose(huber[0, :, b], _huber_irls_numpy(x[0], y[:, b], 10), atol=5e-3)
    # The robust fit follows the 80 % of unchanged pixels, least squares is pulled by the dark ones.
    assert np.abs(huber[0, 0, 0] - truth[0, 0]) < 0.5 * np.abs(l2[0, 0, 0] - truth[0, 0])


def test_features_and_linearise():
    rgb = jnp.asarray([[0.2, 0.5, 0.9]], jnp.float32)
    r, g, b = 0.2, 0.5, 0.9
    want = [1, r, g, b, r * r, r * g, r * b, g * g, g * b, b * b]
    np.testing.assert_allclose(np.asarray(polynomial.features(rgb, 2))[0], want, rtol=1e-6)
    assert polynomial.features(rgb, 3).shape == (1, 20) and polynomial.features(rgb, 1).shape == (1, 4)
    encoded = S.srgb_encode(np.asarray([0.0, 0.002, 0.18, 0.5, 1.0], np.float32))
    np.testing.assert_allclose(np.asarray(polynomial.linearise(encoded)), [0.0, 0.002, 0.18, 0.5, 1.0], atol=1e-5)


# ----------------------------------------------------------------------------- recovery


@pytest.fixture(scope="module")
def held_out():
    return _scenes()


def test_held_out_seed(held_out):
    auroc = _auroc(_config("polynomial"), held_out)
    assert auroc.mean() >= 0.85 and auroc.min() >= 0.75, auroc


def test_strength_zero_negative_control():
    auroc = _auroc(_config("polynomial"), _scenes(strength=0.0))
    assert abs(auroc.mean() - 0.5) <= 0.06, auroc


@pytest.mark.parametrize(
    "shift, sim, low, high",
    [
        ("strength 0.5", {"strength": 0.5}, 0.82, 1.0),
        ("band noise 3 %", {"band_noise": 0.03}, 0.86, 1.0),
        ("RGB 1 px off", {"shift_rgb": 1}, 0.86, 1.0),
        ("visible bands only", {"wavelength_max": 700.0}, 0.5, 0.75),
    ],
)
def test_shift_suite(shift, sim, low, high):
    auroc = _auroc(_config("polynomial"), _scenes(**sim))
    assert low <= auroc.mean() < high, (shift, auroc)


def test_ordering_plain_signed_regression_oracle(held_out):
    absolute = _config("plain")
    absolute.model.update({"sign": "absolute", "combination": "mean"})  # the reference's form
    plain = _auroc(absolute, held_out).mean()
    signed = _auroc(_config("plain"), held_out).mean()
    regression = _auroc(_config("polynomial"), held_out).mean()
    oracle_maps = [s["visible_only"][..., -1] - s["bands"][..., -1] for s in held_out]
    oracle = np.mean([roc_auc_score(s["hidden_mask"].ravel(), m.ravel()) for s, m in zip(held_out, oracle_maps)])
    assert plain + 0.05 < signed < regression - 0.1 and regression <= oracle, (plain, signed, regression, oracle)


# ----------------------------------------------------------------------------- no peeking


def test_methods_never_see_the_truth(held_out):
    method = methods.build(_config("polynomial"))
    item = method.item(held_out[0])
    assert not set(methods.TRUTH_KEYS) & set(item) and {"rgb", "bands"} <= set(item)
    batch = method.collate([item], None)
    with pytest.raises(ValueError, match=r"carries the truth \['hidden'\]"):
        method.dissimilarity({}, {**batch, "hidden": held_out[0]["hidden"][None]})
    assert {"bands_clean", "visible_only"} <= set(methods.TRUTH_KEYS)


def test_the_job_feeds_methods_blind_paintings(tmp_path, monkeypatch):
    """Through the family's loop and evaluation: every painting a method's item receives, every
    batch its training step and dissimilarity receive, carries no truth."""
    seen = []
    original = methods.REGISTRY["regression"]

    def spy(config):
        m = original(config)

        def item(scene):
            seen.append(set(scene))
            return m.item(scene)

        def dissimilarity(variables, batch):
            seen.append(set(batch))
            return m.dissimilarity(variables, batch)

        def train_step(state, batch, key):
            seen.append(set(batch))
            return m.train_step(state, batch, key)

        return methods.Method(**{**m.__dict__, "item": item, "dissimilarity": dissimilarity, "train_step": train_step})

    monkeypatch.setitem(methods.REGISTRY, "regression", spy)
    config = _config("regression")
    config.data.cache_dir = str(tmp_path / "cache")
    config.data.simulation.update({"n_scenes": 3, "n_val": 1, "size": 48})
    config.train.update({"num_steps": 1, "batch_size": 2, "crop": 32, "log_every": 1, "checkpoint_every": 1})
    config.model.pixels_per_step = 256
    method = methods.build(config)
    scenes = paintings.load_split(config, "train")
    assert all("hidden" in s for s in scenes)  # the truth is there to be hidden
    variables = train.train(config, str(tmp_path / "w"), method, scenes)
    hidden_evaluate.evaluate(config, str(tmp_path / "w"), variables=variables, method=method)
    assert len(seen) >= 4 and not any(keys & set(methods.TRUTH_KEYS) for keys in seen), seen


# ----------------------------------------------------------------------------- the tools made to localise


def test_node_statistics_against_scipy():
    rng = np.random.default_rng(3)
    rgb = rng.uniform(size=(20, 24, 3)).astype(np.float32)
    bands = rng.uniform(size=(20, 24, 3)).astype(np.float32)
    labels = (np.arange(20)[:, None] // 5) * 4 + (np.arange(24)[None, :] // 6)  # 16 blocks
    index = np.arange(16)
    linear = np.asarray(polynomial.linearise(rgb), np.float64)
    x = node_regression.node_inputs(rgb, labels)
    for c in range(3):
        np.testing.assert_allclose(x[:, c], ndi.mean(linear[..., c], labels, index), rtol=1e-5)
        np.testing.assert_allclose(x[:, 3 + c], ndi.minimum(linear[..., c], labels, index), rtol=1e-5)
        np.testing.assert_allclose(x[:, 6 + c], ndi.maximum(linear[..., c], labels, index), rtol=1e-5)
    luma = rgb.astype(np.float64) @ np.array([0.2989, 0.5870, 0.1140])
    np.testing.assert_allclose(x[:, 9], ndi.standard_deviation(luma, labels, index), rtol=1e-4, atol=1e-6)
    y = node_regression.node_targets(bands, labels)
    for b in range(3):
        np.testing.assert_allclose(y[:, b], ndi.mean(bands[..., b], labels, index), rtol=1e-5)
        np.testing.assert_allclose(y[:, 3 + b], ndi.minimum(bands[..., b], labels, index), rtol=1e-6)


def test_per_painting_calibration_against_numpy():
    """Two paintings in one padded batch: each painting's targets refitted on [1, prediction] by
    its own Huber IRLS, equal to the NumPy IRLS on that painting's nodes alone."""
    rng = np.random.default_rng(5)
    items = []
    for n in (30, 22):
        graph = jraph.GraphsTuple(
            nodes=rng.uniform(size=(n, 11)).astype(np.float32),
            edges=None,
            senders=np.zeros(0, np.int32),
            receivers=np.zeros(0, np.int32),
            n_node=np.array([n], np.int32),
            n_edge=np.array([0], np.int32),
            globals=None,
        )
        labels = np.repeat(np.arange(n), 4).reshape(n, 4).astype(np.int32)
        items.append({"graph": graph, "targets": rng.normal(size=(n, 4)).astype(np.float32), "labels": labels})
    items[1]["labels"] = np.pad(items[1]["labels"], ((0, 8), (0, 0)))  # one painting size for the batch
    batch = node_regression.collate(items)
    total = batch["graph"].nodes.shape[0]
    prediction = rng.normal(size=(total, 4)).astype(np.float32)
    got = np.asarray(node_regression.calibrated(jnp.asarray(prediction), batch))
    start = 0
    for it in items:
        n = it["targets"].shape[0]
        x = np.concatenate([np.ones((n, 1)), prediction[start : start + n]], axis=1).astype(np.float64)
        for t in range(4):
            beta = _huber_irls_numpy(x, it["targets"][:, t].astype(np.float64), 10)
            np.testing.assert_allclose(got[start : start + n, t], x @ beta, atol=2e-3)
        start += n


def test_siamese_predictor_band_branch_is_fixed():
    rng = np.random.default_rng(2)
    batch = {
        "rgb": jnp.asarray(rng.uniform(size=(2, 16, 16, 3)), jnp.float32),
        "bands": jnp.asarray(rng.uniform(size=(2, 16, 16, 4)), jnp.float32),
    }
    variables = siamese_conv.predictor_init(jax.random.key(0), batch)
    grad_bands = jax.grad(lambda bands: siamese_conv.predictor_loss(variables["params"], {**batch, "bands": bands}))(
        batch["bands"]
    )
    np.testing.assert_array_equal(np.asarray(grad_bands), 0.0)  # stop-gradient: no gradient reaches the bands
    out = siamese_conv.predictor_dissimilarity(variables, batch)
    z = (np.asarray(batch["bands"]) - np.asarray(batch["bands"]).mean((1, 2), keepdims=True)) / (
        np.asarray(batch["bands"]).std((1, 2), keepdims=True) + 1e-6
    )
    np.testing.assert_allclose(np.asarray(out["signed"]), np.asarray(out["prediction"]) - z, atol=1e-5)
    assert out["map"].shape == (2, 16, 16) and out["collage"].shape == (2, 16, 16)


@pytest.mark.parametrize("name", ["gcn_contrastive", "gat_contrastive", "siamese_conv_contrastive"])
def test_contrastive_variants_stay_as_configs(name):
    config = _config(name)
    assert config.model.objective == "contrastive" and config.config_name == f"hidden_{name}"
    method = methods.build(config)
    assert method.trained and method.name == name.replace("_contrastive", "")
    localising = methods.build(_config(name.replace("_contrastive", "")))
    assert localising.train_step is not method.train_step


# ----------------------------------------------------------------------------- false-positive control


def test_false_positive_control_on_paintings_that_hide_nothing(tmp_path):
    """The threshold set on simulated paintings for 5 % false positives flags about 5 % of the
    pixels of the same kind of paintings with nothing hidden (strength 0, another seed)."""
    config = _config("polynomial")
    config.data.cache_dir = str(tmp_path / "cache")
    config.data.simulation.update({"n_scenes": 6, "n_val": 4, "size": 64})
    truth_run = hidden_evaluate.evaluate(config, str(tmp_path / "a"))
    threshold = truth_run["mean"]["fp_threshold"]
    rows = truth_run["paintings"]
    assert all("fp_threshold" in r and "flagged_fraction" not in r for r in rows)
    control = _config("polynomial")
    control.data.cache_dir = str(tmp_path / "cache")
    control.data.simulation.update({"n_scenes": 6, "n_val": 4, "size": 64, "strength": 0.0, "seed": HELD_OUT_SEED})
    control.eval.update({"flag": True, "flag_threshold": threshold})
    flagged = hidden_evaluate.evaluate(control, str(tmp_path / "b"))
    fractions = [r["flagged_fraction"] for r in flagged["paintings"]]
    assert 0.02 <= flagged["mean"]["flagged_fraction"] <= 0.09, fractions


def test_test_time_training_fits_the_analysed_painting():
    """Fine-tuning on the painting alone (no truth) lowers its residual where the prior was wrong;
    0 steps is the plain prediction."""
    rng = np.random.default_rng(4)
    rgb = rng.uniform(size=(1, 24, 24, 3)).astype(np.float32)
    bands = np.stack([0.8 * rgb[..., 0] + 0.1, 0.5 * rgb[..., 1] * rgb[..., 2]], axis=-1).astype(np.float32)
    batch = {"rgb": jnp.asarray(rgb), "bands": jnp.asarray(bands)}
    variables = regression.init(jax.random.key(0), batch, hidden=(16,))
    plain = regression.dissimilarity(variables, batch, hidden=(16,), sign="absolute")
    none = regression.dissimilarity(variables, batch, hidden=(16,), sign="absolute", test_time_steps=0)
    np.testing.assert_array_equal(np.asarray(plain["map"]), np.asarray(none["map"]))
    tuned = regression.dissimilarity(
        variables, batch, hidden=(16,), sign="absolute", test_time_steps=150, test_time_learning_rate=1e-2
    )
    assert float(jnp.mean(tuned["map"])) < 0.3 * float(jnp.mean(plain["map"]))
