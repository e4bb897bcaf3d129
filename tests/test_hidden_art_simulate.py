"""Simulated multispectral paintings (xray_flax.hidden_art.simulate): determinism, the truth lies
exactly where the hidden layer changes the painting, the hidden layer shows more in longer bands,
the plain difference is beaten by a per-pixel regression, and the ensure_simulated round trip
through the ArtExtract readers."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from xray_flax.hidden_art import config as hidden_config
from xray_flax.hidden_art import data as D
from xray_flax.hidden_art import simulate as S

SMALL = S.SimulationParams(n_scenes=4, n_val=1, size=96)


def test_deterministic_and_seeded():
    a, b = S.simulate_scene(SMALL, 1), S.simulate_scene(SMALL, 1)
    assert set(a) == {"name", "rgb", "bands", "hidden", "hidden_mask"}
    for k in ("rgb", "bands", "hidden", "hidden_mask"):
        np.testing.assert_array_equal(a[k], b[k])
    assert a["rgb"].shape == (96, 96, 3) and a["bands"].shape == (96, 96, 8) and a["hidden_mask"].dtype == bool
    assert a["rgb"].dtype == a["bands"].dtype == a["hidden"].dtype == np.float32
    assert 0.0 <= a["bands"].min() and a["bands"].max() <= 1.0 and 0.0 <= a["hidden"].min() <= a["hidden"].max() <= 1
    other = S.simulate_scene(SMALL, 2)
    reseeded = S.simulate_scene(S.SimulationParams(n_scenes=4, n_val=1, size=96, seed=1), 1)
    assert not np.allclose(a["bands"], other["bands"]) and not np.allclose(a["bands"], reseeded["bands"])
    with pytest.raises(IndexError):
        S.simulate_scene(SMALL, 4)


def test_band_wavelengths():
    np.testing.assert_allclose(
        S.band_wavelengths(S.SimulationParams()),
        [400, 485.714, 571.429, 657.143, 742.857, 828.571, 914.286, 1000],
        atol=1e-3,
    )


@pytest.mark.parametrize("index", [0, 1])  # an underdrawing and an earlier composition
def test_truth_is_where_the_hidden_layer_changes_the_painting(index):
    """The same painting without its hidden layer (strength 0: same painting, light and noise
    draws) equals it exactly wherever the truth is 0, and differs inside the mask."""
    with_hidden = S.simulate_scene(SMALL, index)
    without = S.simulate_scene(S.SimulationParams(n_scenes=4, n_val=1, size=96, strength=0.0), index)
    np.testing.assert_array_equal(with_hidden["hidden"], without["hidden"])  # truth does not depend on strength
    np.testing.assert_array_equal(with_hidden["hidden_mask"], with_hidden["hidden"] > SMALL.mask_level)
    mask, nothing = with_hidden["hidden_mask"], with_hidden["hidden"] == 0
    assert 0.01 < mask.mean() < 0.5 and nothing.mean() > 0.4
    for k in ("rgb", "bands"):
        np.testing.assert_array_equal(with_hidden[k][nothing], without[k][nothing])
    # Hidden material is darker than the ground: the longest band gets darker under the mask
    # (except where opaque carbon-black outlines of the visible layer cover it).
    darker = with_hidden["bands"][..., -1] < without["bands"][..., -1] - 1e-4
    assert darker[mask].mean() > 0.95
    assert with_hidden["bands"][..., -1][mask].mean() < without["bands"][..., -1][mask].mean() - 0.05


def test_hidden_contrast_grows_with_wavelength():
    params = S.SimulationParams(n_scenes=4, n_val=0, size=128)
    for index in range(4):
        layers = S.simulate_layers(params, index)
        h, mask = layers["hidden"], layers["hidden_mask"]
        signal = layers["visible_only"] - layers["bands"]  # what the hidden layer did, plus noise
        corr = [np.corrcoef(signal[..., b].ravel(), h.ravel())[0, 1] for b in range(params.n_bands)]
        assert np.all(np.diff(corr[1:]) > 0), (index, np.round(corr, 3))
        assert corr[-1] > 0.4 and abs(corr[0]) < 0.05, (index, np.round(corr, 3))
        clean = (layers["visible_only"] - layers["bands_clean"])[mask].mean(axis=0)
        assert np.all(np.diff(clean) > 0), (index, clean)


def _auroc_plain_and_regression(scene):
    """(AUROC of the plain per-band-normalised |band - grey(RGB)|, AUROC of the residual of a
    per-pixel quadratic least-squares regression RGB -> band), longest band."""
    rgb, band, mask = scene["rgb"].reshape(-1, 3), scene["bands"][..., -1].ravel(), scene["hidden_mask"].ravel()
    grey = rgb @ np.asarray([0.299, 0.587, 0.114])

    def z(a):
        return (a - a.mean()) / a.std()

    plain = np.abs(z(band) - z(grey))
    features = np.concatenate([rgb, rgb**2, rgb[:, [0]] * rgb[:, [1]], np.ones((len(rgb), 1))], axis=1)
    coef, *_ = np.linalg.lstsq(features, band, rcond=None)
    residual = features @ coef - band  # hidden material darkens the band below its prediction
    return roc_auc_score(mask, plain), roc_auc_score(mask, residual)


def test_plain_difference_is_not_a_perfect_answer():
    params = S.SimulationParams(n_scenes=4, n_val=0, size=128)
    plain, regression = np.asarray([_auroc_plain_and_regression(S.simulate_scene(params, i)) for i in range(4)]).T
    assert plain.max() < 0.9, plain  # pigments, varnish and the sRGB encoding leave false differences
    assert regression.mean() > plain.mean() + 0.1, (plain, regression)


def test_paint_model_against_a_pixel_loop():
    rng = np.random.default_rng(0)
    k = len(S.PIGMENTS)
    weights = rng.dirichlet(np.ones(k), size=(3, 4)).astype(np.float32)
    thick = rng.uniform(0.3, 1.5, (3, 4)).astype(np.float32)
    lam = np.asarray([420.0, 600.0, 950.0])
    r_inf, kappa, ground = S._tables(lam)
    refl, t2 = S._paint_over(weights, thick, r_inf, kappa, ground)
    for y in range(3):
        for x in range(4):
            for j, wl in enumerate(lam):
                pig = list(S.PIGMENTS.values())
                r = sum(weights[y, x, i] * np.interp(wl, S._KNOTS, p.reflectance) for i, p in enumerate(pig))
                kap = sum(weights[y, x, i] * p.kappa_400 * (400 / wl) ** p.power for i, p in enumerate(pig))
                t = np.exp(-thick[y, x] * kap)
                g = np.interp(wl, S._KNOTS, S._GROUND)
                assert refl[y, x, j] == pytest.approx(r * (1 - t * t) + t * t * g, rel=1e-5)
                assert t2[y, x, j] == pytest.approx(t * t, rel=1e-5)


def test_srgb_encode_reference_values():
    np.testing.assert_allclose(
        S.srgb_encode(np.asarray([0.0, 0.0031308, 0.18, 0.5, 1.0])), [0.0, 0.04045, 0.46135, 0.73536, 1.0], atol=2e-5
    )


def test_params_validation_and_config():
    with pytest.raises(ValueError, match="hidden_kind"):
        S.SimulationParams(hidden_kind="pentimento")
    with pytest.raises(ValueError, match="n_val"):
        S.SimulationParams(n_scenes=2, n_val=3)
    params = S.SimulationParams.from_config({"size": "64", "strength": 0.5, "hidden_kind": "composition"})
    assert (params.size, params.strength, params.hidden_kind) == (64, 0.5, "composition")
    with pytest.raises(ValueError, match="unknown simulation parameters.*'colour'"):
        S.SimulationParams.from_config({"colour": 1})
    assert params.fingerprint() != S.SimulationParams().fingerprint()


def test_ensure_simulated_round_trip_and_cache(tmp_path):
    params = S.SimulationParams(n_scenes=3, n_val=1, size=48, n_bands=5)
    root = str(tmp_path / "sim")
    assert S.ensure_simulated(params, root) == root
    manifest = json.load(open(os.path.join(root, "manifest.json")))
    assert manifest["splits"] == {"train": ["sim_000", "sim_001"], "val": ["sim_002"]}
    assert "SIMULATED" in manifest["note"] and len(manifest["wavelengths_nm"]) == 5
    for split, indices in (("train", [0, 1]), ("val", [2])):
        records = D.list_artextract(root, split)
        assert [r.name for r in records] == [params.stem(i) for i in indices]
        for r, i in zip(records, indices):
            loaded, truth = D.load_scene(r), S.simulate_scene(params, i)
            assert r.band_indices == (1, 2, 3, 4, 5)
            np.testing.assert_allclose(loaded["bands"], truth["bands"], atol=0.51 / 65535)
            np.testing.assert_allclose(loaded["rgb"], truth["rgb"], atol=0.51 / 255)
            np.testing.assert_allclose(loaded["hidden"], truth["hidden"], atol=0.51 / 65535)
            np.testing.assert_array_equal(loaded["hidden_mask"], truth["hidden_mask"])
    # Reused when complete: nothing is rewritten.
    band = os.path.join(root, "train", "ms_masks", "sim_000_ms_1.png")
    os.utime(band, (1, 1))
    assert S.ensure_simulated(params, root) == root and os.path.getmtime(band) == 1
    # Other parameters in the same root replace it; a partial folder (no manifest) is rebuilt.
    other = S.SimulationParams(n_scenes=2, n_val=1, size=40, n_bands=3)
    S.ensure_simulated(other, root)
    assert [r.name for r in D.list_artextract(root, "train")] == ["sim_000"]
    assert D.load_scene(D.list_artextract(root, "val")[0])["bands"].shape == (40, 40, 3)
    os.remove(os.path.join(root, "manifest.json"))
    S.ensure_simulated(other, root)
    assert json.load(open(os.path.join(root, "manifest.json")))["fingerprint"] == other.fingerprint()
    assert sorted(os.listdir(tmp_path)) == ["sim"]  # no temporary folder left behind


def test_default_root_uses_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("XRAY_FLAX_CACHE", str(tmp_path))
    params = S.SimulationParams(n_scenes=1, n_val=0, size=32, n_bands=2)
    root = S.ensure_simulated(params)
    assert root == os.path.join(str(tmp_path), "simulated_multispectral", params.fingerprint())
    assert [r.name for r in D.list_artextract(root, "train")] == ["sim_000"]


def test_every_simulation_knob_is_a_config_key():
    """`--config.data.simulation.<knob>=...` works for every SimulationParams field."""
    config = hidden_config.get_hidden_config("plain")
    fields = {f.name: f.default for f in dataclasses.fields(S.SimulationParams)}
    assert set(config.data.simulation) == set(fields)
    defaults = {k: v for k, v in fields.items() if k not in ("n_scenes", "n_val", "size")}
    assert {k: config.data.simulation[k] for k in defaults} == defaults  # the switches are off


@pytest.mark.parametrize(
    "switch",
    [{"hidden_blur": 4.0}, {"nir_noise": 3.0}, {"hidden_brighter": True}, {"misregistration": 2.0}, {"band_blur": 2.0}],
)
def test_realism_switches(switch):
    base = S.SimulationParams(n_scenes=2, n_val=0, size=64)
    on = S.SimulationParams.from_config({"n_scenes": 2, "n_val": 0, "size": 64, **switch})
    a, b = S.simulate_layers(base, 0), S.simulate_layers(on, 0)
    if not {"hidden_blur", "hidden_brighter"} & set(switch):  # those change the hidden term, in the RGB too
        np.testing.assert_array_equal(a["rgb"], b["rgb"])
    np.testing.assert_array_equal(a["hidden_mask"], b["hidden_mask"])
    assert not np.array_equal(a["bands"], b["bands"])
    mask = a["hidden_mask"]
    effect = (b["visible_only"] - b["bands_clean"])[..., -1]
    if "hidden_brighter" in switch:
        assert effect[mask].mean() < -0.01  # the hidden layer now brightens the longest band
    else:
        assert effect[mask].mean() > 0.01
