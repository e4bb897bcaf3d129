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
    bar = overlay.colorbar(3 * (32 + 4))
    # 4 columns and the colour bar; 3 rows, or the colour bar's height (at least 80 px).
    assert size == (4 * (32 + 4) + 4 + bar.width, 22 + max(3 * (32 + 4) + 4, bar.height))
    # Cell (row 0, ground truth): white square in the middle on black.
    cell = png[22 : 22 + 32, 4 + 3 * 36 : 4 + 3 * 36 + 32]
    assert cell[12, 12].tolist() == [255, 255, 255] and cell[0, 0].tolist() == [0, 0, 0]
    # Anomaly map of zeros is inferno's darkest colour.
    assert png[22 + 16, 4 + 2 * 36 + 16].tolist() == [0, 0, 4]
    no_mask = gallery.write_patch_gallery(tmp_path / "h.png", images, recon, maps, cell_size=32)
    assert no_mask[0] == 3 * 36 + 4 + overlay.colorbar(8 * 36).width
    with pytest.raises(ValueError, match="same length"):
        gallery.write_patch_gallery(tmp_path / "x.png", images, recon[:3], maps)


def test_patch_gallery_writes_scores_labels_and_a_colour_bar(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.random((3, 16, 16, 1)).astype(np.float32)
    maps = np.zeros((3, 16, 16), np.float32)
    maps[0] = 0.9
    plain = gallery.write_patch_gallery(tmp_path / "p.png", images, None, maps, cell_size=64)
    captioned = gallery.write_patch_gallery(
        tmp_path / "c.png", images, None, maps, cell_size=64, scores=[0.9, 0.2, 0.7], labels=[1, 0, 0], threshold=0.5
    )
    assert captioned[1] == plain[1] + 3 * gallery._CAPTION_H  # a caption strip under each row
    png = np.asarray(Image.open(tmp_path / "c.png").convert("RGB")).astype(int)
    caption = png[22 + 64 : 22 + 64 + gallery._CAPTION_H, : 2 * 68]
    assert (caption.sum(axis=-1) < 400).any()  # text drawn under the first row
    # The colour bar on the right runs from inferno's top (pale yellow) down to its black.
    bar = png[22:, 2 * 68 + 4 :]
    assert ((bar[..., 0] > 240) & (bar[..., 1] > 240) & (bar[..., 2] < 190)).any()
    assert (bar.sum(axis=-1) < 20).any()
    # Truth and prediction in words, green when they agree, red when not.
    assert gallery.row_caption(0.9, 1, 0.5) == (
        "score 0.900   truth: anomalous   predicted: anomalous (score >= 0.500)",
        "#107010",
    )
    assert gallery.row_caption(0.7, 0, 0.5)[1] == "#c01010"
    assert gallery.row_caption(0.2, -1, None) == ("score 0.200   truth: unlabelled", "black")


# --- transparent heatmaps -------------------------------------------------------------------


def test_heat_opacity_is_zero_on_normal_and_background_pixels():
    amap = np.array([[0.05, 0.1, 0.2, 0.35, 0.6, 0.9]], np.float32)
    foreground = np.array([[True, True, True, True, True, False]])
    alpha = overlay.heat_opacity(amap, full_at=0.5, normal_level=0.2, foreground=foreground)
    assert alpha.dtype == np.float32
    # Up to the normal level (0.05, 0.1, 0.2): transparent; half way to the threshold: half;
    # above it: opaque; outside the painting (0.9 on the margin): transparent whatever the value.
    assert alpha[0].tolist() == pytest.approx([0.0, 0.0, 0.0, 0.5, 1.0, 0.0])
    # A threshold at or below the normal level: a step at the normal level.
    assert overlay.heat_opacity(amap, full_at=0.1, normal_level=0.2).tolist() == [[0, 0, 0, 1, 1, 1]]
    rgba = overlay.heat_rgba(amap, full_at=0.5, normal_level=0.2, foreground=foreground)
    assert rgba[0, [0, 1, 2, 5], 3].tolist() == [0, 0, 0, 0] and rgba[0, 4, 3] == 255
    assert abs(int(rgba[0, 3, 3]) - 127.5) <= 1


def test_normal_level_is_a_high_quantile_of_the_normal_tiles_maps(tmp_path):
    maps = [np.linspace(0, 1, 1001, dtype=np.float32).reshape(7, 143), np.full((4, 4), 5.0, np.float32)]
    masks = [np.zeros((7, 143), bool), np.ones((4, 4), bool)]  # the second tile is anomalous
    record = overlay.normal_level_record(maps, masks)
    assert record["heatmap"]["normal_level"] == pytest.approx(0.999, abs=1e-6)
    assert record["heatmap"]["normal_level_tiles"] == 1
    assert overlay.normal_level_record(maps[1:], masks[1:]) == {}
    assert overlay.saved_normal_level(tmp_path) is None
    (tmp_path / "metrics.json").write_text(json.dumps({"test": {}, **record}))
    level, source = overlay.saved_normal_level(tmp_path)
    assert level == pytest.approx(0.999, abs=1e-6) and "99.9th percentile" in source


def test_foreground_mask_drops_the_film_margin_not_dark_paint():
    image = np.full((60, 80), 0.5, np.float32)
    image[:10], image[:, :12] = 0.0, 0.0  # a dark margin on two sides
    image[30:34, 40:44] = 0.0  # a dark spot in the paint, far smaller than a tile
    mask = overlay.foreground_mask(image, "dark_fraction", 0.08, 0.5, window=16)
    assert not mask[:8].any() and not mask[:, :10].any()
    assert mask[20:, 20:].all()  # the spot stays paint: its tile-sized box is mostly light
    assert overlay.foreground_mask(image, "none").all()
    flat = overlay.foreground_mask(image, "low_std", 0.01, window=8)
    assert not flat[50, 70] and flat[32, 42]
    with pytest.raises(ValueError, match="background rule"):
        overlay.foreground_mask(image, "bright")


def test_overlay_hides_normal_paint_and_the_margin(tmp_path):
    scan = np.full((200, 200), 0.6, np.float32)
    scan[:, :40] = 0.0  # film margin
    amap = np.full((200, 200), 0.15, np.float32)  # clean paint, at the normal level
    amap[:, :40] = 0.9  # the model's noise on the margin it never trained on
    amap[100:130, 100:130] = 0.9  # a defect
    reader = ArrayScanReader(scan)
    overlay.write_overlay_png(
        tmp_path / "o.png",
        reader,
        amap,
        full_at=0.5,
        normal_level=0.2,
        background={"rule": "dark_fraction", "threshold": 0.08, "max_fraction": 0.5},
        tile=32,
    )
    png = np.asarray(Image.open(tmp_path / "o.png").convert("RGB")).astype(int)
    grey = overlay.to_display_rgb(scan)
    assert (png[50, 150] == grey[50, 150]).all()  # clean paint: the X-ray untouched
    assert (png[50, 10] == grey[50, 10]).all()  # margin: untouched despite its high map
    assert png[115, 115, 0] > png[115, 115, 2] + 40  # the defect: tinted orange


def test_overlay_and_report_reuse_a_given_thumbnail(tmp_path):
    scan = np.full((200, 200), 0.6, np.float32)
    scan[:, :40] = 0.0  # film margin
    amap = np.zeros((200, 200), np.float32)
    amap[100:130, 100:130] = 0.9
    background = {"rule": "dark_fraction", "threshold": 0.08, "max_fraction": 0.5}
    reader = ArrayScanReader(scan)
    thumbnail = overlay.scan_thumbnail(reader, 64, background, tile=32)
    assert thumbnail.factor == 4 and not thumbnail.foreground[:, :9].any() and thumbnail.foreground[:, 11:].all()
    overlay.write_overlay_png(tmp_path / "read.png", reader, amap, 64, background=background, tile=32)

    class NoWholeScan(ArrayScanReader):
        """Reads crops (the report's regions), not the whole scan (a thumbnail)."""

        def read_region(self, y, x, h, w):
            assert h < self.height, "the scan was read again"
            return super().read_region(y, x, h, w)

    given = NoWholeScan(scan)
    overlay.write_overlay_png(tmp_path / "given.png", given, amap, 64, thumbnail=thumbnail)
    assert (np.asarray(Image.open(tmp_path / "given.png")) == np.asarray(Image.open(tmp_path / "read.png"))).all()
    found = regions.find_regions(amap, 0.5)
    html.write_scan_report(
        tmp_path / "r.html", given, amap, found, title="t", background=background, tile=32, thumbnail=thumbnail
    )
    assert "outside the painting" in (tmp_path / "r.html").read_text()


def test_colorbar_marks_the_normal_level_and_the_threshold():
    plain = overlay.colorbar(300)
    marked = overlay.colorbar(300, marks=overlay.opacity_marks(0.2, 0.5))
    assert marked.height == plain.height and marked.width > plain.width  # a column of mark names
    bar = np.asarray(marked).astype(int)[:, 8]  # a column through the bar
    # Each mark is a white line across the bar (with black edges).
    assert (bar.sum(axis=-1) == 3 * 255).sum() >= 2
    assert overlay.opacity_marks(0.6, 0.5) == [(0.6, "normal / threshold")]


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
    first = re.search(r'<tr class="region-row" data-region-id="1"[^>]*>(.*?)</tr>', dom, re.S).group(1)
    cells = re.findall(r"<td>([^<]*)</td>", first)
    assert cells[:6] == [str(v) for v in (1, found[0].x0, found[0].y0, found[0].x1, found[0].y1, found[0].area)]


# Run after the report's own script (appended to a copy of the page; its Content-Security-Policy
# allows inline scripts): a wheel event, a drag, the zoom buttons, each transform recorded.
_ZOOM_PROBE = """<script>
(function () {
  var viewport = document.getElementById("viewport"), stack = document.getElementById("stack");
  var data = JSON.parse(document.getElementById("report-data").textContent);
  function state() {
    var m = new DOMMatrix(getComputedStyle(stack).transform);
    return {s: m.a, x: m.e, y: m.f};
  }
  function boxOffset() {
    var img = document.getElementById("xray").getBoundingClientRect();
    var box = document.querySelector('#boxes rect[data-region-id="1"]').getBoundingClientRect();
    return [box.left - img.left, box.top - img.top, data.regions[0].x0 * data.scale, data.regions[0].y0 * data.scale];
  }
  var out = {controls: ["zoom-in", "zoom-out", "zoom-reset", "zoom-level"].map(function (id) {
    return !!document.getElementById(id);
  })};
  out.fit = state();
  var r = viewport.getBoundingClientRect(), cx = r.left + 60, cy = r.top + 70;
  var wheel = {deltaY: -300, clientX: cx, clientY: cy, bubbles: true, cancelable: true};
  viewport.dispatchEvent(new WheelEvent("wheel", wheel));
  out.wheel = state();
  out.box = boxOffset();
  viewport.dispatchEvent(new PointerEvent("pointerdown", {button: 0, clientX: cx, clientY: cy, bubbles: true}));
  window.dispatchEvent(new PointerEvent("pointermove", {clientX: cx - 40, clientY: cy - 25, bubbles: true}));
  window.dispatchEvent(new PointerEvent("pointerup", {clientX: cx - 40, clientY: cy - 25, bubbles: true}));
  out.drag = state();
  out.dragBox = boxOffset();
  document.getElementById("zoom-in").click();
  out.zoomIn = state();
  document.getElementById("zoom-out").click();
  out.zoomOut = state();
  document.getElementById("zoom-reset").click();
  out.reset = state();
  out.label = document.getElementById("zoom-level").textContent;
  var pre = document.createElement("pre");
  pre.id = "zoom-probe";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
</script>
</body>"""


def test_report_zooms_and_pans_with_boxes_aligned(report_file, tmp_path):
    binary = chromium_or_skip()
    path, _ = report_file
    probed = tmp_path / "probed.html"
    probed.write_text(path.read_text(encoding="utf-8").replace("</body>", _ZOOM_PROBE), encoding="utf-8")
    dom = run_chromium(binary, tmp_path, "--window-size=900,700", "--dump-dom", probed.as_uri()).stdout
    out = json.loads(re.search(r'<pre id="zoom-probe">(.*?)</pre>', dom, re.S).group(1))
    assert out["controls"] == [True, True, True, True]
    fit, wheel, drag = out["fit"], out["wheel"], out["drag"]
    assert fit["s"] == pytest.approx(1.0)  # a 160 x 120 display fits the viewport unscaled
    # Wheel up zooms in around the cursor: the display point under it stays under it.
    assert wheel["s"] > 1.5 * fit["s"]
    assert (60 - wheel["x"]) / wheel["s"] == pytest.approx((60 - fit["x"]) / fit["s"], abs=1)
    assert (70 - wheel["y"]) / wheel["s"] == pytest.approx((70 - fit["y"]) / fit["s"], abs=1)
    # Dragging pans by the pointer's movement, at the same zoom.
    assert drag["s"] == wheel["s"]
    assert (drag["x"] - wheel["x"], drag["y"] - wheel["y"]) == pytest.approx((-40, -25), abs=0.5)
    # The region box moves and scales with the scan: at the region's place times the zoom.
    for box, state in ((out["box"], wheel), (out["dragBox"], drag)):
        assert box[0] == pytest.approx(box[2] * state["s"], abs=2)
        assert box[1] == pytest.approx(box[3] * state["s"], abs=2)
    assert out["zoomIn"]["s"] == pytest.approx(1.5 * drag["s"])
    assert out["zoomOut"]["s"] == pytest.approx(drag["s"])
    assert out["reset"] == pytest.approx(fit) and out["label"] == "100%"


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
