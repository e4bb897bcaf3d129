"""Candidate anomalous regions of a whole-scan anomaly map: components, JSON, CSV.

A region is an 8-connected component of the pixels with ``map >= threshold`` (diagonal
neighbours join: thin cracks and scratches are often only diagonally connected).
Bounding boxes are half-open pixel ranges, ``x0 <= x < x1`` and ``y0 <= y < y1``, so a
crop is ``image[y0:y1, x0:x1]``.

Given a `foreground` mask (where the painting is, `overlay.foreground_mask`; predict passes
its `inside_painting`), pixels outside it never join a region: the models score the film
margin high (they never trained on it), and a region there would be the whole frame of the
scan, swallowing every defect that touches the painting's edge.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from collections.abc import Iterable, Sequence

import numpy as np
from scipy import ndimage

from xray_flax import files

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)

# Full-resolution mask values expanded at a time from a downscaled foreground: 16 MiB of bool.
_BAND_VALUES = 1 << 24

# How far inside the painting's mask regions start, in tiles. The X-ray's step from the dark
# margin to paint is no texture the models learnt: on the default run (2026-12-05) the paint's
# outermost 1-3 px scored above the threshold along the whole edge, a rim that framed the
# painting as one region again and swallowed a paint loss touching the edge. 1/16 of a tile
# (4 px of a 64 px tile) clears it with room to spare and clips little of such a defect.
RIM_TILES = 1 / 16


@dataclasses.dataclass(frozen=True)
class Region:
    id: int  # 1 = highest max score
    x0: int
    y0: int
    x1: int  # exclusive
    y1: int  # exclusive
    area: int  # pixels above the threshold
    mean_score: float  # over the component's pixels
    max_score: float
    peak_x: int  # location of max_score
    peak_y: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0


FIELDS = tuple(field.name for field in dataclasses.fields(Region))


def inside_painting(foreground: np.ndarray | None, factor: int, tile: int) -> np.ndarray | None:
    """Where regions may lie: `foreground` (the painting on a thumbnail downscaled by `factor`)
    less a rim of `RIM_TILES` x `tile` scan pixels, at least one thumbnail pixel, along the
    background. The scan's own border is no edge of the painting. None stays None."""
    if foreground is None:
        return None
    steps = max(1, math.ceil(RIM_TILES * tile / factor))
    return ndimage.binary_erosion(foreground, _EIGHT_CONNECTED, iterations=steps, border_value=1)


def _inside(above: np.ndarray, foreground: np.ndarray, factor: int) -> np.ndarray:
    """`above` [H, W] (in place) and-ed with `foreground` [ceil(H/f), ceil(W/f)] expanded to
    full resolution band by band: a full-size copy of the mask would cost a byte per pixel."""
    height, width = above.shape
    expected = (-(-height // factor), -(-width // factor))
    if foreground.shape != expected:
        raise ValueError(
            f"foreground {foreground.shape} does not match the map {above.shape} at 1/{factor}: {expected}"
        )
    cols = np.arange(width) // factor
    step = max(1, _BAND_VALUES // width)
    for y0 in range(0, height, step):
        rows = np.arange(y0, min(y0 + step, height)) // factor
        above[y0 : y0 + len(rows)] &= foreground[np.ix_(rows, cols)]
    return above


def find_regions(
    anomaly_map: np.ndarray,
    threshold: float,
    min_area: int = 1,
    max_regions: int | None = None,
    foreground: np.ndarray | None = None,
    factor: int = 1,
) -> list[Region]:
    """Components of ``anomaly_map >= threshold`` with at least `min_area` pixels.

    Sorted by max score (descending), then area (descending), then position; ids are
    1-based in that order. `max_regions` keeps only the first ones. `foreground`, bool
    [ceil(H/factor), ceil(W/factor)] (e.g. the overlay's mask of the painting on its
    thumbnail, downscaled by `factor`), keeps pixel (y, x) out of every region where
    ``foreground[y // factor, x // factor]`` is False; None: every pixel counts.
    """
    anomaly_map = np.asarray(anomaly_map)
    if anomaly_map.ndim == 3 and anomaly_map.shape[-1] == 1:
        anomaly_map = anomaly_map[..., 0]
    if anomaly_map.ndim != 2:
        raise ValueError(f"anomaly_map must be [H, W], got {anomaly_map.shape}")
    above = anomaly_map >= threshold
    if foreground is not None:
        above = _inside(above, np.asarray(foreground, bool), int(factor))
    components, count = ndimage.label(above, structure=_EIGHT_CONNECTED)
    if count == 0:
        return []
    found = []
    # Statistics inside each component's bounding box: the boxes together cover the map
    # about once, whereas scipy's per-label maximum_position sorts every pixel of the map
    # and a global bincount copies the labels to int64 (13 s and +600 MB at 5000 x 3000).
    for label, (rows, cols) in enumerate(ndimage.find_objects(components), start=1):
        inside = components[rows, cols] == label
        area = int(np.count_nonzero(inside))
        if area < min_area:
            continue
        values = anomaly_map[rows, cols]
        flat_peak = int(np.argmax(np.where(inside, values, -np.inf)))
        peak_y, peak_x = np.unravel_index(flat_peak, inside.shape)
        found.append(
            dict(
                x0=int(cols.start),
                y0=int(rows.start),
                x1=int(cols.stop),
                y1=int(rows.stop),
                area=area,
                mean_score=float(np.sum(values[inside], dtype=np.float64) / area),
                max_score=float(values[peak_y, peak_x]),
                peak_x=int(cols.start + peak_x),
                peak_y=int(rows.start + peak_y),
            )
        )
    found.sort(key=lambda r: (-r["max_score"], -r["area"], r["y0"], r["x0"]))
    if max_regions is not None:
        found = found[:max_regions]
    return [Region(id=i, **fields) for i, fields in enumerate(found, start=1)]


def regions_to_dicts(regions: Iterable[Region]) -> list[dict]:
    return [dataclasses.asdict(region) for region in regions]


def write_regions_json(path: str | os.PathLike, regions: Sequence[Region], metadata: dict | None = None) -> None:
    """{"metadata": {...}, "regions": [{id, x0, y0, x1, y1, area, mean_score, ...}]}."""
    payload = {"metadata": dict(metadata or {}), "regions": regions_to_dicts(regions)}
    # Serialised first: a value JSON cannot hold (NaN) fails before any file is touched.
    text = json.dumps(payload, indent=2, allow_nan=False) + "\n"
    with files.atomic_output(path, "the regions file") as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def write_regions_csv(path: str | os.PathLike, regions: Sequence[Region]) -> None:
    """One row per region, columns `FIELDS`, header first (also written when empty)."""
    with files.atomic_output(path, "the regions file") as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for row in regions_to_dicts(regions):
            writer.writerow(row)


def read_regions_json(path: str | os.PathLike) -> list[Region]:
    try:
        with open(path, encoding="utf-8") as f:
            payload = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"regions file not found: {path}") from None
    return [Region(**row) for row in payload["regions"]]
