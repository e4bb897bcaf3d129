"""HTML report (checked in a real headless Chromium), overlays, colour maps, gallery."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from xray_flax.data.readers import ArrayScanReader
from xray_flax.report import gallery, html, overlay, regions

# --- colour maps and overlays ------------------------------------------------------------


def test_colormaps_have_the_right_ends_and_order():
    inferno = overlay.colormap_lut("inferno")
    assert inferno.shape == (256, 3) and inferno.dtype == np.uint8
    assert inferno[0].tolist() == [0, 0, 4] and inferno[-1].tolist() == [252, 255, 164]
    assert inferno[128].tolist() == pytest.approx([186, 54, 85], abs=2)  # matplotlib: (188, 55, 84)
    # inferno's luminance increases monotonically (a perceptual map: brighter = higher).
    luminance = inferno @ np.array([0.299, 0.587, 0.114])
    assert np.all(np.diff(luminance) > -0.5)
    jet = overlay.colormap_lut("jet")
    assert jet[0].tolist() == [0, 0, 128] and jet[-1].tolist() == [128, 0, 0]
    assert jet[128].tolist() == pytest.approx([130, 255, 125], abs=3)  # green in the middle
    assert overlay.apply_colormap(np.array([[-1.0, 2.0]]), "gray").tolist() == [[[0, 0, 0], [255, 255, 255]]]
    with pytest.raises(ValueError, match="unknown colormap"):
        overlay.colormap_lut("viridis")


def test_thumbnail_is_the_block_mean_and_map_the_block_max():
    rng = np.random.default_rng(0)
    image = rng.random((23, 17, 2)).astype(np.float32)
    thumb, factor = overlay.read_thumbnail(ArrayScanReader(image), max_side=6)
    assert factor == 4 and thumb.shape == (6, 5, 2)
    assert thumb[0, 0] == pytest.approx(image[:4, :4].mean(axis=(0, 1)), rel=1e-5)
    # Edge blocks average only the pixels inside the image (no dark zero-padding rim).
    assert thumb[5, 4] == pytest.approx(image[20:23, 16:17].mean(axis=(0, 1)), rel=1e-5)
    amap = rng.random((23, 17)).astype(np.float32)
    small = overlay.downsample_max(amap, 4)
    assert small.shape == (6, 5)
    assert small[5, 4] == amap[20:, 16:].max() and small[1, 2] == amap[4:8, 8:12].max()


def test_overlay_png_is_viewable_size_with_colorbar(tmp_path):
    reader = ArrayScanReader(np.full((300, 500), 0.5, np.float32))
    amap = np.zeros((300, 500), np.float32)
    amap[100:140, 200:260] = 1.0
    found = regions.find_regions(amap, 0.5)
    size = overlay.write_overlay_png(tmp_path / "o.png", reader, amap, max_side=100, regions=found)
    assert size == (100, 60)
    png = np.asarray(Image.open(tmp_path / "o.png").convert("RGB"))
    assert png.shape[0] >= 60 and png.shape[1] > 100  # colour bar on the right
    # Where the map is 0 the X-ray shows unchanged (opacity follows the value); inside the
    # hot block it is tinted toward inferno's top colour.
    assert png[5, 5].tolist() == [128, 128, 128] or png[5, 5].tolist() == [0, 0, 0]
    hot = png[24, 45].astype(int)
    assert hot[0] > hot[2] + 40


def test_display_stretch_and_blend():
    image = np.linspace(0.2, 0.3, 100, dtype=np.float32).reshape(10, 10)
    rgb = overlay.to_display_rgb(image)
    assert rgb.min() == 0 and rgb.max() == 255 and rgb.shape == (10, 10, 3)
    xray = np.full((1, 2, 3), 100, np.uint8)
    heat = np.full((1, 2, 3), 200, np.uint8)
    out = overlay.blend(xray, heat, 0.5, weights=np.array([[0.0, 1.0]]))
    assert out[0, :, 0].tolist() == [100, 150]


@pytest.mark.parametrize("name", ["map.tif", "map.npy"])
def test_synthesis_map_round_trip(tmp_path, name):
    amap = np.random.default_rng(1).random((300, 270)).astype(np.float32)
    overlay.write_anomaly_map(tmp_path / name, amap)
    back = overlay.read_anomaly_map(tmp_path / name)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, amap)
    with pytest.raises(ValueError, match="map.png"):
        overlay.write_anomaly_map(tmp_path / "map.png", amap)


# --- gallery ------------------------------------------------------------------------------


def test_patch_gallery_layout_and_content(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.random((10, 16, 16, 1)).astype(np.float32)
    recon = np.clip(images + 0.1, 0, 1)
    maps = np.zeros((10, 16, 16), np.float32)
    masks = np.zeros((10, 16, 16, 1), np.float32)
    masks[:, 4:8, 4:8] = 1
    size = gallery.write_patch_gallery(tmp_path / "g.png", images, recon, maps, masks, max_rows=3, cell_size=32)
    png = np.asarray(Image.open(tmp_path / "g.png").convert("RGB"))
    assert png.shape[:2] == (size[1], size[0])
    assert size == (4 * (32 + 4) + 4, 22 + 3 * (32 + 4) + 4)  # 4 columns, 3 rows
    # Cell (row 0, ground truth): white square in the middle on black.
    cell = png[22 : 22 + 32, 4 + 3 * 36 : 4 + 3 * 36 + 32]
    assert cell[12, 12].tolist() == [255, 255, 255] and cell[0, 0].tolist() == [0, 0, 0]
    # Anomaly map of zeros is inferno's darkest colour.
    assert png[22 + 16, 4 + 2 * 36 + 16].tolist() == [0, 0, 4]
    no_mask = gallery.write_patch_gallery(tmp_path / "h.png", images, recon, maps, cell_size=32)
    assert no_mask[0] == 3 * 36 + 4
    with pytest.raises(ValueError, match="same length"):
        gallery.write_patch_gallery(tmp_path / "x.png", images, recon[:3], maps)


# --- HTML report ----------------------------------------------------------------------------


def crafted_scan():
    yy, xx = np.mgrid[0:240, 0:320].astype(np.float32)
    scan = (0.4 + 0.1 * np.sin(xx / 9.0) * np.cos(yy / 7.0)).astype(np.float32)
    amap = np.zeros((240, 320), np.float32)
    amap[40:70, 60:100] = 0.9
    amap[150:160, 200:230] = 0.7
    amap[200, 10] = 0.95  # tiny: dropped by min_area
    scan[40:70, 60:100] -= 0.3
    return scan, amap


@pytest.fixture
def report_file(tmp_path):
    scan, amap = crafted_scan()
    found = regions.find_regions(amap, 0.5, min_area=4)
    path = tmp_path / "report.html"
    html.write_scan_report(
        path, ArrayScanReader(scan), amap, found, title="scan <A&B>", metadata={"threshold": 0.5}, max_side=160
    )
    return path, found


def test_report_is_self_contained(report_file):
    path, found = report_file
    page = path.read_text(encoding="utf-8")
    sources = re.findall(r'\ssrc="([^"]*)"', page)
    assert len(sources) >= 3 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<link" not in page and "@import" not in page and "url(" not in page
    # The only http(s) string is the SVG namespace, which is an identifier, not a fetch.
    assert set(re.findall(r"https?://[^\s\"']+", page)) == {"http://www.w3.org/2000/svg"}
    assert "scan &lt;A&amp;B&gt;" in page  # title escaped
    data = json.loads(
        re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S).group(1)
    )
    assert [r["id"] for r in data["regions"]] == [r.id for r in found] == [1, 2]
    assert data["regions"][0]["crop"].startswith("data:image/png;base64,")
    assert data["scale"] == pytest.approx(0.5)


def find_chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None


def chromium_or_skip():
    binary = find_chromium()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set but chromium is not installed (apt-get install -y chromium)")
        pytest.skip("chromium not installed (apt-get install -y chromium); required when CI is set")
    return binary


def run_chromium(binary, tmp_path, *args):
    command = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


def test_report_renders_in_headless_chromium(report_file, tmp_path):
    binary = chromium_or_skip()
    path, found = report_file
    dom = run_chromium(binary, tmp_path, "--dump-dom", path.as_uri()).stdout
    # Rows, boxes and the count exist only if the inline script ran on the embedded JSON.
    assert 'data-report-ready="true"' in dom
    rows = re.findall(r'<tr class="region-row" data-region-id="(\d+)"', dom)
    assert rows == [str(r.id) for r in found]
    assert len(re.findall(r'<rect [^>]*data-region-id="', dom)) == len(found)
    assert re.search(r'<span id="region-count">2</span>', dom)
    assert re.search(r'<img id="heatmap"[^>]*src="data:image/png;base64,', dom)
    assert re.search(r'<input type="range" id="opacity"', dom)
    # The first row's cells carry the region's box and area.
    first = re.search(r'<tr class="region-row" data-region-id="1">(.*?)</tr>', dom, re.S).group(1)
    cells = re.findall(r"<td>([^<]*)</td>", first)
    assert cells[:6] == [str(v) for v in (1, found[0].x0, found[0].y0, found[0].x1, found[0].y1, found[0].area)]


def test_report_screenshot_has_the_heatmap(report_file, tmp_path):
    binary = chromium_or_skip()
    path, _ = report_file
    shot = tmp_path / "shot.png"
    run_chromium(binary, tmp_path, "--hide-scrollbars", "--window-size=900,700", f"--screenshot={shot}", path.as_uri())
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    # inferno at 0.9 blended at 50 % over grey is orange-ish: red well above blue.
    warm = (pixels[..., 0] - pixels[..., 2] > 60) & (pixels[..., 0] > 120)
    assert warm.sum() > 50


def test_report_edge_cases_rgb_tiny_scan_no_regions(tmp_path):
    rgb = np.random.default_rng(0).random((20, 30, 3)).astype(np.float32)
    amap = np.zeros((20, 30), np.float32)
    amap[0:3, 0:2] = 0.9  # region in the corner: its crop margin leaves the scan
    reader = ArrayScanReader(rgb)
    found = regions.find_regions(amap, 0.5)
    html.write_scan_report(tmp_path / "a.html", reader, amap, found, title="rgb", crop_margin=50)
    data = re.search(r'id="report-data">(.*?)</script>', (tmp_path / "a.html").read_text(), re.S).group(1)
    assert len(json.loads(data)["regions"]) == 1
    html.write_scan_report(tmp_path / "b.html", reader, amap, [], title="none")
    assert '"regions": []' in (tmp_path / "b.html").read_text()
    with pytest.raises(ValueError, match="does not match the scan"):
        html.write_scan_report(tmp_path / "c.html", reader, amap[:10], [], title="bad")
