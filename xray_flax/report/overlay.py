"""Viewable images of a scan and its anomaly map, without matplotlib.

* colour maps ('inferno', 'jet', 'gray') as 256-entry lookup tables,
* thumbnails read band by band from a `ScanReader` (memory bounded by one band),
* heatmap overlays with a colour bar and region boxes (PIL), transparent where the map is
  normal (below `normal_level`) and outside the painting (`foreground_mask`),
* the full-resolution anomaly map as float32 TIFF or .npy.

Every file is written to a temporary name and renamed when complete (`files.atomic_output`):
a crash or a full disk leaves the previous file or none, never a partial one.

Downscaling rule: the X-ray is averaged over each block (area interpolation); the anomaly
map keeps each block's maximum so a hot spot smaller than a thumbnail pixel stays
visible - missing a small paint loss is worse than a slightly bolder heatmap.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence

import numpy as np
import tifffile
from PIL import Image, ImageDraw, ImageFont

from xray_flax import files
from xray_flax.data.readers import ArrayScanReader
from xray_flax.report import plots

COLORMAPS = ("inferno", "jet", "gray")

# matplotlib's 'inferno' sampled at 9 evenly spaced points (0, 1/8, ..., 1); the lookup
# table interpolates linearly between them (max deviation from matplotlib's table is a
# few levels out of 255, invisible in a heatmap).
_INFERNO_ANCHORS = (
    "#000004",
    "#1f0c48",
    "#550f6d",
    "#88226a",
    "#ba3655",
    "#e35933",
    "#f98e09",
    "#f9cb35",
    "#fcffa4",
)

# Band height (in source pixels, times width and channels) kept per read: ~64 MiB float32.
_BAND_BUDGET_VALUES = 1 << 24


def colormap_lut(name: str) -> np.ndarray:
    """uint8 [256, 3] lookup table of a colour map."""
    x = np.linspace(0.0, 1.0, 256)
    if name == "inferno":
        anchors = np.array([[int(h[i : i + 2], 16) for i in (1, 3, 5)] for h in _INFERNO_ANCHORS], float)
        positions = np.linspace(0.0, 1.0, len(anchors))
        rgb = np.stack([np.interp(x, positions, anchors[:, c]) for c in range(3)], axis=-1)
    elif name == "jet":
        # The classic MATLAB jet: piecewise-linear ramps for r, g, b.
        rgb = 255.0 * np.stack([np.clip(1.5 - np.abs(4.0 * x - c), 0.0, 1.0) for c in (3.0, 2.0, 1.0)], axis=-1)
    elif name == "gray":
        rgb = 255.0 * np.stack([x, x, x], axis=-1)
    else:
        raise ValueError(f"unknown colormap {name!r}; expected one of {COLORMAPS}")
    return np.round(rgb).astype(np.uint8)


def apply_colormap(values: np.ndarray, name: str = "inferno", vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """uint8 [H, W, 3] colours of `values` scaled from [vmin, vmax] (clipped)."""
    if vmax <= vmin:
        raise ValueError(f"vmax ({vmax}) must be greater than vmin ({vmin})")
    scaled = (np.asarray(values, np.float32) - vmin) / (vmax - vmin)
    index = np.clip(np.round(np.nan_to_num(scaled) * 255.0), 0, 255).astype(np.uint8)
    return colormap_lut(name)[index]


def display_limits(
    image: np.ndarray, low_percentile: float = 0.5, high_percentile: float = 99.5
) -> tuple[float, float]:
    """Contrast-stretch limits of an X-ray: X-ray scans often use a narrow part of the
    16-bit range, so the display maps these percentiles to black and white."""
    image = np.asarray(image, np.float32)
    lo, hi = (float(v) for v in np.percentile(image, [low_percentile, high_percentile]))
    if hi <= lo:
        lo, hi = float(image.min()), float(image.max())
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi


def to_display_rgb(image: np.ndarray, limits: tuple[float, float] | None = None) -> np.ndarray:
    """uint8 [H, W, 3] of an X-ray, values mapped from `limits` (default: its own
    `display_limits`) to [0, 255]. One channel -> grey; three -> RGB; else the first."""
    image = np.asarray(image, np.float32)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] not in (1, 3):
        image = image[..., :1]
    lo, hi = limits if limits is not None else display_limits(image)
    display = np.clip((image - lo) / (hi - lo), 0.0, 1.0)
    display = np.round(display * 255.0).astype(np.uint8)
    return np.repeat(display, 3, axis=-1) if display.shape[-1] == 1 else display


def downscale_factor(height: int, width: int, max_side: int) -> int:
    """Smallest integer factor bringing the longest side to at most `max_side`."""
    if max_side <= 0:
        raise ValueError(f"max_side must be positive, got {max_side}")
    return max(1, math.ceil(max(height, width) / max_side))


def _rows_per_band(width: int, channels: int, factor: int) -> int:
    return max(1, _BAND_BUDGET_VALUES // max(1, width * channels * factor))


def read_thumbnail(reader, max_side: int | None = None, factor: int | None = None) -> tuple[np.ndarray, int]:
    """(float32 [h, w, C] block-mean thumbnail, factor) read band by band from `reader`.

    The factor is `factor` if given, else the smallest one fitting `max_side`. Blocks at
    the right/bottom edge average only their pixels inside the scan.
    """
    height, width, channels = int(reader.height), int(reader.width), int(reader.channels)
    if factor is None:
        if max_side is None:
            raise ValueError("give max_side or factor")
        factor = downscale_factor(height, width, max_side)
    out_h, out_w = math.ceil(height / factor), math.ceil(width / factor)
    thumb = np.zeros((out_h, out_w, channels), np.float32)
    col_counts = np.minimum(width - np.arange(out_w) * factor, factor)
    step = _rows_per_band(out_w * factor, channels, factor)
    for row0 in range(0, out_h, step):
        rows = min(step, out_h - row0)
        band = reader.read_region(row0 * factor, 0, rows * factor, out_w * factor)
        sums = band.reshape(rows, factor, out_w, factor, channels).sum(axis=(1, 3), dtype=np.float64)
        row_counts = np.minimum(height - (row0 + np.arange(rows)) * factor, factor)
        thumb[row0 : row0 + rows] = sums / (row_counts[:, None, None] * col_counts[None, :, None])
    return thumb, factor


def downsample_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """float32 [ceil(H/f), ceil(W/f), C] block means of an in-memory [H, W, C] image;
    edge blocks average only their pixels inside the image."""
    return read_thumbnail(ArrayScanReader(image), factor=factor)[0]


def downsample_max(anomaly_map: np.ndarray, factor: int) -> np.ndarray:
    """float32 [ceil(H/f), ceil(W/f)] block maxima, band by band (works on a memmap)."""
    height, width = anomaly_map.shape
    if factor == 1:
        return np.asarray(anomaly_map, np.float32).copy()
    out_h, out_w = math.ceil(height / factor), math.ceil(width / factor)
    out = np.empty((out_h, out_w), np.float32)
    step = _rows_per_band(out_w * factor, 1, factor)
    for row0 in range(0, out_h, step):
        rows = min(step, out_h - row0)
        band = np.full((rows * factor, out_w * factor), -np.inf, np.float32)
        src = anomaly_map[row0 * factor : (row0 + rows) * factor]
        band[: src.shape[0], :width] = src
        out[row0 : row0 + rows] = band.reshape(rows, factor, out_w, factor).max(axis=(1, 3))
    return out


def blend(xray_rgb: np.ndarray, heat_rgb: np.ndarray, alpha: float, weights: np.ndarray | None = None) -> np.ndarray:
    """uint8 (1 - a) * X-ray + a * heatmap with a = alpha * weights (per pixel, in [0, 1]).

    Weighting by the anomaly value (see `heat_opacity`) keeps the X-ray unchanged where
    nothing is anomalous, instead of darkening the whole scan with the colour map's low end.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    a = np.float32(alpha) if weights is None else alpha * np.asarray(weights, np.float32)[..., None]
    mixed = (1.0 - a) * xray_rgb.astype(np.float32) + a * heat_rgb.astype(np.float32)
    return np.round(mixed).astype(np.uint8)


