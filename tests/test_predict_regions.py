"""predict's regions lie inside the painting: the film margin, which the models score high, is
never a region, and a defect touching the painting's edge is a region of its own.

`predict.predict_scan` runs in-process with a NumPy stand-in for the jitted model whose map
is 1 - tile: the dark film margin scores near 1, as the trained models score it.
"""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from configs import tiny
from xray_flax import predict
from xray_flax.data import readers
from xray_flax.report import overlay, regions

MARGIN = 30  # px of dark film all round the painting


@pytest.fixture
def scan(tmp_path):
    """A 16-bit 300 x 270 scan: painting at 0.7 inside a dark margin, a paint loss (0.2, so
    scored 0.8) touching the painting's left edge and one in the middle."""
    rng = np.random.default_rng(0)
    pixels = np.full((300, 270), 0.02, np.float32)
    pixels[MARGIN:-MARGIN, MARGIN:-MARGIN] = 0.7 + 0.05 * rng.random((300 - 2 * MARGIN, 270 - 2 * MARGIN))
    pixels[120:160, MARGIN:60] = 0.2  # touches the margin at x = MARGIN - 1
    pixels[200:220, 150:180] = 0.25
    path = str(tmp_path / "scan.tif")
    tifffile.imwrite(path, np.round(pixels * 65535).astype(np.uint16))
    return path


@pytest.mark.parametrize("overlay_max_side", [2048, 100])  # thumbnail factors 1 and 3
def test_regions_lie_inside_the_painting_and_the_edge_defect_is_its_own(scan, tmp_path, overlay_max_side):
    config = tiny.get_config("highpass")
    config.eval.predict.min_region_area = 4
    config.eval.predict.overlay_max_side = overlay_max_side
    infer = types.SimpleNamespace(batch_size=4, anomaly_maps=lambda tiles: 1.0 - tiles[..., 0])
    out = tmp_path / "out"
    summary = predict.predict_scan(infer, scan, str(out), config, 0.5, {"checkpoint": "/runs/x/best/1"})
    found = regions.read_regions_json(out / "regions.json")
    amap = overlay.read_anomaly_map(summary["anomaly_map"])
    assert amap[0, 0] > 0.9 and amap.shape == (300, 270)  # the map itself keeps the margin, unmasked

    # Reference: scipy's components of the map above the threshold, masked by the painting as
    # predict sees it (the thumbnail's background rule less its rim) expanded to full size.
    reader = readers.open_scan(scan, config.data.channels, config.data.normalization)
    patch = config.data.patch_size
    thumbnail = overlay.scan_thumbnail(reader, overlay_max_side, config.data.background.to_dict(), patch)
    small = regions.inside_painting(thumbnail.foreground, thumbnail.factor, patch)
    block = np.ones((thumbnail.factor, thumbnail.factor), bool)
    inside = np.kron(small, block)[: amap.shape[0], : amap.shape[1]]
    labels, count = ndimage.label((amap >= 0.5) & inside, structure=np.ones((3, 3), bool))
    boxes = [(c.start, r.start, c.stop, r.stop) for r, c in ndimage.find_objects(labels)]
    assert sorted((r.x0, r.y0, r.x1, r.y1) for r in found) == sorted(boxes)

    assert len(found) == 2
    for r in found:  # no region reaches into the film margin
        assert MARGIN <= r.x0 and MARGIN <= r.y0 and r.x1 <= 270 - MARGIN and r.y1 <= 300 - MARGIN
    edge = next(r for r in found if r.y0 < 160)
    assert edge.x0 <= MARGIN + 6 and edge.x1 == 60 and (edge.y0, edge.y1) == (120, 160)
    assert edge.max_score == pytest.approx(0.8, abs=1e-3)
    with open(out / "regions.json", encoding="utf-8") as f:
        assert len(json.load(f)["regions"]) == summary["regions"] == 2
