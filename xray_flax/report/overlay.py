"""Viewable images of a scan and its anomaly map, without matplotlib.

* colour maps ('inferno', 'jet', 'gray') as 256-entry lookup tables,
* thumbnails read band by band from a `ScanReader` (memory bounded by one band),
* heatmap overlays with a colour bar and region boxes (PIL),
* the full-resolution anomaly map as float32 TIFF or .npy.

Every file is written to a temporary name and renamed when complete (`files.atomic_output`):
a crash or a full disk leaves the previous file or none, never a partial one.

Downscaling rule: the X-ray is averaged over each block (area interpolation); the anomaly
map keeps each block's maximum so a hot spot smaller than a thumbnail pixel stays
visible - missing a small paint loss is worse than a slightly bolder heatmap.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import tifffile
from PIL import Image, ImageDraw, ImageFont

from xray_flax import files
from xray_flax.data.readers import ArrayScanReader

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


def heat_opacity(anomaly_map: np.ndarray, full_at: float = 0.5) -> np.ndarray:
    """Per-pixel heatmap opacity in [0, 1]: 0 at value 0, rising linearly to 1 at `full_at`.

    `full_at` is the cut that matters (the region threshold; 0.5, the fixed cut of normalised
    maps, by default): everything scored at or above it is drawn at the full heatmap opacity,
    so what the model flags is plainly coloured, while the normal background (near 0 after
    normalisation) leaves the X-ray untouched.
    """
    if not full_at > 0:
        raise ValueError(f"full_at must be positive, got {full_at}")
    return np.clip(np.nan_to_num(np.asarray(anomaly_map, np.float32)) / np.float32(full_at), 0.0, 1.0)


def heat_rgba(anomaly_map: np.ndarray, colormap: str = "inferno", full_at: float = 0.5) -> np.ndarray:
    """uint8 [h, w, 4] heat layer whose alpha channel is `heat_opacity` (HTML reports)."""
    alpha = np.round(heat_opacity(anomaly_map, full_at) * 255.0).astype(np.uint8)
    return np.concatenate([apply_colormap(anomaly_map, colormap), alpha[..., None]], axis=-1)


def font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow built without FreeType: fixed bitmap font
        return ImageFont.load_default()


def colorbar(height: int, colormap: str = "inferno", vmin: float = 0.0, vmax: float = 1.0) -> Image.Image:
    """Vertical colour bar (high values on top) with 5 tick labels, RGB, white background."""
    height = max(height, 80)
    text = font(max(10, min(18, height // 30)))
    bar_w, pad = max(12, height // 40), 6
    labels = [f"{vmin + (vmax - vmin) * k / 4:.2f}" for k in range(5)]
    label_w = max(int(text.getlength(label)) for label in labels) if hasattr(text, "getlength") else 30
    image = Image.new("RGB", (pad + bar_w + pad + label_w + pad, height), "white")
    ramp = np.linspace(vmax, vmin, height - 2 * pad)[:, None] * np.ones((1, bar_w))
    image.paste(Image.fromarray(apply_colormap(ramp, colormap, vmin, vmax)), (pad, pad))
    draw = ImageDraw.Draw(image)
    draw.rectangle([pad - 1, pad - 1, pad + bar_w, height - pad], outline="black")
    for k, label in enumerate(labels):
        y = height - pad - round(k * (height - 2 * pad - 1) / 4)
        draw.line([pad + bar_w, y, pad + bar_w + 4, y], fill="black")
        draw.text((pad + bar_w + pad, y), label, fill="black", font=text, anchor="lm")
    return image


def draw_region_boxes(image: Image.Image, regions: Sequence, scale: float, color=(0, 255, 255)) -> None:
    """Outlines and ids of regions (full-resolution boxes scaled by `scale`), in place."""
    draw = ImageDraw.Draw(image)
    text = font(max(10, min(16, image.height // 50)))
    for region in regions:
        box = [
            region.x0 * scale,
            region.y0 * scale,
            max(region.x1 * scale, region.x0 * scale + 2) - 1,
            max(region.y1 * scale, region.y0 * scale + 2) - 1,
        ]
        draw.rectangle(box, outline=color, width=2)
        draw.text((box[0], max(0, box[1] - 2)), str(region.id), fill=color, font=text, anchor="lb")


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
) -> Image.Image:
    """PIL RGB image: heatmap of `anomaly_map` (values in [0, 1]) over the X-ray, both
    already at display size ([h, w, C] and [h, w]); boxes of `regions`; colour bar.
    With `weight_by_value` the heatmap's opacity is alpha * heat_opacity(value, full_at)."""
    xray_rgb = to_display_rgb(xray)
    if xray_rgb.shape[:2] != anomaly_map.shape:
        raise ValueError(f"X-ray {xray_rgb.shape[:2]} and anomaly map {anomaly_map.shape} differ in size")
    heat = apply_colormap(anomaly_map, colormap)
    image = Image.fromarray(
        blend(xray_rgb, heat, alpha, heat_opacity(anomaly_map, full_at) if weight_by_value else None)
    )
    draw_region_boxes(image, regions, region_scale)
    if not with_colorbar:
        return image
    bar = colorbar(image.height, colormap)
    canvas = Image.new("RGB", (image.width + bar.width, max(image.height, bar.height)), "white")
    canvas.paste(image, (0, 0))
    canvas.paste(bar, (image.width, 0))
    return canvas


def write_overlay_png(
    path: str | os.PathLike,
    reader,
    anomaly_map: np.ndarray,
    max_side: int = 2048,
    alpha: float = 0.5,
    colormap: str = "inferno",
    regions: Sequence = (),
    full_at: float = 0.5,
) -> tuple[int, int]:
    """Writes the overlay of a whole scan at most `max_side` px a side; returns (w, h) of
    the scan part. `reader` is a ScanReader (e.g. `ArrayScanReader`), the map full size."""
    if anomaly_map.shape != (reader.height, reader.width):
        raise ValueError(f"anomaly map {anomaly_map.shape} does not match the scan {(reader.height, reader.width)}")
    thumb, factor = read_thumbnail(reader, max_side)
    small_map = downsample_max(anomaly_map, factor)
    image = overlay_image(thumb, small_map, alpha, colormap, regions, 1.0 / factor, full_at=full_at)
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