# The "normal level" under which the heatmap is fully transparent: this quantile of the
# anomaly map over the pixels of the validation split's normal tiles. 99.9 %, not 99 %: a
# clean painting would keep one pixel in a hundred coloured, and the overlay's block maximum
# (each thumbnail pixel shows the hottest of its block) would turn that into a speckle over
# the whole scan; one in a thousand leaves clean paint clean and still starts the colour
# well below any threshold chosen on the validation split.
NORMAL_LEVEL_QUANTILE = 0.999


def normal_level(maps: Sequence[np.ndarray], quantile: float = NORMAL_LEVEL_QUANTILE) -> float | None:
    """The `quantile` of every pixel of `maps` (anomaly maps of normal tiles), or None without
    any finite pixel."""
    values = np.concatenate([np.asarray(m, np.float32).ravel() for m in maps]) if len(maps) else np.zeros(0)
    values = values[np.isfinite(values)]
    return float(np.quantile(values, quantile)) if values.size else None


def normal_level_record(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> dict:
    """{"heatmap": {...}} for metrics.json: the `normal_level` of the maps whose mask is empty
    (the normal tiles of a `scoring.SplitScores`), which predict's overlays start from; {}
    without such tiles."""
    normal = [m for m, k in zip(maps, masks) if not np.any(k)]
    level = normal_level(normal)
    if level is None:
        return {}
    return {
        "heatmap": {
            "normal_level": level,
            "normal_level_quantile": NORMAL_LEVEL_QUANTILE,
            "normal_level_tiles": len(normal),
        }
    }


def saved_normal_level(workdir: str | os.PathLike) -> tuple[float, str] | None:
    """(normal level, where it came from) saved by evaluate in WORKDIR/metrics.json, or None
    (no metrics.json, or one written before the level was saved)."""
    path = os.path.join(os.fspath(workdir), "metrics.json")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        saved = json.load(f).get("heatmap") or {}
    if saved.get("normal_level") is None:
        return None
    quantile = 100 * float(saved.get("normal_level_quantile", NORMAL_LEVEL_QUANTILE))
    return float(saved["normal_level"]), f"the {quantile:g}th percentile of the validation normal tiles' maps"


def _box_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of `values` [h, w] over the window x window box centred on each pixel, counting
    only the box's pixels inside the image (a summed-area table: O(h w) for any window)."""
    h, w = values.shape
    sat = np.zeros((h + 1, w + 1), np.float64)
    sat[1:, 1:] = np.cumsum(np.cumsum(values, axis=0, dtype=np.float64), axis=1)
    half = window // 2
    y0, x0 = np.clip(np.arange(h) - half, 0, h), np.clip(np.arange(w) - half, 0, w)
    y1, x1 = np.clip(np.arange(h) - half + window, 0, h), np.clip(np.arange(w) - half + window, 0, w)
    total = sat[y1][:, x1] - sat[y0][:, x1] - sat[y1][:, x0] + sat[y0][:, x0]
    count = (y1 - y0)[:, None] * (x1 - x0)[None, :]
    return total / count


def foreground_mask(
    image: np.ndarray, rule: str = "dark_fraction", threshold: float = 0.08, max_fraction: float = 0.5, window: int = 1
) -> np.ndarray:
    """bool [h, w]: pixels of the painting, False on background (film margin, empty panel).

    The tiling's background rule (config.data.background, data.tiling.is_background) applied
    to the `window` x `window` box around each pixel of the normalised image [h, w(, C)] in
    [0, 1]; `window` is a tile's side at this image's scale, so the overlay hides exactly what
    training and evaluation skip. The model never saw the margin, so its map there is noise.
    """
    gray = np.asarray(image, np.float32)
    gray = gray.mean(axis=-1) if gray.ndim == 3 else gray
    window = max(1, int(window))
    if rule == "none":
        return np.ones(gray.shape, bool)
    if rule == "dark_fraction":
        return _box_mean((gray < threshold).astype(np.float32), window) < max_fraction
    if rule == "low_std":
        mean = _box_mean(gray, window)
        variance = np.maximum(_box_mean(gray * gray, window) - mean * mean, 0.0)
        return np.sqrt(variance) >= threshold
    raise ValueError(f"unknown background rule {rule!r}; use 'none', 'dark_fraction' or 'low_std'")


def heat_opacity(
    anomaly_map: np.ndarray, full_at: float = 0.5, normal_level: float = 0.0, foreground: np.ndarray | None = None
) -> np.ndarray:
    """Per-pixel heatmap opacity in [0, 1]: 0 up to `normal_level`, rising linearly to 1 at
    `full_at`, and 0 wherever `foreground` (bool, same shape) is False.

    `normal_level` is what normal paint reaches (`normal_level`, from validation normal tiles):
    below it the X-ray shows untouched, so a clean painting reads as clean rather than tinted
    with the colour map's low end. `full_at` is the cut that matters (the region threshold;
    0.5, the fixed cut of normalised maps, by default): everything scored at or above it is
    drawn at the full heatmap opacity. With `full_at` at or below the normal level the ramp
    becomes a step at the normal level.
    """
    if not full_at > 0:
        raise ValueError(f"full_at must be positive, got {full_at}")
    values = np.nan_to_num(np.asarray(anomaly_map, np.float32))
    low = np.float32(normal_level)
    if full_at > normal_level:
        opacity = np.clip((values - low) / (np.float32(full_at) - low), 0.0, 1.0)
    else:
        opacity = (values > low).astype(np.float32)
    if foreground is not None:
        opacity = np.where(np.asarray(foreground, bool), opacity, np.float32(0.0))
    return opacity.astype(np.float32)


def heat_rgba(
    anomaly_map: np.ndarray,
    colormap: str = "inferno",
    full_at: float = 0.5,
    normal_level: float = 0.0,
    foreground: np.ndarray | None = None,
) -> np.ndarray:
    """uint8 [h, w, 4] heat layer whose alpha channel is `heat_opacity` (HTML reports)."""
    alpha = np.round(heat_opacity(anomaly_map, full_at, normal_level, foreground) * 255.0).astype(np.uint8)
    return np.concatenate([apply_colormap(anomaly_map, colormap), alpha[..., None]], axis=-1)


def font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow built without FreeType: fixed bitmap font
        return ImageFont.load_default()


def _text_width(text: ImageFont.ImageFont, label: str) -> int:
    return int(text.getlength(label)) if hasattr(text, "getlength") else 6 * len(label)


def _spread(ys: list[float], gap: float, low: float, high: float) -> list[float]:
    """`ys` (sorted) moved apart to at least `gap` and kept in [low, high]: labels of two
    marks close in value stay readable."""
    out = []
    for y in ys:
        out.append(max(y, out[-1] + gap) if out else max(y, low))
    overflow = out[-1] - high if out else 0.0
    return [y - overflow for y in out] if overflow > 0 else out


def colorbar(
    height: int,
    colormap: str = "inferno",
    vmin: float = 0.0,
    vmax: float = 1.0,
    marks: Sequence[tuple[float, str]] = (),
) -> Image.Image:
    """Vertical colour bar (high values on top) with round tick labels, RGB, white background.

    `marks` are (value, name) pairs - the normal level and the threshold of an overlay, where
    its colour starts and where it is fully opaque - drawn as lines across the bar and named
    with their value in a column on the right.
    """
    height = max(height, 80)
    text = font(max(10, min(18, height // 30)))
    bar_w, pad = max(12, height // 40), 6
    ticks = plots.nice_ticks(vmin, vmax, 5)
    labels = [plots.format_tick(t, ticks) for t in ticks]
    label_w = max(_text_width(text, label) for label in labels)
    names = [f"{name} {value:.3g}" for value, name in marks]
    mark_x = pad + bar_w + pad + label_w + 2 * pad
    width = mark_x + max((_text_width(text, name) + pad for name in names), default=0)
    image = Image.new("RGB", (width, height), "white")
    ramp = np.linspace(vmax, vmin, height - 2 * pad)[:, None] * np.ones((1, bar_w))
    image.paste(Image.fromarray(apply_colormap(ramp, colormap, vmin, vmax)), (pad, pad))
    draw = ImageDraw.Draw(image)
    draw.rectangle([pad - 1, pad - 1, pad + bar_w, height - pad], outline="black")

    def y_of(value: float) -> float:
        fraction = (min(max(value, vmin), vmax) - vmin) / (vmax - vmin)
        return height - pad - fraction * (height - 2 * pad - 1)

    for tick, label in zip(ticks, labels):
        y = round(y_of(tick))
        draw.line([pad + bar_w, y, pad + bar_w + 4, y], fill="black")
        draw.text((pad + bar_w + pad, y), label, fill="black", font=text, anchor="lm")
    order = sorted(range(len(marks)), key=lambda i: y_of(marks[i][0]))
    label_ys = _spread(
        [y_of(marks[i][0]) for i in order], text.size + 2 if hasattr(text, "size") else 12, 8, height - 8
    )
    for i, label_y in zip(order, label_ys):
        y = round(y_of(marks[i][0]))
        # Black-white-black: visible on the dark and the light end of any colour map.
        draw.line([pad - 3, y, pad + bar_w + 2, y], fill="black", width=3)
        draw.line([pad - 3, y, pad + bar_w + 2, y], fill="white", width=1)
        draw.line([pad + bar_w + 2, y, mark_x - 3, round(label_y)], fill="#555")
        draw.text((mark_x, round(label_y)), names[i], fill="black", font=text, anchor="lm")
    return image


def draw_region_boxes(image: Image.Image, regions: Sequence, scale: float, color=(0, 255, 255)) -> None:
    """Outlines and ids of regions (full-resolution boxes scaled by `scale`), in place."""
    draw = ImageDraw.Draw(image)
    text = font(max(10, min(20, image.height // 45)))
    for region in regions:
        box = [
            region.x0 * scale,
            region.y0 * scale,
            max(region.x1 * scale, region.x0 * scale + 2) - 1,
            max(region.y1 * scale, region.y0 * scale + 2) - 1,
        ]
        draw.rectangle(box, outline=color, width=2)
        # A black outline keeps the cyan id readable on pale paint as on the dark margin.
        draw.text(
            (box[0], max(0, box[1] - 2)),
            str(region.id),
            fill=color,
            font=text,
            anchor="lb",
            stroke_width=2,
            stroke_fill="black",
        )


def opacity_marks(normal_level: float, full_at: float) -> list[tuple[float, str]]:
    """The colour bar's marks of an overlay drawn by `heat_opacity(map, full_at, normal_level)`."""
    if full_at <= normal_level:
        return [(normal_level, "normal / threshold")]
    return [(normal_level, "normal"), (full_at, "threshold")]


def overlay_image(
    xray: np.ndarray,
    anomaly_map: np.ndarray,
    alpha: float = 0.5,
    colormap: str = "inferno",
    regions: Sequence = (),
    region_scale: float = 1.0,
    with_colorbar: bool = True,
    weight_by_value: bool = True,
    full_at: float = 0.5,
    normal_level: float = 0.0,
    foreground: np.ndarray | None = None,
) -> Image.Image:
    """PIL RGB image: heatmap of `anomaly_map` (values in [0, 1]) over the X-ray, both
    already at display size ([h, w, C] and [h, w]); boxes of `regions`; colour bar.
    With `weight_by_value` the heatmap's opacity is
    alpha * heat_opacity(value, full_at, normal_level, foreground)."""
    xray_rgb = to_display_rgb(xray)
    if xray_rgb.shape[:2] != anomaly_map.shape:
        raise ValueError(f"X-ray {xray_rgb.shape[:2]} and anomaly map {anomaly_map.shape} differ in size")
    heat = apply_colormap(anomaly_map, colormap)
    weights = heat_opacity(anomaly_map, full_at, normal_level, foreground) if weight_by_value else None
    image = Image.fromarray(blend(xray_rgb, heat, alpha, weights))
    draw_region_boxes(image, regions, region_scale)
    if not with_colorbar:
        return image
    bar = colorbar(image.height, colormap, marks=opacity_marks(normal_level, full_at) if weight_by_value else ())
    canvas = Image.new("RGB", (image.width + bar.width, max(image.height, bar.height)), "white")
    canvas.paste(image, (0, 0))
    canvas.paste(bar, (image.width, 0))
    return canvas


def thumbnail_foreground(thumb: np.ndarray, factor: int, background: dict | None, tile: int) -> np.ndarray | None:
    """`foreground_mask` of a thumbnail downscaled by `factor`, or None without a
    `background` rule (a dict like config.data.background: rule, threshold, max_fraction);
    `tile` is the tile side in scan pixels."""
    if not background:
        return None
    return foreground_mask(
        thumb,
        background.get("rule", "dark_fraction"),
        float(background.get("threshold", 0.08)),
        float(background.get("max_fraction", 0.5)),
        max(1, round(tile / factor)),
    )


@dataclasses.dataclass(frozen=True)
class ScanThumbnail:
    """A scan at display size, read once and shared by predict's regions, overlay and report."""

    image: np.ndarray  # float32 [h, w, C] block means (`read_thumbnail`)
    factor: int  # scan pixels per thumbnail pixel, a side
    foreground: np.ndarray | None  # bool [h, w], the painting (`thumbnail_foreground`)


def scan_thumbnail(reader, max_side: int, background: dict | None = None, tile: int = 64) -> ScanThumbnail:
    """The `read_thumbnail` of a scan at most `max_side` px a side and its painting mask."""
    image, factor = read_thumbnail(reader, max_side)
    return ScanThumbnail(image, factor, thumbnail_foreground(image, factor, background, tile))


def write_overlay_png(
    path: str | os.PathLike,
    reader,
    anomaly_map: np.ndarray,
    max_side: int = 2048,
    alpha: float = 0.5,
    colormap: str = "inferno",
    regions: Sequence = (),
    full_at: float = 0.5,
    normal_level: float = 0.0,
    background: dict | None = None,
    tile: int = 64,
    thumbnail: ScanThumbnail | None = None,
) -> tuple[int, int]:
    """Writes the overlay of a whole scan at most `max_side` px a side; returns (w, h) of
    the scan part. `reader` is a ScanReader (e.g. `ArrayScanReader`), the map full size.
    The heatmap is transparent below `normal_level` and, given a `background` rule (see
    `thumbnail_foreground`, `tile` px tiles), outside the painting. `thumbnail`, the
    `scan_thumbnail` of these arguments if already read, saves reading the scan again."""
    if anomaly_map.shape != (reader.height, reader.width):
        raise ValueError(f"anomaly map {anomaly_map.shape} does not match the scan {(reader.height, reader.width)}")
    thumbnail = thumbnail or scan_thumbnail(reader, max_side, background, tile)
    small_map = downsample_max(anomaly_map, thumbnail.factor)
    image = overlay_image(
        thumbnail.image,
        small_map,
        alpha,
        colormap,
        regions,
        1.0 / thumbnail.factor,
        full_at=full_at,
        normal_level=normal_level,
        foreground=thumbnail.foreground,
    )
    with files.atomic_output(path, "the overlay") as tmp:
        image.save(tmp, format="PNG")
    return small_map.shape[1], small_map.shape[0]


def write_anomaly_map(path: str | os.PathLike, anomaly_map: np.ndarray) -> None:
    """Full-resolution float32 map: '.tif'/'.tiff' (zlib level 1, 256 x 256 tiles when both
    sides reach 256, else strips) or '.npy'. Level 1 compresses smooth maps nearly as well
    as 6 at a third of the time. `anomaly_map` may be a memmap: tiles are compressed from it
    as they are read. Written to a temporary name and renamed (`files.atomic_output`)."""
    suffix = os.fspath(path).lower().rsplit(".", 1)[-1]
    if suffix not in ("tif", "tiff", "npy"):
        raise ValueError(f"cannot write anomaly map to {os.fspath(path)!r}: use .tif, .tiff or .npy")
    data = np.asarray(anomaly_map, np.float32)
    with files.atomic_output(path, "the anomaly map") as tmp:
        if suffix == "npy":
            np.save(tmp, data)
        else:
            tile = (256, 256) if min(data.shape) >= 256 else None
            tifffile.imwrite(
                tmp, data, photometric="minisblack", compression="zlib", compressionargs={"level": 1}, tile=tile
            )


def read_anomaly_map(path: str | os.PathLike) -> np.ndarray:
    suffix = os.fspath(path).lower().rsplit(".", 1)[-1]
    if not os.path.exists(path):
        raise FileNotFoundError(f"anomaly map not found: {os.fspath(path)}")
    if suffix in ("tif", "tiff"):
        return tifffile.imread(path)
    if suffix == "npy":
        return np.load(path, mmap_mode="r")
    raise ValueError(f"cannot read anomaly map {os.fspath(path)!r}: use .tif, .tiff or .npy")
