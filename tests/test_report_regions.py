"""Regions of a crafted anomaly map, and their JSON / CSV files."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from xray_flax.report import regions


def crafted_map():
    amap = np.full((40, 60), 0.1, np.float32)
    amap[5:10, 5:15] = 0.6  # A: 5x10 block, max 0.95 at (7, 8)
    amap[7, 8] = 0.95
    amap[20, 30] = amap[21, 31] = amap[22, 32] = 0.8  # B: diagonal line, 8-connected only
    amap[30:38, 50:58] = 0.7  # C: 8x8 block, max 0.7
    amap[2, 50] = 0.99  # D: single pixel, highest score, area 1
    return amap


def test_regions_match_the_components():
    found = regions.find_regions(crafted_map(), threshold=0.5)
    assert [r.id for r in found] == [1, 2, 3, 4]
    d, a, b, c = found
    assert (d.x0, d.y0, d.x1, d.y1, d.area, d.max_score) == (50, 2, 51, 3, 1, pytest.approx(0.99))
    assert (a.x0, a.y0, a.x1, a.y1, a.area) == (5, 5, 15, 10, 50)
    assert a.max_score == pytest.approx(0.95) and (a.peak_y, a.peak_x) == (7, 8)
    assert a.mean_score == pytest.approx((49 * 0.6 + 0.95) / 50)
    # The diagonal joins into one region: 8-connectivity.
    assert (b.x0, b.y0, b.x1, b.y1, b.area) == (30, 20, 33, 23, 3)
    assert (c.x0, c.y0, c.x1, c.y1, c.area, c.width, c.height) == (50, 30, 58, 38, 64, 8, 8)
    assert c.mean_score == pytest.approx(0.7)


def test_min_area_max_regions_and_threshold():
    amap = crafted_map()
    assert [r.area for r in regions.find_regions(amap, 0.5, min_area=4)] == [50, 64]
    assert [r.area for r in regions.find_regions(amap, 0.5, max_regions=2)] == [1, 50]
    assert regions.find_regions(amap, 0.999) == []
    assert [r.area for r in regions.find_regions(amap, 0.9)] == [1, 1]


def test_json_and_csv_round_trip(tmp_path):
    found = regions.find_regions(crafted_map(), 0.5)
    regions.write_regions_json(tmp_path / "r.json", found, metadata={"threshold": 0.5})
    payload = json.loads((tmp_path / "r.json").read_text())
    assert payload["metadata"] == {"threshold": 0.5}
    assert regions.read_regions_json(tmp_path / "r.json") == found
    regions.write_regions_csv(tmp_path / "r.csv", found)
    with open(tmp_path / "r.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(row["area"]) for row in rows] == [r.area for r in found]
    assert list(rows[0]) == list(regions.FIELDS)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        regions.read_regions_json(tmp_path / "missing.json")
