"""One self-contained HTML report per scan.

The file works from disk with no server and no network: every image is an inline
base64 PNG, the style and script are inline, and a Content-Security-Policy forbids any
other source. It shows the scan with the heatmap on top (opacity slider; transparent where
the map is normal and outside the painting, as in overlay.py), boxes of the candidate
regions, and a table of regions with crops; the scan zooms (wheel, buttons) and pans (drag).
The table and the boxes are built by the inline script from the embedded JSON, so a browser
test that finds the rows proves the script ran.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from xray_flax import files
from xray_flax.report import overlay
from xray_flax.report.regions import Region

# Script-blocking policy: only inline code and data: images are allowed.
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


def png_data_uri(image: Image.Image | np.ndarray) -> str:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    # optimize=True would shrink the file ~20 % for 10x the time on scan-sized images.
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _crop_map(anomaly_map: np.ndarray, y: int, x: int, h: int, w: int) -> np.ndarray:
    """Map region [y, y+h) x [x, x+w), zero outside the scan (like read_region)."""
    out = np.zeros((h, w), np.float32)
    height, width = anomaly_map.shape
    y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + h, height), min(x + w, width)
    if y1 > y0 and x1 > x0:
        out[y0 - y : y1 - y, x0 - x : x1 - x] = anomaly_map[y0:y1, x0:x1]
    return out


def region_crop(
    reader,
    anomaly_map: np.ndarray,
    region: Region,
    margin: int,
    max_side: int,
    colormap: str,
    alpha: float,
    limits: tuple[float, float] | None = None,
    full_at: float = 0.5,
    normal_level: float = 0.0,
    background: dict | None = None,
    tile: int = 64,
) -> Image.Image:
    """Side-by-side X-ray | overlay crop around a region (plus `margin`), box outlined,
    downscaled to at most `max_side` px a side per panel (block mean / block max).
    `limits` are the display limits (pass the whole scan's so crops are comparable); the
    heatmap is hidden as in the whole-scan overlay (`overlay.write_overlay_png`)."""
    y, x = region.y0 - margin, region.x0 - margin
    h, w = region.height + 2 * margin, region.width + 2 * margin
    factor = overlay.downscale_factor(h, w, max_side)
    xray = overlay.downsample_mean(reader.read_region(y, x, h, w), factor)
    heat = overlay.downsample_max(_crop_map(anomaly_map, y, x, h, w), factor)
    left = Image.fromarray(overlay.to_display_rgb(xray, limits))
    heat_rgb = overlay.apply_colormap(heat, colormap)
    foreground = overlay.thumbnail_foreground(xray, factor, background, tile)
    opacity = overlay.heat_opacity(heat, full_at, normal_level, foreground)
    right = Image.fromarray(overlay.blend(np.asarray(left), heat_rgb, alpha, opacity))
    box = [margin / factor, margin / factor, (margin + region.width) / factor, (margin + region.height) / factor]
    for panel in (left, right):
        ImageDraw.Draw(panel).rectangle(box, outline=(0, 255, 255), width=1)
    pair = Image.new("RGB", (left.width * 2 + 4, left.height), "white")
    pair.paste(left, (0, 0))
    pair.paste(right, (left.width + 4, 0))
    return pair


# Style and script are plain strings (no f-string brace doubling); the page's numbers reach the
# script through the embedded JSON. The scan, heatmap and boxes sit in one #stack element that
# a CSS transform (translate + scale, origin top left) moves and zooms, so the boxes stay on
# their regions at every zoom: the SVG shares the images' coordinate system.
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 12px 16px; color: #222; background: #fafafa; }
h1 { font-size: 20px; margin: 0 0 4px; }
h2 { font-size: 16px; margin: 0 0 6px; }
.warning { color: #a00; font-weight: 600; margin: 4px 0; }
.legend { font-size: 13px; margin: 2px 0 6px; color: #444; }
.controls { margin: 4px 0 8px; font-size: 14px; display: flex; flex-wrap: wrap; gap: 6px 14px; align-items: center; }
.controls button { font-size: 14px; min-width: 32px; padding: 2px 8px; }
.hint { color: #666; font-size: 12px; }
.layout { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.viewer-row { display: flex; gap: 8px; align-items: flex-start; }
.side { flex: 1 1 420px; min-width: 0; overflow-x: auto; }
#viewport { position: relative; overflow: hidden; background: #111; border: 1px solid #888;
  max-width: calc(100vw - 200px); max-height: calc(100vh - 120px); min-width: 160px; min-height: 160px;
  cursor: grab; touch-action: none; user-select: none; -webkit-user-select: none; }
#viewport.dragging { cursor: grabbing; }
#stack { position: absolute; left: 0; top: 0; transform-origin: 0 0; }
#stack img, #stack svg { position: absolute; left: 0; top: 0; display: block; max-width: none; }
#stack img { -webkit-user-drag: none; pointer-events: none; }
#stack.pixelated img { image-rendering: pixelated; }
#boxes { overflow: visible; font-size: 14px; }
/* Widths divided by the zoom (--zoom, set by the script): the same on screen at any zoom. */
#boxes rect { fill: none; stroke: #0ff; stroke-width: calc(2px / var(--zoom, 1)); cursor: pointer; }
#boxes rect.selected { stroke: #f0f; stroke-width: calc(4px / var(--zoom, 1)); }
#boxes text { fill: #0ff; paint-order: stroke; stroke: #000; stroke-width: calc(2px / var(--zoom, 1)); }
#meta th { text-align: left; padding-right: 12px; font-weight: 600; vertical-align: top; }
#meta td, #meta th { font-size: 12px; }
#regions { border-collapse: collapse; font-size: 12px; margin-bottom: 12px; }
#regions th, #regions td { border: 1px solid #ccc; padding: 3px 5px; text-align: right; vertical-align: middle; }
#regions th:last-child { text-align: left; }
#regions tr.selected { background: #fdf; }
#regions tbody tr { cursor: pointer; }
#regions img { display: block; max-height: 80px; }
"""

_SCRIPT = """
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var W = data.displayWidth, H = data.displayHeight, MAX_ZOOM = 8;
  var heatmap = document.getElementById("heatmap");
  var slider = document.getElementById("opacity");
  var label = document.getElementById("opacity-value");
  function setOpacity() {
    heatmap.style.opacity = slider.value / 100;
    label.textContent = slider.value + "%";
  }
  slider.addEventListener("input", setOpacity);
  setOpacity();

  // Zoom and pan: view.s screen px per display px, (view.x, view.y) the stack's offset.
  var viewport = document.getElementById("viewport");
  var stack = document.getElementById("stack");
  var svg = document.getElementById("boxes");
  var zoomLabel = document.getElementById("zoom-level");
  var view = {s: 1, x: 0, y: 0, fit: 1};
  function clampPan() {
    // Centred while smaller than the viewport, else no empty margin beyond an edge.
    var vw = viewport.clientWidth, vh = viewport.clientHeight, w = W * view.s, h = H * view.s;
    view.x = w <= vw ? (vw - w) / 2 : Math.min(0, Math.max(vw - w, view.x));
    view.y = h <= vh ? (vh - h) / 2 : Math.min(0, Math.max(vh - h, view.y));
  }
  function apply() {
    clampPan();
    stack.style.transform = "translate(" + view.x + "px, " + view.y + "px) scale(" + view.s + ")";
    stack.classList.toggle("pixelated", view.s >= 2);
    svg.style.fontSize = (14 / view.s) + "px";  // labels and lines keep their screen size
    svg.style.setProperty("--zoom", view.s);
    zoomLabel.textContent = Math.round(100 * view.s / view.fit) + "%";
  }
  function zoomAt(factor, cx, cy) {
    var s = Math.min(Math.max(view.s * factor, view.fit), Math.max(MAX_ZOOM, view.fit));
    // The display point under (cx, cy) stays under it.
    view.x = cx - (cx - view.x) * s / view.s;
    view.y = cy - (cy - view.y) * s / view.s;
    view.s = s;
    apply();
  }
  function layout() {
    // The viewport hugs the scan at the largest scale its CSS limits allow (never above 1).
    viewport.style.width = W + "px";
    viewport.style.height = H + "px";
    view.fit = Math.min(viewport.clientWidth / W, viewport.clientHeight / H, 1);
    viewport.style.width = Math.round(W * view.fit) + "px";
    viewport.style.height = Math.round(H * view.fit) + "px";
  }
  function fit() {
    layout();
    view.s = view.fit;
    apply();
  }
  function resized() {
    // A new window size keeps the zoom unless it was the whole scan (then: the new whole scan).
    var whole = view.s <= view.fit;
    layout();
    if (whole || view.s < view.fit) view.s = view.fit;
    apply();
  }
  function zoomCentre(factor) { zoomAt(factor, viewport.clientWidth / 2, viewport.clientHeight / 2); }
  viewport.addEventListener("wheel", function (e) {
    e.preventDefault();
    var r = viewport.getBoundingClientRect();
    var dy = e.deltaY * (e.deltaMode === 1 ? 16 : e.deltaMode === 2 ? 400 : 1);
    zoomAt(Math.exp(-dy * 0.002), e.clientX - r.left, e.clientY - r.top);
  }, {passive: false});
  viewport.addEventListener("dblclick", function (e) {
    var r = viewport.getBoundingClientRect();
    zoomAt(e.shiftKey ? 0.5 : 2, e.clientX - r.left, e.clientY - r.top);
  });
  var drag = null, dragged = false;
  viewport.addEventListener("pointerdown", function (e) {
    if (e.button !== 0) return;
    drag = {x: e.clientX, y: e.clientY, vx: view.x, vy: view.y};
    dragged = false;
    viewport.classList.add("dragging");
  });
  window.addEventListener("pointermove", function (e) {
    if (!drag) return;
    var dx = e.clientX - drag.x, dy = e.clientY - drag.y;
    dragged = dragged || Math.abs(dx) + Math.abs(dy) > 3;
    view.x = drag.vx + dx;
    view.y = drag.vy + dy;
    apply();
  });
  function endDrag() { drag = null; viewport.classList.remove("dragging"); }
  window.addEventListener("pointerup", endDrag);
  window.addEventListener("pointercancel", endDrag);
  document.getElementById("zoom-in").addEventListener("click", function () { zoomCentre(1.5); });
  document.getElementById("zoom-out").addEventListener("click", function () { zoomCentre(1 / 1.5); });
  document.getElementById("zoom-reset").addEventListener("click", fit);
  document.addEventListener("keydown", function (e) {
    if (e.target.tagName === "INPUT" || e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.key === "+" || e.key === "=") zoomCentre(1.5);
    else if (e.key === "-") zoomCentre(1 / 1.5);
    else if (e.key === "0") fit();
  });
  window.addEventListener("resize", resized);
  function showRegion(r) {
    // Zoom so the region fills about a third of the viewport, centred on it.
    var s = data.scale, vw = viewport.clientWidth, vh = viewport.clientHeight;
    var w = Math.max((r.x1 - r.x0) * s, 4), h = Math.max((r.y1 - r.y0) * s, 4);
    view.s = Math.min(Math.max(Math.min(vw / (3 * w), vh / (3 * h)), view.fit), Math.max(MAX_ZOOM, view.fit));
    view.x = vw / 2 - (r.x0 * s + w / 2) * view.s;
    view.y = vh / 2 - (r.y0 * s + h / 2) * view.s;
    apply();
  }

  var ns = "http://www.w3.org/2000/svg";
  var tbody = document.querySelector("#regions tbody");
  var rows = {}, rects = {};
  function select(id) {
    Object.keys(rows).forEach(function (k) {
      rows[k].classList.toggle("selected", String(id) === k);
      if (rects[k]) rects[k].classList.toggle("selected", String(id) === k);
    });
  }
  function addBox(r) {
    var s = data.scale;
    var rect = document.createElementNS(ns, "rect");
    rect.setAttribute("x", r.x0 * s);
    rect.setAttribute("y", r.y0 * s);
    rect.setAttribute("width", Math.max((r.x1 - r.x0) * s, 2));
    rect.setAttribute("height", Math.max((r.y1 - r.y0) * s, 2));
    rect.setAttribute("data-region-id", r.id);
    rect.addEventListener("click", function () {
      if (dragged) return;  // the end of a pan, not a click
      select(r.id);
      rows[r.id].scrollIntoView({block: "center"});
    });
    svg.appendChild(rect);
    var text = document.createElementNS(ns, "text");
    text.setAttribute("x", r.x0 * s);
    text.setAttribute("y", r.y0 * s);
    text.setAttribute("dy", "-0.25em");
    text.textContent = r.id;
    svg.appendChild(text);
    rects[r.id] = rect;
  }
  data.regions.forEach(function (r) {
    addBox(r);
    var tr = document.createElement("tr");
    tr.className = "region-row";
    tr.setAttribute("data-region-id", r.id);
    tr.title = "click: zoom to region " + r.id;
    [r.id, r.x0, r.y0, r.x1, r.y1, r.area, r.mean_score.toFixed(3), r.max_score.toFixed(3)]
      .forEach(function (value) {
        var td = document.createElement("td");
        td.textContent = value;
        tr.appendChild(td);
      });
    var cell = document.createElement("td");
    if (r.crop) {
      var img = document.createElement("img");
      img.src = r.crop;
      img.alt = "region " + r.id;
      cell.appendChild(img);
    }
    tr.appendChild(cell);
    tr.addEventListener("click", function () { select(r.id); showRegion(r); });
    tbody.appendChild(tr);
    rows[r.id] = tr;
  });
  document.getElementById("region-count").textContent = data.regions.length;
  document.getElementById("show-boxes").addEventListener("change", function (e) {
    svg.style.display = e.target.checked ? "" : "none";
  });
  fit();
  document.body.setAttribute("data-report-ready", "true");
})();
"""


def render_report_html(
    *,
    title: str,
    xray_uri: str,
    heatmap_uri: str,
    colorbar_uri: str,
    display_size: tuple[int, int],
    scale: float,
    regions: Sequence[dict],
    metadata: dict,
    alpha: float = 0.5,
    legend: str = "",
) -> str:
    """The report page. `regions` are dicts (Region fields + 'crop' data URI) in full-
    resolution pixels; `scale` maps them to display pixels. `legend` says what the heatmap's
    colours and transparency mean; a metadata 'warning' is repeated under the title."""
    width, height = display_size
    data = {"scale": scale, "regions": list(regions), "displayWidth": width, "displayHeight": height}
    # "</" inside a script element would end it early; "<\/" is the same JSON string.
    data_json = json.dumps(data, allow_nan=False).replace("</", "<\\/")
    meta_rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in metadata.items()
    )
    warning = (
        f'<p class="warning">Warning: {html.escape(str(metadata["warning"]))}</p>' if metadata.get("warning") else ""
    )
    percent = int(round(alpha * 100))
    size = f'width="{width}" height="{height}"'
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
{warning}
<p class="legend">{html.escape(legend)}</p>
<div class="controls">
  <span><label for="opacity">Heatmap opacity</label>
  <input type="range" id="opacity" min="0" max="100" value="{percent}">
  <span id="opacity-value">{percent}%</span></span>
  <label><input type="checkbox" id="show-boxes" checked> region boxes</label>
  <span><button id="zoom-out" title="zoom out (-)">&minus;</button>
  <button id="zoom-in" title="zoom in (+)">+</button>
  <button id="zoom-reset" title="whole scan (0)">Reset</button>
  <span id="zoom-level">100%</span></span>
  <span class="hint">wheel: zoom at the cursor &middot; drag: pan &middot; double-click: zoom in
  &middot; click a table row: zoom to its region</span>
