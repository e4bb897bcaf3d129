"""The hard simulated radiographs (xray_flax/data/radiograph.py): determinism, the kinds'
effects on the film, the normal structures, the settings' validation."""

import dataclasses
import importlib

import numpy as np
import pytest
from scipy import ndimage

from configs import hard
from xray_flax.data import radiograph, simulate

KINDS = ("paint_losses", "scratches", "fillings", "white_spots", "nails", "foreign_objects")


def _params(**kw):
    fields = dict(
        n_scans=1, height=384, width=320, difficulty="hard", scale_counts_to_area=False, **{k: 0 for k in KINDS}
    )
    return simulate.SimulationParams(**{**fields, **kw})


def test_deterministic_16_bit_and_seeded():
    params = _params(paint_losses=2, nails=1)
    a, ma = simulate.simulate_scan(params, 0)
    b, mb = simulate.simulate_scan(params, 0)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ma, mb)
    c, _ = simulate.simulate_scan(dataclasses.replace(params, seed=1), 0)
    assert not np.array_equal(a, c)
    assert a.dtype == np.uint16 and a.shape == (384, 320) and ma.any()
    assert len(np.unique(a)) > 4096  # more than 8 bits of levels
    # The easy generator is not this one.
    easy, _ = simulate.simulate_scan(dataclasses.replace(params, difficulty="easy", scratches=0, fillings=0), 0)
    assert not np.array_equal(a, easy)


def test_easy_fingerprints_ignore_the_hard_only_fields():
    easy = simulate.SimulationParams()
    # The value before the hard setting existed (commit ee553a8): easy caches stay valid.
    assert easy.fingerprint() == "53071db314ffcd5e"
    hard = simulate.SimulationParams(difficulty="hard")
    assert hard.fingerprint() != easy.fingerprint()
    assert dataclasses.replace(hard, scratches=2).fingerprint() != hard.fingerprint()


def test_settings_are_validated():
    with pytest.raises(ValueError, match="difficulty"):
        simulate.SimulationParams(difficulty="medium")
    with pytest.raises(ValueError, match="hard setting only"):
        simulate.SimulationParams(scratches=1)


def _clean_and_with(kind, count, seed=0, support="panel"):
    clean_params = _params(seed=seed, support=support)
    clean, clean_mask = simulate.simulate_scan(clean_params, 0)
    scan, mask = simulate.simulate_scan(dataclasses.replace(clean_params, **{kind: count}), 0)
    assert not clean_mask.any() and mask.any()
    return clean.astype(np.float64), scan.astype(np.float64), mask


@pytest.mark.parametrize(
    "kind, sign", [("paint_losses", -1), ("scratches", -1), ("white_spots", 1), ("nails", 1), ("foreign_objects", 1)]
)
def test_each_kind_changes_the_film_inside_its_mask(kind, sign):
    clean, scan, mask = _clean_and_with(kind, 3)
    diff = scan - clean
    near = ndimage.binary_dilation(mask, iterations=6)
    inside = sign * diff[mask].mean()
    # Dense = bright: losses darken, inclusions and metal brighten.
    assert inside > 200, (kind, inside)
    # Far from the anomalies only the scatter fog and the exposure reference move: a few codes.
    assert np.abs(diff[~near]).mean() < 0.05 * inside, (kind, np.abs(diff[~near]).mean(), inside)


def test_fillings_replace_texture_at_about_the_surrounding_density():
    clean, scan, mask = _clean_and_with("fillings", 3, seed=2)
    region = ndimage.binary_erosion(mask, iterations=2)
    assert region.sum() > 50

    def texture(image):  # local high-pass energy
        return np.abs(image - ndimage.gaussian_filter(image, 2.0))

    assert texture(scan)[region].mean() < 0.8 * texture(clean)[region].mean()
    # Density within the filler's +-12 % of the layers (plus the film's gamma): no bright or dark blob.
    assert abs((scan - clean)[region].mean()) < 0.25 * clean[region].std() + 0.05 * clean[region].mean()


def test_canvas_has_a_stretcher_and_tacks_are_normal_bright_dots():
    rng = np.random.default_rng(3)
    shape = (400, 320)
    for _ in range(8):  # the tacking edge shows in about half of the canvases
        wood, tacks = radiograph.stretcher(rng, shape, margin=0.04)
        if tacks.any():
            break
    assert tacks.any()
    labels, n = ndimage.label(tacks > 0)
    assert n > 10  # a row of tacks along each edge
    inner = np.zeros(shape, bool)
    inner[60:-60, 60:-60] = True
    assert not (tacks > 0)[inner].any()  # only near the edges
    assert wood.max() > 0.4 and wood[200, 100] < wood[20, 100]  # bars at the edges, not inside


def test_scan_counts_follow_the_area_and_the_kinds():
    params = simulate.SimulationParams(difficulty="hard", scratches=4, fillings=2, height=640, width=512)
    counts = params.anomaly_counts()
    assert counts["scratches"] == 1 and counts["fillings"] == 1  # a quarter of 1280x1024, at least one
    assert set(counts) == set(KINDS)


@pytest.mark.parametrize("name, detector", [(None, "draem"), ("highpass", "highpass"), ("patch_nn", "patch_nn")])
def test_hard_config_changes_only_the_data(name, detector):
    config = hard.get_config(name)
    original = importlib.import_module(f"configs.{name or 'default'}").get_config()
    assert config.detector == detector
    assert config.data.simulated.difficulty == "hard" and config.data.patch_size == 128
    assert config.method.endswith("(hard data)")
    simulate.SimulationParams.from_config(config.data.simulated)  # a valid setting
    for section in config.keys():
        if section not in ("data", "method"):
            assert config[section] == original[section], section
