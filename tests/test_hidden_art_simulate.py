"""Simulated multispectral paintings (xray_flax.hidden_art.simulate): determinism, the truth lies
exactly where the hidden layer changes the painting, the hidden layer shows more in longer bands,
the plain difference is beaten by a per-pixel regression, and the ensure_simulated round trip
through the ArtExtract readers."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import numpy as np
import pytest
from scipy import ndimage
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


# The painting switches: pentimenti, metamers, carbon in the visible paint, bands to 2,500 nm.
TINY = {"n_scenes": 2, "n_val": 0, "size": 64}


def _sha(*arrays) -> str:
    return hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)).hexdigest()[:16]


# Hashes of (rgb, bands, hidden) of the default 64 px scenes, computed with the generator before
# these switches existed (commit a90c6f4): off, they must not move a single value.
@pytest.mark.parametrize("index, digest", [(0, "0c4636447cedfe58"), (1, "b81548c9a54bcaa1")])
def test_painting_switches_off_leave_the_default_scene_bit_identical(index, digest):
    default = S.simulate_layers(S.SimulationParams(**TINY), index)
    assert _sha(default["rgb"], default["bands"], default["hidden"]) == digest
    off = {"pentimenti": 0.0, "metamers": False, "carbon_paint": 0.0, "wavelength_max": 1000.0}
    explicit = S.simulate_layers(S.SimulationParams.from_config({**TINY, **off}), index)
    for k in ("rgb", "bands", "hidden", "pigment_weights"):
        np.testing.assert_array_equal(default[k], explicit[k])


def _mean_distance_to_visible_edges(layers) -> float:
    """Mean distance (px) of the hidden mask's pixels to the nearest border between visible regions."""
    regions = layers["regions"]
    edges = np.zeros(regions.shape, bool)
    edges[:-1] |= regions[:-1] != regions[1:]
    edges[:, :-1] |= regions[:, :-1] != regions[:, 1:]
    return float(ndimage.distance_transform_edt(~edges)[layers["hidden_mask"]].mean())


def test_pentimenti_lie_along_the_visible_edges():
    """Index 0 is an underdrawing: with pentimenti its lines follow the visible figures' borders
    (moved a little), so the hidden mask lies closer to the visible edges; half keeps part of the
    independent drawing. The visible painting is the same."""
    layers = {f: S.simulate_layers(S.SimulationParams(**TINY, pentimenti=f), 0) for f in (0.0, 0.5, 1.0)}
    distance = {f: _mean_distance_to_visible_edges(layers[f]) for f in layers}
    assert distance[1.0] < distance[0.5] < distance[0.0] and distance[1.0] < 0.5 * distance[0.0], distance
    masks = {f: layers[f]["hidden_mask"] for f in layers}
    assert masks[1.0].mean() > 0.02 and (masks[0.5] & masks[0.0]).sum() > (masks[1.0] & masks[0.0]).sum()
    np.testing.assert_array_equal(layers[0.0]["pigment_weights"], layers[1.0]["pigment_weights"])
    composition = S.simulate_layers(S.SimulationParams(**TINY, pentimenti=1.0), 1)
    assert composition["hidden_mask"].mean() > 0.02  # earlier forms, not contours, for the other kind
    assert S.SimulationParams.from_config({"pentimenti": True}).pentimenti == 1.0


def test_metamers_match_in_rgb_and_differ_in_the_infrared():
    off, on = (S.simulate_layers(S.SimulationParams(**TINY, metamers=m), 0) for m in (False, True))
    k = len(S.PIGMENTS)
    twin = on["pigment_weights"][..., k:].sum(axis=-1)
    assert on["pigment_weights"].shape[-1] == k + len(S.METAMER_TWINS) and 0.1 < (twin > 0.5).mean() < 0.9
    np.testing.assert_allclose(on["rgb"], off["rgb"], atol=1e-5)  # the same colours everywhere
    np.testing.assert_allclose(on["pigment_weights"].sum(-1), 1.0, atol=1e-5)
    longest = np.abs(on["bands_clean"][..., -1] - off["bands_clean"][..., -1])  # the 1,000 nm band
    assert longest[twin > 0.5].mean() > 0.05
    np.testing.assert_allclose(on["bands_clean"][twin < 1e-6], off["bands_clean"][twin < 1e-6], atol=1e-5)


def test_carbon_paint_darkens_the_bands_and_the_rgb():
    off, on = (S.simulate_layers(S.SimulationParams(**TINY, carbon_paint=c), 0) for c in (0.0, 0.5))
    black = S._NAMES.index("carbon_black")
    carbon = on["pigment_weights"][..., black] - off["pigment_weights"][..., black]
    where = carbon > 0.03
    assert 0.02 < where.mean() < 0.98
    darker = (off["visible_only"] - on["visible_only"])[where].mean(axis=0)
    assert np.all(darker > 0.005), darker  # every band, 400-1,000 nm
    assert np.all((off["rgb"] - on["rgb"])[where].mean(axis=0) > 0.01)  # and it shows in RGB
    untouched = carbon == 0
    np.testing.assert_allclose(on["visible_only"][untouched], off["visible_only"][untouched], atol=1e-6)
    everywhere = S.simulate_layers(S.SimulationParams(**TINY, carbon_paint=1.0), 0)
    assert (everywhere["pigment_weights"][..., black] - off["pigment_weights"][..., black] > 0.03).mean() > 0.9


def test_bands_to_2500_nm_see_the_hidden_layer_better():
    """8 bands over 400-2,500 nm (300 nm apart: 1,000 nm is the third): paint grows more
    transparent, so every longer band shows more hidden contrast than 1,000 nm. The tables at
    400-1,000 nm are the silicon range's, unchanged."""
    params = S.SimulationParams(**TINY, wavelength_max=2500.0)
    np.testing.assert_allclose(S.band_wavelengths(params), [400, 700, 1000, 1300, 1600, 1900, 2200, 2500])
    for index in (0, 1):
        layers = S.simulate_layers(params, index)
        contrast = (layers["visible_only"] - layers["bands_clean"])[layers["hidden_mask"]].mean(axis=0)
        assert np.all(np.diff(contrast[2:]) > 0) and contrast[-1] > 1.5 * contrast[2], contrast
    lam = np.linspace(400.0, 1000.0, 31)
    r_inf, _, ground = S._tables(lam)
    silicon = np.stack([np.interp(lam, S._KNOTS[:10], p.reflectance) for p in S._SILICON_RANGE.values()])
    np.testing.assert_array_equal(r_inf, silicon.astype(np.float32))
    np.testing.assert_array_equal(ground, np.interp(lam, S._KNOTS[:10], S._GROUND[:10]).astype(np.float32))


@pytest.mark.parametrize(
    "values, key",
    [
        ({"pentimenti": 1.5}, "pentimenti"),
        ({"pentimenti": -0.1}, "pentimenti"),
        ({"carbon_paint": 2.0}, "carbon_paint"),
        ({"metamers": "yes"}, "metamers"),
        ({"wavelength_max": 3000.0}, "wavelength_max"),
    ],
)
def test_invalid_painting_switches_name_their_key(values, key):
    with pytest.raises(ValueError, match=rf"config\.data\.simulation\.{key}="):
        S.SimulationParams(**values)
