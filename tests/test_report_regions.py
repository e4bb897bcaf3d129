"""Regions of a crafted anomaly map (also inside a mask of the painting), and their JSON / CSV files."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from scipy import ndimage

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


def framed_map():
    """A 60 x 80 map whose film margin (8 px all round, False in `painting`) scores 0.9, with a
    defect touching the painting's left edge and one inside it."""
    amap = np.full((60, 80), 0.1, np.float32)
    painting = np.zeros(amap.shape, bool)
    painting[8:52, 8:72] = True
    amap[~painting] = 0.9
    amap[20:30, 8:15] = 0.8  # touches the margin at x = 7
    amap[40:44, 50:60] = 0.7
    return amap, painting


def reference_regions(amap, inside, threshold, min_area=1):
    """(x0, y0, x1, y1, area) of scipy's 8-connected components of the masked map."""
    labels, _ = ndimage.label((amap >= threshold) & inside, structure=np.ones((3, 3), bool))
    found = []
    for label, (rows, cols) in enumerate(ndimage.find_objects(labels), start=1):
        area = int(np.count_nonzero(labels[rows, cols] == label))
        if area >= min_area:
            found.append((cols.start, rows.start, cols.stop, rows.stop, area))
    return sorted(found)


@pytest.mark.parametrize("factor", [1, 2, 3])
def test_pixels_outside_the_foreground_never_join_a_region(factor):
    amap, painting = framed_map()
    # The painting at 1/factor (blocks wholly inside it), as the overlay's thumbnail mask is.
    h, w = -(-painting.shape[0] // factor), -(-painting.shape[1] // factor)
    padded = np.pad(painting, ((0, h * factor - painting.shape[0]), (0, w * factor - painting.shape[1])), "edge")
    small = padded.reshape(h, factor, w, factor).all(axis=(1, 3))
    inside = np.kron(small, np.ones((factor, factor), bool))[: amap.shape[0], : amap.shape[1]]
    assert not np.any(inside & ~painting)
    found = regions.find_regions(amap, 0.5, foreground=small, factor=factor)
    assert sorted((r.x0, r.y0, r.x1, r.y1, r.area) for r in found) == reference_regions(amap, inside, 0.5)
    assert len(found) == 2  # the margin is no region, the edge defect is one of its own
    edge = next(r for r in found if r.y0 == 20)
    assert edge.x0 <= 8 + factor and edge.x1 == 15 and edge.max_score == pytest.approx(0.8)
    # Without the mask the margin frames the scan and swallows the edge defect.
    assert [(r.x0, r.y0, r.x1, r.y1) for r in regions.find_regions(amap, 0.5)] == [(0, 0, 80, 60), (50, 40, 60, 44)]
    with pytest.raises(ValueError, match="does not match the map"):
        regions.find_regions(amap, 0.5, foreground=small[1:], factor=factor)


def test_inside_painting_leaves_a_rim_along_the_background_not_the_scan_border():
    foreground = np.ones((20, 30), bool)
    foreground[:, :5] = False  # film margin on the left; the painting reaches the other borders
    inside = regions.inside_painting(foreground, factor=1, tile=32)  # rim 32 / 16 = 2 px
    assert inside[:, 7:].all() and not inside[:, :7].any()
    # On a thumbnail at 1/4 the 2 px rim takes one whole thumbnail pixel; a 256 px tile's 16 px, four.
    small_tile = regions.inside_painting(foreground, factor=4, tile=32)
    assert small_tile[:, 6:].all() and not small_tile[:, :6].any()
    large_tile = regions.inside_painting(foreground, factor=4, tile=256)
    assert large_tile[:, 9:].all() and not large_tile[:, :9].any()
    assert regions.inside_painting(None, 1, 32) is None