</div>
<div class="layout">
<div class="viewer-row">
  <div id="viewport" style="width:{width}px; height:{height}px">
    <div id="stack" style="width:{width}px; height:{height}px">
      <img id="xray" alt="X-ray" {size} src="{xray_uri}">
      <img id="heatmap" alt="anomaly heatmap" {size} src="{heatmap_uri}" style="opacity:{alpha}">
      <svg id="boxes" {size} viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg"></svg>
    </div>
  </div>
  <img id="colorbar" alt="colour scale" src="{colorbar_uri}">
</div>
<div class="side">
<section>
<h2>Candidate regions (<span id="region-count">0</span>)</h2>
<table id="regions">
  <thead><tr><th>#</th><th>x0</th><th>y0</th><th>x1</th><th>y1</th><th>area (px)</th>
  <th>mean score</th><th>max score</th><th>crop (X-ray | overlay)</th></tr></thead>
  <tbody></tbody>
</table>
</section>
<section>
<h2>Scan and run</h2>
<table id="meta">{meta_rows}</table>
</section>
</div>
</div>
<script type="application/json" id="report-data">{data_json}</script>
<script>{_SCRIPT}</script>
</body>
</html>
"""


def heatmap_legend(normal_level: float, full_at: float, normal_source: str, masked_background: bool) -> str:
    """One sentence on what the heatmap shows: where it starts, where it is opaque."""
    where = " and outside the painting (the tiling's background rule)" if masked_background else ""
    if full_at <= normal_level:
        ramp = f"opaque from {normal_level:.3g} on"
    else:
        ramp = f"fading in above it and fully opaque from the region threshold {full_at:.3g} on"
    return (
        f"Heatmap: transparent up to the normal level {normal_level:.3g} ({normal_source}){where}, {ramp}; "
        "colours on the 0-1 scale of the bar."
    )


def write_scan_report(
    path: str | os.PathLike,
    reader,
    anomaly_map: np.ndarray,
    regions: Sequence[Region],
    *,
    title: str,
    metadata: dict | None = None,
    max_side: int = 2048,
    colormap: str = "inferno",
    alpha: float = 0.5,
    max_regions: int = 50,
    crop_margin: int = 32,
    crop_max_side: int = 256,
    full_at: float = 0.5,
    normal_level: float = 0.0,
    normal_source: str = "none given",
    background: dict | None = None,
    tile: int = 64,
    thumbnail: overlay.ScanThumbnail | None = None,
) -> None:
    """Writes the HTML report of one scan.

    Args:
      reader: the scan (`data.readers.ScanReader`, e.g. `ArrayScanReader`); read band by
        band for the thumbnail and region by region for the crops.
      anomaly_map: full-resolution float32 [H, W] normalised map (array or memmap); colours span
        [0, 1], values outside are clipped.
      regions: from `regions.find_regions`, best first; the first `max_regions` are shown.
      metadata: extra key/value rows shown at the top (scan path, checkpoint, threshold).
      full_at: the heatmap is fully opaque (alpha) from this value on: the region threshold.
      normal_level, normal_source: the heatmap is transparent up to this value (what normal
        paint reaches; `overlay.normal_level`), and where that value came from (the legend).
      background, tile: the tiling's background rule (config.data.background as a dict) and
        tile side; the heatmap is transparent outside the painting (`overlay.foreground_mask`).
      thumbnail: the `overlay.scan_thumbnail` of these arguments if already read (predict
        shares it with the overlay and the regions), saving another read of the scan.
    """
    if anomaly_map.shape != (reader.height, reader.width):
        raise ValueError(f"anomaly map {anomaly_map.shape} does not match the scan {(reader.height, reader.width)}")
    thumbnail = thumbnail or overlay.scan_thumbnail(reader, max_side, background, tile)
    factor = thumbnail.factor
    small_map = overlay.downsample_max(anomaly_map, factor)
    limits = overlay.display_limits(thumbnail.image)
    xray_rgb = overlay.to_display_rgb(thumbnail.image, limits)
    heat_layer = overlay.heat_rgba(small_map, colormap, full_at, normal_level, thumbnail.foreground)
    shown = list(regions)[:max_regions]
    rows = []
    for region in shown:
        row = {
            "id": region.id,
            "x0": region.x0,
            "y0": region.y0,
            "x1": region.x1,
            "y1": region.y1,
            "area": region.area,
            "mean_score": region.mean_score,
            "max_score": region.max_score,
        }
        crop = region_crop(
            reader,
            anomaly_map,
            region,
            crop_margin,
            crop_max_side,
            colormap,
            alpha,
            limits,
            full_at,
            normal_level,
            background,
            tile,
        )
        row["crop"] = png_data_uri(crop)
        rows.append(row)
    legend = heatmap_legend(normal_level, full_at, normal_source, thumbnail.foreground is not None)
    info = {
        "scan size (px)": f"{reader.width} x {reader.height}",
        "display scale": f"1/{factor}",
        "regions": f"{len(regions)} found, {len(shown)} shown",
        **(metadata or {}),
        "generated": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    page = render_report_html(
        title=title,
        xray_uri=png_data_uri(xray_rgb),
        heatmap_uri=png_data_uri(heat_layer),
        colorbar_uri=png_data_uri(
            overlay.colorbar(
                min(max(xray_rgb.shape[0], 400), 600), colormap, marks=overlay.opacity_marks(normal_level, full_at)
            )
        ),
        display_size=(xray_rgb.shape[1], xray_rgb.shape[0]),
        scale=1.0 / factor,
        regions=rows,
        metadata=info,
        alpha=alpha,
        legend=legend,
    )
    with files.atomic_output(path, "the HTML report") as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(page)
