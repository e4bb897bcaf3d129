"""The simulated X-radiographs: determinism, 16-bit output, anomaly masks, cache."""

import json
import os

import numpy as np
import pytest
from scipy import ndimage

from xray_flax.data import config as data_config_lib
from xray_flax.data import pipeline, readers, simulate

SMALL = simulate.SimulationParams(
    n_scans=2,
    height=256,
    width=224,
    paint_losses=2,
    white_spots=2,
    nails=1,
    foreign_objects=1,
    scale_counts_to_area=False,
)


def test_deterministic_by_seed_and_16_bit():
    a, ma = simulate.simulate_scan(SMALL, 0)
    b, mb = simulate.simulate_scan(SMALL, 0)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ma, mb)
    c, _ = simulate.simulate_scan(SMALL, 1)
    d, _ = simulate.simulate_scan(simulate.SimulationParams(**{**SMALL.__dict__, "seed": 1}), 0)
    assert not np.array_equal(a, c) and not np.array_equal(a, d)
    assert a.dtype == np.uint16 and a.shape == (256, 224) and ma.dtype == bool
    assert len(np.unique(a)) > 4096  # genuinely more than 8 bits of levels
    assert ma.any()


def _scan_with(kind_counts, seed=0):
    params = simulate.SimulationParams(
        n_scans=1,
        height=320,
        width=320,
        seed=seed,
        scale_counts_to_area=False,
        **{k: kind_counts.get(k, 0) for k in ("paint_losses", "white_spots", "nails", "foreign_objects")},
    )
    clean, clean_mask = simulate.simulate_scan(
        simulate.SimulationParams(
            **{**params.__dict__, "paint_losses": 0, "white_spots": 0, "nails": 0, "foreign_objects": 0}
        ),
        0,
    )
    scan, mask = simulate.simulate_scan(params, 0)
    assert not clean_mask.any()
    return clean.astype(np.float64), scan.astype(np.float64), mask


def test_synthesis_kinds_have_the_expected_contrast():
    clean, scan, mask = _scan_with({"paint_losses": 3})
    assert mask.sum() > 200
    assert scan[mask].mean() < clean[mask].mean() - 5000  # paint loss: much darker
    for kind in ("white_spots", "nails", "foreign_objects"):
        clean, scan, mask = _scan_with({kind: 3}, seed=2)
        assert mask.sum() > 30, kind
        assert scan[mask].mean() > clean[mask].mean() + 5000, kind  # dense: brighter
        # Outside the masks nothing changed, except within the detector blur's reach (~3 px).
        far = ~ndimage.binary_dilation(mask, structure=np.ones((3, 3)), iterations=4)
        np.testing.assert_array_equal(scan[far], clean[far])


def test_margin_is_dark_background():
    scan, _ = simulate.simulate_scan(SMALL, 0)
    edge = scan[:5].astype(np.float64) / 65535
    assert edge.mean() < 0.08 and scan[100:150, 100:150].mean() / 65535 > 0.2


def test_cache_is_reused_and_keyed_by_params(tmp_path, monkeypatch):
    monkeypatch.setenv("XRAY_FLAX_CACHE", str(tmp_path))
    folder = simulate.ensure_simulated(SMALL)
    assert folder == os.path.join(str(tmp_path), "simulated", SMALL.fingerprint())
    files = sorted(os.listdir(folder))
    assert files == [
        "manifest.json",
        "scan_000.png",
        "scan_000_kinds.npz",
        "scan_000_mask.png",
        "scan_001.png",
        "scan_001_kinds.npz",
        "scan_001_mask.png",
    ]
    with open(os.path.join(folder, "manifest.json")) as f:
        assert "SIMULATED" in json.load(f)["note"]
    stamp = os.path.getmtime(os.path.join(folder, "scan_000.png"))
    assert simulate.ensure_simulated(SMALL) == folder
    assert os.path.getmtime(os.path.join(folder, "scan_000.png")) == stamp
    other = simulate.SimulationParams(**{**SMALL.__dict__, "seed": 7})
    assert simulate.ensure_simulated(other) != folder
    # Written at 16 bits and read back exactly.
    scan, mask = simulate.simulate_scan(SMALL, 1)
    r = readers.open_scan(os.path.join(folder, "scan_001.png"))
    assert r.bit_depth == 16
    np.testing.assert_array_equal(np.round(r.read_region(0, 0, 256, 224)[..., 0] * 65535), scan)
    np.testing.assert_array_equal(readers.read_mask(os.path.join(folder, "scan_001_mask.png"), (256, 224)), mask)


