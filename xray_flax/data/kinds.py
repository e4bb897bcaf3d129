"""Anomaly kinds: which kinds of anomaly (paint loss, nail, an MVTec defect type, ...) each
anomalous tile holds, so that evaluation can say on which kinds a detector fails.

Where kinds come from:

* a kind map `<scan stem>_kinds.npz` beside a scan (what the simulated cache holds, written by
  `xray_flax.data.simulate`): `kinds`, uint8 [H, W], a bit set per pixel (bit k set: the
  anomaly kind `names[k]` covers that pixel; 0 where there is no anomaly), and `names`. An
  `.npz`, not an image, because the scans layout takes every image file below its folder
  for a scan;
* the MVTec layout: an anomalous test image's kind is its `test/<kind>/` folder;
* other layouts and scans without a kind map: unknown.

A tile's kinds are the kinds with at least one masked pixel in it (a tile may hold several);
every anomalous tile of an MVTec image gets the image's kind. Only anomalous tiles (label 1)
get kinds: a normal tile (label 0, possibly a few masked pixels under
`min_anomalous_fraction`) and an unknown one (-1) have none.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from xray_flax import files
from xray_flax.data import layouts, tiling

KIND_MAP_SUFFIX = "_kinds.npz"


def kind_map_path(scan_path: str) -> str:
    """Where the kind map of the scan at `scan_path` lies: `<stem>_kinds.npz` beside it."""
    return os.path.splitext(scan_path)[0] + KIND_MAP_SUFFIX


def write_kind_map(path: str, kinds: np.ndarray, names: Sequence[str]) -> None:
    """Writes a kind map (uint8 bit sets, bit k = names[k]) atomically."""
    with files.atomic_output(path, "the kind map") as tmp:
        # np.savez_compressed would append .npz to a name without it: write to an open file.
        with open(tmp, "wb") as f:
            np.savez_compressed(f, kinds=np.asarray(kinds, np.uint8), names=np.asarray(list(names), str))


def read_kind_map(path: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """(uint8 [H, W] bit sets, kind names by bit) of a kind map file."""
    with np.load(path) as data:
        return data["kinds"], tuple(str(n) for n in data["names"])


def bit_names(bits: int, names: Sequence[str]) -> tuple[str, ...]:
    """The names of the bits set in `bits`, in `names` order."""
    return tuple(name for k, name in enumerate(names) if bits >> k & 1)


def _map_tile_kinds(path: str, ys: np.ndarray, xs: np.ndarray, patch: int) -> list[tuple[str, ...]]:
    """The kinds each patch x patch tile of a kind map covers (tiles may hang over the border)."""
    kinds, names = read_kind_map(path)
    h, w = kinds.shape
    out = []
    for y, x in zip(ys, xs):
        window = kinds[max(int(y), 0) : min(int(y) + patch, h), max(int(x), 0) : min(int(x) + patch, w)]
        out.append(bit_names(int(np.bitwise_or.reduce(window, axis=None)) if window.size else 0, names))
    return out


def record_kind_source(record, source: str) -> str | tuple[str, ...] | None:
    """Where the kinds of `record`'s anomalous tiles come from: the path of its kind map, the
    image's one kind (MVTec: its test/<kind>/ folder) as a 1-tuple, or None (unknown)."""
    path = kind_map_path(record.path)
    if os.path.isfile(path):
        return path
    if source == "mvtec" and record.image_label == 1:
        return (layouts.mvtec_kind(record.path),)
    return None


def tile_kinds(records: Sequence, source: str, scan_index, ys, xs, labels, patch: int) -> list[tuple[str, ...]] | None:
    """The kinds of each tile (row i: the tile at ys[i], xs[i] of records[scan_index[i]]):
    a tuple of kind names, empty for normal and unknown tiles and where its image's kinds are
    unknown. None when no image of `records` carries kinds (the per-kind metrics then have
    nothing to say)."""
    sources = [record_kind_source(r, source) for r in records]
    if all(s is None for s in sources):
        return None
    scan_index, labels = np.asarray(scan_index), np.asarray(labels)
    ys, xs = np.asarray(ys), np.asarray(xs)
    out: list[tuple[str, ...]] = [()] * len(labels)
    for index, where in enumerate(sources):
        rows = np.flatnonzero((scan_index == index) & (labels == tiling.LABEL_ANOMALOUS))
        if where is None or not rows.size:
            continue
        found = [where] * len(rows) if isinstance(where, tuple) else _map_tile_kinds(where, ys[rows], xs[rows], patch)
        for row, kinds in zip(rows, found):
            out[row] = kinds
    return out
