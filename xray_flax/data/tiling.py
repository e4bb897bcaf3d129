"""Tiling of scans into (image, tile) pairs and the Grain random-access source over them.

The tile table (scan index, y, x, label, masked fraction) is built once in the main process
from image sizes, masks / CSV labels and the background rule; it is small (one row per tile)
and travels to Grain workers with the source. Pixels are read per tile, lazily, through
`readers.open_scan` in whichever process asks for them.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from collections.abc import Sequence

import numpy as np

from xray_flax import config_rules, errors
from xray_flax.data import config as data_config_lib
from xray_flax.data import readers

LABEL_NORMAL = 0
LABEL_ANOMALOUS = 1
LABEL_UNKNOWN = -1


# ------------------------------------------------------------------------------------------
# Grid geometry (pure functions).


def tile_starts(length: int, patch: int, stride: int, border: str) -> np.ndarray:
    """Start offsets of tiles along one axis of `length` pixels.

    'pad':   starts 0, stride, ... while the tile still begins inside the image and the
             previous tile did not already reach the end (partial tiles are zero-padded);
    'shift': as 'pad' but the last tile is moved back to end exactly at the border (an image
             shorter than a patch gets one tile at 0, padded);
    'drop':  only tiles that fit entirely.
    """
    if patch <= 0 or stride <= 0:
        raise ValueError(f"patch ({patch}) and stride ({stride}) must be positive")
    errors.require(config_rules.one_of("config.data.border", border, data_config_lib.BORDER_POLICIES))
    if length <= 0:
        return np.zeros((0,), np.int64)
    full = np.arange(0, max(length - patch, -1) + 1, stride, dtype=np.int64)  # tiles that fit
    if border == "drop":
        return full
    covered = int(full[-1]) + patch if len(full) else 0
    if covered >= length:
        return full
    if border == "pad":
        nxt = int(full[-1]) + stride if len(full) else 0
        extra = np.arange(nxt, length, stride, dtype=np.int64)
        # Stop after the first tile that reaches the end: later ones would only add padding.
        if len(extra):
            reach = np.nonzero(extra + patch >= length)[0]
            extra = extra[: reach[0] + 1] if len(reach) else extra
        return np.concatenate([full, extra])
    # shift
    return np.concatenate([full, np.asarray([max(length - patch, 0)], np.int64)])


def grid_positions(height: int, width: int, patch: int, stride: int, border: str):
    """(ys, xs) int64 arrays of every tile's top-left corner, row-major."""
    ys = tile_starts(height, patch, stride, border)
    xs = tile_starts(width, patch, stride, border)
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    return gy.ravel(), gx.ravel()


def masked_fractions(mask: np.ndarray, ys: np.ndarray, xs: np.ndarray, patch: int) -> np.ndarray:
    """Fraction of each patch x patch tile covered by `mask` (pixels outside count as clean).

    Uses a summed-area table so the cost is one pass over the mask for any number of tiles."""
    h, w = mask.shape
    sat = np.zeros((h + 1, w + 1), np.int64)
    np.cumsum(np.cumsum(mask, axis=0, dtype=np.int64), axis=1, out=sat[1:, 1:])
    y0, x0 = np.clip(ys, 0, h), np.clip(xs, 0, w)
    y1, x1 = np.clip(ys + patch, 0, h), np.clip(xs + patch, 0, w)
    counts = sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]
    return counts.astype(np.float64) / float(patch * patch)


def is_background(tile: np.ndarray, rule: str, threshold: float, max_fraction: float) -> bool:
    """Whether a normalised tile [h, w, C] is background (panel margin, empty film)."""
    if rule == "none":
        return False
    gray = tile.mean(axis=-1)
    if rule == "dark_fraction":
        return bool(np.mean(gray < threshold) >= max_fraction)
    if rule == "low_std":
        return bool(gray.std() < threshold)
    raise ValueError(f"unknown background rule {rule!r}; use 'none', 'dark_fraction' or 'low_std'")


# ------------------------------------------------------------------------------------------
# Tile table.