def test_tiff_output(tmp_path):
    params = simulate.SimulationParams(**{**SMALL.__dict__, "n_scans": 1, "file_format": "tiff"})
    folder = simulate.ensure_simulated(params, str(tmp_path / "sim"))
    r = readers.open_scan(os.path.join(folder, "scan_000.tif"))
    np.testing.assert_array_equal(
        np.round(r.read_region(0, 0, 256, 224)[..., 0] * 65535), simulate.simulate_scan(params, 0)[0]
    )


def test_default_config_gives_usable_splits(tmp_path):
    """The contract with the default run: both classes in val and test (>= 15 % anomalous),
    plenty of clean training tiles."""
    c = data_config_lib.defaults()
    c.simulated.cache_dir = str(tmp_path / "sim")
    splits = pipeline.prepare_splits(c, str(tmp_path / "work"))
    for split in ("val", "test"):
        labels = pipeline.split_tiles(splits, split, c).label
        assert 0.15 <= (labels == 1).mean() <= 0.5, split
    train = pipeline.split_tiles(splits, "train", c)
    assert ((train.label == 0) & (train.masked == 0)).sum() >= 500


def test_explicit_cache_dir_with_other_params_is_regenerated(tmp_path):
    folder = str(tmp_path / "sim")
    simulate.ensure_simulated(SMALL, folder)
    other = simulate.SimulationParams(**{**SMALL.__dict__, "n_scans": 1, "seed": 3})
    assert simulate.ensure_simulated(other, folder) == folder
    assert sorted(os.listdir(folder)) == ["manifest.json", "scan_000.png", "scan_000_kinds.npz", "scan_000_mask.png"]
    r = readers.open_scan(os.path.join(folder, "scan_000.png"))
    np.testing.assert_array_equal(
        np.round(r.read_region(0, 0, 256, 224)[..., 0] * 65535), simulate.simulate_scan(other, 0)[0]
    )
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".sim-")]  # no temp left behind


def test_crowded_small_scans_never_fail():
    # Anomalies near or past the borders (wires wander off, nails at the edge) must clip.
    for seed in range(12):
        params = simulate.SimulationParams(
            n_scans=1,
            height=96,
            width=80,
            paint_losses=6,
            white_spots=6,
            nails=6,
            foreign_objects=10,
            seed=seed,
            scale_counts_to_area=False,
        )
        scan, mask = simulate.simulate_scan(params, 0)
        assert scan.shape == mask.shape == (96, 80)


def test_counts_scale_with_area():
    ref = simulate.SimulationParams()
    assert ref.anomaly_counts() == {
        "paint_losses": 8,
        "scratches": 0,
        "fillings": 0,
        "white_spots": 10,
        "nails": 5,
        "foreign_objects": 3,
    }
    double = simulate.SimulationParams(height=2560)
    assert double.anomaly_counts() == {
        "paint_losses": 16,
        "scratches": 0,
        "fillings": 0,
        "white_spots": 20,
        "nails": 10,
        "foreign_objects": 6,
    }
    tiny = simulate.SimulationParams(height=256, width=224, nails=0)
    assert tiny.anomaly_counts() == {
        "paint_losses": 1,
        "scratches": 0,
        "fillings": 0,
        "white_spots": 1,
        "nails": 0,
        "foreign_objects": 1,
    }
    literal = simulate.SimulationParams(height=256, width=224, scale_counts_to_area=False)
    assert literal.anomaly_counts()["white_spots"] == 10


def test_synthesis_contrast_scales_the_departure():
    full = simulate.SimulationParams(**{**SMALL.__dict__, "n_scans": 1})
    faint = simulate.SimulationParams(**{**full.__dict__, "anomaly_contrast": 0.3})
    clean = simulate.SimulationParams(
        **{**full.__dict__, "paint_losses": 0, "white_spots": 0, "nails": 0, "foreign_objects": 0}
    )
    (a, mask), (b, mask_b), (c, _) = (simulate.simulate_scan(p, 0) for p in (full, faint, clean))
    np.testing.assert_array_equal(mask, mask_b)
    d_full = np.abs(a[mask].astype(float) - c[mask]).mean()
    d_faint = np.abs(b[mask].astype(float) - c[mask]).mean()
    assert d_faint == pytest.approx(0.3 * d_full, rel=0.1)
