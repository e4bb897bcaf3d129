"""Anomaly kinds: the simulators' kind maps (and scans unchanged by them), MVTec kinds from
folders, tile kinds, the per-kind tile ROC-AUC and the `kind` column of scores.csv."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import os

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from configs import tiny
from xray_flax import evaluate, metrics, workflow
from xray_flax.data import kinds, layouts, pipeline, sim_primitives, simulate, tiling
from xray_flax.scoring import SplitScores

HARD_KINDS = ("paint_losses", "scratches", "fillings", "white_spots", "nails", "foreign_objects")
EASY = simulate.SimulationParams(
    n_scans=2,
    height=256,
    width=224,
    paint_losses=2,
    white_spots=2,
    nails=1,
    foreign_objects=1,
    scale_counts_to_area=False,
)
HARD = simulate.SimulationParams(
    n_scans=2, height=256, width=224, difficulty="hard", scale_counts_to_area=False, **{k: 2 for k in HARD_KINDS}
)
# Which count of SimulationParams draws which kind of the kind map.
KIND_OF_COUNT = {
    "paint_losses": "paint_loss",
    "scratches": "scratch",
    "fillings": "filling",
    "white_spots": "white_spot",
    "nails": "nail",
    "foreign_objects": "foreign_object",
}


def _sha(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


# Hashes of scans and masks computed with the generator before it recorded kinds (commit
# 8b4bd82): recording kinds must not move a single random draw, or published numbers change.
@pytest.mark.parametrize(
    "params, index, scan_hash, mask_hash",
    [
        (EASY, 0, "093d04cf39ac5b51", "e7eb383d67fc8f17"),
        (EASY, 1, "db512462674b621d", "74d638d09e1aa469"),
        (HARD, 0, "429f36d5384028fc", "9d616ca6f6031915"),
        (HARD, 1, "196ee9f904319a2c", "08c4739285964bce"),
        (dataclasses.replace(EASY, anomaly_contrast=0.3), 0, "f5e6f222c36c24c6", "e7eb383d67fc8f17"),
    ],
    ids=["easy-panel", "easy-canvas", "hard-panel", "hard-canvas", "easy-contrast"],
)
def test_scans_and_masks_are_unchanged_by_recording_kinds(params, index, scan_hash, mask_hash):
    scan, marks = simulate.simulate_scan_with_kinds(params, index)
    assert (_sha(scan), _sha(marks.mask)) == (scan_hash, mask_hash)
    plain_scan, plain_mask = simulate.simulate_scan(params, index)
    np.testing.assert_array_equal(plain_scan, scan)
    np.testing.assert_array_equal(plain_mask, marks.mask)


def _kinds_present(kind_map: np.ndarray) -> set[str]:
    bits = int(np.bitwise_or.reduce(kind_map, axis=None))
    return set(kinds.bit_names(bits, sim_primitives.KIND_NAMES))


@pytest.mark.parametrize("params", [EASY, HARD], ids=["easy", "hard"])
def test_kind_map_is_set_exactly_where_the_mask_is(params):
    for index in range(2):
        _, marks = simulate.simulate_scan_with_kinds(params, index)
        assert marks.kinds.dtype == np.uint8 and marks.mask.any()
        np.testing.assert_array_equal(marks.kinds > 0, marks.mask)


@pytest.mark.parametrize("count", HARD_KINDS)
def test_each_hard_kind_is_recorded_as_itself(count):
    params = dataclasses.replace(HARD, **{**dict.fromkeys(HARD_KINDS, 0), count: 3})
    _, marks = simulate.simulate_scan_with_kinds(params, 0)
    assert KIND_OF_COUNT[count] in _kinds_present(marks.kinds)
    assert _kinds_present(marks.kinds) <= {KIND_OF_COUNT[count], "faint"}


@pytest.mark.parametrize("count", ("paint_losses", "white_spots", "nails", "foreign_objects"))
def test_each_easy_kind_is_recorded_as_itself(count):
    params = dataclasses.replace(
        EASY, **{**dict.fromkeys(("paint_losses", "white_spots", "nails", "foreign_objects"), 0), count: 2}
    )
    _, marks = simulate.simulate_scan_with_kinds(params, 0)
    assert _kinds_present(marks.kinds) == {KIND_OF_COUNT[count]}  # the easy anomalies are never faint


def test_faint_marks_the_weakest_losses_only():
    params = dataclasses.replace(HARD, **{**dict.fromkeys(HARD_KINDS, 0), "paint_losses": 12})
    _, marks = simulate.simulate_scan_with_kinds(params, 0)
    faint = (marks.kinds >> sim_primitives.KIND_NAMES.index("faint")) & 1 == 1
    loss = (marks.kinds >> sim_primitives.KIND_NAMES.index("paint_loss")) & 1 == 1
    assert faint.any() and (loss & ~faint).any()  # some of the 12 are faint, not all
    assert not (faint & ~loss).any()


def test_cache_holds_the_kind_maps_and_names_them(tmp_path):
    params = dataclasses.replace(HARD, n_scans=1)
    folder = simulate.ensure_simulated(params, str(tmp_path / "sim"))
    with open(os.path.join(folder, "manifest.json")) as f:
        assert json.load(f)["kinds"] == list(sim_primitives.KIND_NAMES)
    kind_map, names = kinds.read_kind_map(os.path.join(folder, "scan_000_kinds.npz"))
    assert names == sim_primitives.KIND_NAMES
    np.testing.assert_array_equal(kind_map, simulate.simulate_scan_with_kinds(params, 0)[1].kinds)
    # The kind map is not a scan of the scans layout.
    assert [os.path.basename(r.path) for r in layouts.scans_layout(folder)] == ["scan_000.png"]


def _make_old_cache(params, folder):
    """A cache as the generator wrote it before kinds: no kind maps, no `kinds` in the manifest."""
    simulate.ensure_simulated(params, folder)
    os.remove(os.path.join(folder, "scan_000_kinds.npz"))
    with open(os.path.join(folder, "manifest.json")) as f:
        manifest = json.load(f)
    for key in ("kinds", "kind_maps"):
        manifest.pop(key)
    with open(os.path.join(folder, "manifest.json"), "w") as f:
        json.dump(manifest, f)


def test_an_old_cache_gets_its_kind_maps_without_being_rewritten(tmp_path):
    params, folder = dataclasses.replace(EASY, n_scans=1), str(tmp_path / "sim")
    _make_old_cache(params, folder)
    scan_path = os.path.join(folder, "scan_000.png")
    os.utime(scan_path, (1, 1))
    assert simulate.ensure_simulated(params, folder) == folder
    assert os.path.getmtime(scan_path) == 1  # the scans stay as they were
    kind_map, _ = kinds.read_kind_map(os.path.join(folder, "scan_000_kinds.npz"))
    np.testing.assert_array_equal(kind_map, simulate.simulate_scan_with_kinds(params, 0)[1].kinds)


def test_an_old_cache_whose_mask_differs_keeps_unknown_kinds_and_is_tried_once(tmp_path, caplog, monkeypatch):
    params, folder = dataclasses.replace(EASY, n_scans=1), str(tmp_path / "sim")
    _make_old_cache(params, folder)
    Image.fromarray(np.zeros((256, 224), np.uint8)).save(os.path.join(folder, "scan_000_mask.png"))
    with caplog.at_level(logging.WARNING):
        simulate.ensure_simulated(params, folder)
    assert "kinds stay unknown" in caplog.text
    assert not os.path.exists(os.path.join(folder, "scan_000_kinds.npz"))
    monkeypatch.setattr(simulate, "add_kind_maps", lambda *a: pytest.fail("tried again"))
    assert simulate.ensure_simulated(params, folder) == folder


def _data_config(**overrides):
    config = tiny.get_config("highpass").data
    for key, value in overrides.items():
        config[key] = value
    return config


def test_every_anomalous_simulated_tile_has_its_kinds(tmp_path):
    config = _data_config()
    config.simulated.cache_dir = str(tmp_path / "sim")
    splits = pipeline.prepare_splits(config, None)
    table = pipeline.split_tiles(splits, "test", config)
    found = kinds.tile_kinds(splits.test, "simulated", table.scan_index, table.y, table.x, table.label, 32)
    anomalous = table.label == tiling.LABEL_ANOMALOUS
    assert anomalous.any()
    assert all(found[i] for i in np.flatnonzero(anomalous))
    assert not any(found[i] for i in np.flatnonzero(~anomalous))


def _png(path, h=32, w=32):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((h, w), 30000, np.uint16)).save(path)


def _mask(path, h=32, w=32):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    mask = np.zeros((h, w), np.uint8)
    mask[:8, :8] = 255
    Image.fromarray(mask).save(path)


def test_mvtec_kinds_are_the_test_folders(tmp_path):
    root = tmp_path / "bottle"
    _png(root / "train/good/000.png")
    _png(root / "test/good/000.png", 64, 64)
    _png(root / "test/crack/000.png", 64, 64)
    _mask(root / "ground_truth/crack/000_mask.png", 64, 64)
    _png(root / "test/scratch/000.png")  # no ground truth: one tile spanning the image, label 1
    config = _data_config(source="mvtec", root=str(root), split_fractions=(0.6, 0.0, 0.4))
    config.background.rule = "none"
    splits = pipeline.prepare_splits(config, None)
    table = pipeline.split_tiles(splits, "test", config)
    found = kinds.tile_kinds(splits.test, "mvtec", table.scan_index, table.y, table.x, table.label, 32)
    by_tile = {
        (layouts.mvtec_kind(splits.test[s].path), int(y), int(x)): (int(label), k)
        for s, y, x, label, k in zip(table.scan_index, table.y, table.x, table.label, found)
    }
    assert by_tile[("crack", 0, 0)] == (1, ("crack",))
    assert by_tile[("crack", 32, 32)] == (0, ())  # a clean tile of an anomalous image: normal, no kind
    assert by_tile[("scratch", 0, 0)] == (1, ("scratch",))
    assert all(k == () for (kind, _, _), (_, k) in by_tile.items() if kind == "good")
    # Other layouts carry no kinds.
    assert kinds.tile_kinds(splits.test, "folder", table.scan_index, table.y, table.x, table.label, 32) is None


def test_per_kind_roc_auc_equals_sklearn_by_hand():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, -1, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.9, 0.3, 0.7, 0.5, 0.99, 0.2])
    tile_kinds = [
        (),
        (),
        (),
        (),
        ("nail",),
        ("paint_loss", "faint"),
        ("nail", "paint_loss"),
        ("scratch",),
        ("nail",),
        (),
    ]
    per_kind = metrics.per_kind_roc_auc(labels, scores, tile_kinds)
    assert list(per_kind) == ["faint", "nail", "paint_loss", "scratch"]  # the unknown tile's nail is not counted
    normal = [0.1, 0.4, 0.35, 0.8]
    for kind, anomalous in {"nail": [0.9, 0.7], "paint_loss": [0.3, 0.7], "faint": [0.3], "scratch": [0.5]}.items():
        expected = roc_auc_score([0] * 4 + [1] * len(anomalous), normal + anomalous)
        assert per_kind[kind] == {"roc_auc": pytest.approx(expected, abs=1e-12), "n_anomalous": len(anomalous)}
    without_normals = metrics.per_kind_roc_auc(np.array([1]), np.array([0.5]), [("nail",)])
    assert without_normals == {"nail": {"roc_auc": None, "n_anomalous": 1}}


def test_scores_csv_appends_the_kind_column(tmp_path):
    records = [layouts.ScanRecord("a.png"), layouts.ScanRecord("b.png")]
    splits = layouts.Splits([], [], records)
    n = 3
    test = SplitScores(
        np.array([0, 1, 1]), np.array([0.1, 0.9, 0.6]), np.array([0, 1, 1]), np.zeros(n), np.zeros(n), [], [], [], {}
    )
    path = str(tmp_path / "scores.csv")
    evaluate.write_scores_csv(path, splits, {"test": test}, 0.5, {"test": [(), ("nail", "faint"), ("scratch",)]})
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["split", "image", "y", "x", "label", "score", "predicted_anomalous", "kind"]
    assert [r["kind"] for r in rows] == ["", "nail+faint", "scratch"]
    evaluate.write_scores_csv(path, splits, {"test": test}, 0.5)  # kinds unknown: an empty column
    with open(path) as f:
        assert [r["kind"] for r in csv.DictReader(f)] == ["", "", ""]


def test_evaluation_writes_per_kind_metrics(tmp_path):
    config = tiny.get_config("highpass")
    config.data.simulated.cache_dir = str(tmp_path / "sim")
    report = workflow.train_and_evaluate(config, str(tmp_path / "run"))
    with open(tmp_path / "run" / "metrics.json") as f:
        written = json.load(f)
    per_kind = written["test"]["per_kind"]
    assert per_kind and per_kind == report["test"]["per_kind"]
    assert set(per_kind) <= set(sim_primitives.KIND_NAMES)
    for entry in per_kind.values():
        assert set(entry) == {"roc_auc", "n_anomalous"} and entry["n_anomalous"] > 0
    assert "per_kind" in written["val"]
    with open(tmp_path / "run" / "scores.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
    for kind, entry in per_kind.items():
        holding = [r for r in rows if r["label"] == "1" and kind in r["kind"].split("+")]
        normal = [r for r in rows if r["label"] == "0"]
        assert len(holding) == entry["n_anomalous"]
        expected = roc_auc_score([0] * len(normal) + [1] * len(holding), [float(r["score"]) for r in normal + holding])
        assert entry["roc_auc"] == pytest.approx(expected, abs=1e-9)