@dataclasses.dataclass(frozen=True)
class TileTable:
    """One row per tile. `masked` is the masked fraction (0 without a mask)."""

    scan_index: np.ndarray  # int32
    y: np.ndarray  # int32
    x: np.ndarray  # int32
    label: np.ndarray  # int32: 0 normal, 1 anomalous, -1 unknown
    masked: np.ndarray  # float32

    def __len__(self):
        return len(self.scan_index)

    def select(self, keep: np.ndarray) -> TileTable:
        return TileTable(*(getattr(self, f.name)[keep] for f in dataclasses.fields(self)))

    @staticmethod
    def concat(tables: Sequence[TileTable]) -> TileTable:
        if not tables:
            return TileTable(*(np.zeros((0,), t) for t in (np.int32, np.int32, np.int32, np.int32, np.float32)))
        return TileTable(*(np.concatenate([getattr(t, f.name) for t in tables]) for f in dataclasses.fields(TileTable)))


def reader_options(data_config) -> dict:
    return dict(
        channels=int(data_config.channels),
        normalization=data_config.normalization,
        percentiles=tuple(data_config.percentiles),
        rgb_to_gray=data_config.rgb_to_gray,
        png_cache_images=int(data_config.png_cache_images),
    )


def _unmasked_tile_label(image_label: int | None, n_tiles: int, height: int, width: int, patch: int) -> int:
    """Label of every tile of an image without a mask or CSV rows, from its image label.

    A normal image's tiles are all normal. Of an anomalous image's tiles only a lone tile
    that spans the whole image surely holds the defect (with border='drop' a single tile may
    miss the dropped strip); for several tiles, which of them do is unknown."""
    if image_label == 0:
        return LABEL_NORMAL
    if image_label == 1 and n_tiles == 1 and height <= patch and width <= patch:
        return LABEL_ANOMALOUS
    return LABEL_UNKNOWN


def scan_tiles(scan, scan_index: int, data_config) -> TileTable:
    """The tiles of one scan record (see pipeline.ScanRecord) with labels."""
    patch = int(data_config.patch_size)
    reader = readers.open_scan(scan.path, **reader_options(data_config))
    try:
        h, w = reader.height, reader.width
        mask = readers.read_mask(scan.mask_path, (h, w)) if scan.mask_path else None
        if scan.patch_labels is not None:
            # Expert labels: the CSV rows are the tiles (the paper's patches), no background rule.
            rows = np.asarray(scan.patch_labels, np.int64).reshape(-1, 3)
            xs, ys, labels = rows[:, 0], rows[:, 1], rows[:, 2]
            outside = (xs < 0) | (ys < 0) | (xs + patch > w) | (ys + patch > h)
            if outside.any():
                bad = int(np.nonzero(outside)[0][0])
                raise readers.CsvLabelError(
                    scan.path,
                    f"CSV patch at x={xs[bad]}, y={ys[bad]} (size {patch}) lies outside the {w}x{h} (WxH) image",
                )
            masked = masked_fractions(mask, ys, xs, patch) if mask is not None else np.zeros(len(xs))
        else:
            ys, xs = grid_positions(h, w, patch, int(data_config.stride), data_config.border)
            # Counted before the background rule: a skipped tile still held part of the image.
            unmasked_label = _unmasked_tile_label(scan.image_label, len(ys), h, w, patch)
            bg = data_config.background
            if bg.rule != "none":
                keep = np.asarray(
                    [
                        not is_background(
                            reader.read_region(int(y), int(x), patch, patch), bg.rule, bg.threshold, bg.max_fraction
                        )
                        for y, x in zip(ys, xs)
                    ],
                    bool,
                )
                ys, xs = ys[keep], xs[keep]
            if mask is not None:
                masked = masked_fractions(mask, ys, xs, patch)
                labels = np.where(
                    masked >= float(data_config.min_anomalous_fraction) - 1e-12, LABEL_ANOMALOUS, LABEL_NORMAL
                )
                # A tile with zero masked pixels is normal even when min_anomalous_fraction is 0.
                labels = np.where(masked > 0, labels, LABEL_NORMAL)
            else:
                masked = np.zeros(len(ys))
                labels = np.full(len(ys), unmasked_label)
    finally:
        reader.close()
    n = len(ys)
    return TileTable(
        np.full(n, scan_index, np.int32),
        ys.astype(np.int32),
        xs.astype(np.int32),
        np.asarray(labels, np.int32),
        np.asarray(masked, np.float32),
    )


def build_tile_table(scans: Sequence, data_config) -> TileTable:
    return TileTable.concat([scan_tiles(s, i, data_config) for i, s in enumerate(scans)])


def anomalous_rows(table: TileTable) -> np.ndarray:
    """Boolean selection of the tiles labelled anomalous or touching a mask."""
    return (table.label == LABEL_ANOMALOUS) | (table.masked > 0)


def training_rows(table: TileTable, data_config) -> np.ndarray:
    """Boolean selection of tiles DRAEM may learn "normal" from."""
    keep = table.label == LABEL_NORMAL
    if data_config.train_exclude_any_masked:
        keep &= table.masked == 0
    if data_config.train_on_unlabelled:
        keep |= table.label == LABEL_UNKNOWN
    return keep


# ------------------------------------------------------------------------------------------
# Grain source.


class _LRU:
    """Tiny per-process LRU for decoded masks (PNG masks cannot be read by region)."""

    def __init__(self, capacity):
        self._items = collections.OrderedDict()
        self._capacity = max(int(capacity), 1)
        self._lock = threading.Lock()

    def get(self, key, make):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = make()
        with self._lock:
            self._items[key] = value
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)
        return value


class TileSource:
    """Grain random-access source: element i = tile i of `table` as a dict of NumPy arrays
    {'image' float32 [P,P,C], 'label' int32, 'mask' float32 [P,P,1], 'scan_index', 'y', 'x'}.

    Pickles without open files; each process opens its readers on first use."""

    def __init__(self, scans: Sequence, table: TileTable, data_config):
        self._paths = [s.path for s in scans]
        self._mask_paths = [s.mask_path for s in scans]
        self._table = table
        self._patch = int(data_config.patch_size)
        self._options = reader_options(data_config)
        self._init_caches()

    def _init_caches(self):
        self._readers = {}
        self._readers_lock = threading.Lock()
        self._masks = _LRU(self._options["png_cache_images"])

    def __getstate__(self):
        state = dict(self.__dict__)
        for k in ("_readers", "_readers_lock", "_masks"):
            state.pop(k)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._init_caches()

    def __len__(self):
        return len(self._table)

    def __repr__(self):
        return f"TileSource({len(self._paths)} scans, {len(self)} tiles, patch {self._patch})"

    @property
    def table(self) -> TileTable:
        return self._table

    def reader(self, scan_index: int) -> readers.ScanReader:
        with self._readers_lock:
            r = self._readers.get(scan_index)
            if r is None:
                r = readers.open_scan(self._paths[scan_index], **self._options)
                self._readers[scan_index] = r
            return r

    def _mask_tile(self, scan_index, reader, y, x):
        p = self._patch
        out = np.zeros((p, p, 1), np.float32)
        path = self._mask_paths[scan_index]
        if path is None:
            return out
        mask = self._masks.get(path, lambda: readers.read_mask(path, (reader.height, reader.width)))
        y0, x0 = max(y, 0), max(x, 0)
        y1, x1 = min(y + p, mask.shape[0]), min(x + p, mask.shape[1])
        out[y0 - y : y1 - y, x0 - x : x1 - x, 0] = mask[y0:y1, x0:x1]
        return out

    def __getitem__(self, index: int) -> dict:
        t = self._table
        s, y, x = int(t.scan_index[index]), int(t.y[index]), int(t.x[index])
        reader = self.reader(s)
        return {
            "image": reader.read_region(y, x, self._patch, self._patch),
            "label": np.int32(t.label[index]),
            "mask": self._mask_tile(s, reader, y, x),
            "scan_index": np.int32(s),
            "y": np.int32(y),
            "x": np.int32(x),
        }
