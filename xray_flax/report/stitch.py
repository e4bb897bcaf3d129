"""Whole-scan anomaly maps from overlapping tiles, streamed band by band.

A scan of a painting is far larger than a patch. `stitch_anomaly_map` slides a
`patch_size` window with step `stride` over the scan, runs the detector on batches of
tiles and blends the overlapping tile maps back with a smooth window, normalised by the
summed weights, so no seams appear at tile edges.

Memory is bounded by one horizontal band of tiles, not by the scan: tiles are produced in
raster order from one band read at a time, and the accumulator only holds the `patch_size`
rows that can still receive contributions. Rows above the current band are final and are
written to the output (an in-memory float32 map, or any [H, W] array the caller passes,
e.g. a `np.memmap`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from xray_flax import errors
from xray_flax.data import tiling

AnomalyFn = Callable[[np.ndarray], np.ndarray]
ProgressFn = Callable[[int, int], None]

WINDOWS = ("hann", "triangle", "flat")
# Hann weights fall to ~1e-5 at a 512-px tile edge; the floor keeps edge pixels, which
# only the edge of one tile may cover at a scan border, well inside float32 precision.
_WINDOW_FLOOR = 1e-3


class NonFiniteMapError(errors.UserError, ValueError):
    """A tile map came out NaN or infinite. `y`, `x`: the first such tile's origin in the
    scan; `input_finite`: whether that tile's pixels were finite (if so, the model is at
    fault - corrupt or diverged weights - rather than the scan)."""

    def __init__(self, y: int, x: int, input_finite: bool):
        self.y, self.x, self.input_finite = int(y), int(x), bool(input_finite)
        source = "from finite pixels" if input_finite else "the tile's pixels are NaN/Inf too"
        super().__init__(f"non-finite (NaN/Inf) anomaly map in the tile at y={self.y}, x={self.x} ({source})")


class ScanReaderLike(Protocol):
    height: int
    width: int
    channels: int

    def read_region(self, y: int, x: int, h: int, w: int) -> np.ndarray: ...


def blend_window(name: str, patch_size: int) -> np.ndarray:
    """2-D blending weights [patch, patch], float32, strictly positive everywhere.

    'hann': sin^2 bump (cell-centred, so symmetric), floored at 1e-3; 'triangle': linear
    bump, min 1/patch; 'flat': ones (plain average of overlapping tiles, like anomalib's
    untiling - shows seams where neighbouring tiles disagree).
    """
    centres = (np.arange(patch_size, dtype=np.float64) + 0.5) / patch_size
    if name == "hann":
        profile = np.maximum(np.sin(np.pi * centres) ** 2, _WINDOW_FLOOR)
    elif name == "triangle":
        profile = 1.0 - np.abs(2.0 * centres - 1.0)
    elif name == "flat":
        profile = np.ones(patch_size)
    else:
        raise ValueError(f"unknown blend window {name!r}; expected one of {WINDOWS}")
    return np.outer(profile, profile).astype(np.float32)


def _as_tile_maps(result, batch_size: int, patch_size: int) -> np.ndarray:
    maps = np.asarray(result, dtype=np.float32)
    if maps.ndim == 4 and maps.shape[-1] == 1:
        maps = maps[..., 0]
    if maps.shape != (batch_size, patch_size, patch_size):
        raise ValueError(
            f"anomaly_fn must return [{batch_size}, {patch_size}, {patch_size}] for "
            f"{batch_size} tiles, got {maps.shape}"
        )
    return maps


class _BandAccumulator:
    """Weighted sums for the `patch_size` rows that can still receive tiles."""

    def __init__(self, out: np.ndarray, patch_size: int, buffer_width: int, weights: np.ndarray):
        self.out = out
        self.height, self.width = out.shape
        self.patch = patch_size
        self.weights = weights
        self.top = 0  # scan row of buffer row 0
        self.values = np.zeros((patch_size, buffer_width), np.float32)
        self.total_weight = np.zeros((patch_size, buffer_width), np.float32)

    def add(self, y: int, x: int, tile_map: np.ndarray) -> None:
        if y > self.top:
            # Tiles arrive in raster order: nothing can touch rows above this band any more.
            self.flush_until(y)
        rows = slice(y - self.top, y - self.top + self.patch)
        cols = slice(x, x + self.patch)
        self.values[rows, cols] += tile_map * self.weights
        self.total_weight[rows, cols] += self.weights

    def flush_until(self, row: int) -> None:
        """Writes final rows [top, row) to the output and shifts the buffer up."""
        row = min(row, self.top + self.patch)
        shift = row - self.top
        if shift <= 0:
            return
        end = min(row, self.height)
        if end > self.top:
            n = end - self.top
            weight = self.total_weight[:n, : self.width]
            if not np.all(weight > 0):
                raise AssertionError("stitching left pixels without any tile (a bug in the tile grid)")
            final = self.values[:n, : self.width] / weight
            if not np.isfinite(final).all():
                # Finite tiles can still overflow float32 when summed (values near 3e38).
                y, x = np.argwhere(~np.isfinite(final))[0]
                raise NonFiniteMapError(self.top + y, x, input_finite=True)
            self.out[self.top : end] = final
        for buffer in (self.values, self.total_weight):
            buffer[:-shift] = buffer[shift:]
            buffer[-shift:] = 0.0
        self.top = row


def _output_map(out: np.ndarray | None, height: int, width: int) -> np.ndarray:
    """`out` when it has the scan's shape (ValueError if not), else a new zero map."""
    if out is None:
        return np.zeros((height, width), np.float32)
    if out.shape != (height, width):
        raise ValueError(f"out has shape {out.shape}, the scan is {(height, width)}")
    return out


def stitch_anomaly_map(
    reader: ScanReaderLike,
    anomaly_fn: AnomalyFn,
    patch_size: int,
    stride: int,
    batch_size: int,
    window: str = "hann",
    progress: ProgressFn | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Anomaly map of a whole scan, float32 [H, W].

    Args:
      reader: a `data.readers.ScanReader` (height, width, channels, read_region), e.g.
        `data.readers.ArrayScanReader` over an in-memory array.
      anomaly_fn: float32 [batch_size, patch, patch, C] -> [batch_size, patch, patch]
        (or [..., 1]); always called with exactly `batch_size` tiles - the last batch is
        padded with zeros - so a jitted function compiles once. It may return a JAX array:
        the next batch is submitted before the previous result is read back, so device
        work overlaps the host's reading and blending.
      patch_size, stride: tile side and step in pixels (stride <= patch_size). Tiles start at
        0, stride, ... and the last one ends flush with the border (`data.tiling.tile_starts`
        with border 'shift'): every pixel is covered and no tile hangs over the border unless
        the scan is shorter than a patch (one tile at 0, zero-padded by the reader).
      window: blend window, see `blend_window`.
      progress: called as progress(tiles_done, tiles_total) after every batch.
      out: optional [H, W] float32 array (e.g. `np.memmap`) written in place and returned.

    Raises NonFiniteMapError at the first tile whose map has a NaN or Inf (nothing
    non-finite is ever blended into `out`).

    Memory: one band read (patch x width x C), two tile batches, and 2 x patch x width
    accumulators, plus `out`.
    """
    height, width, channels = int(reader.height), int(reader.width), int(reader.channels)
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    out = _output_map(out, height, width)
    rows = tiling.tile_starts(height, patch_size, stride, "shift").tolist()
    cols = tiling.tile_starts(width, patch_size, stride, "shift").tolist()
    if stride > patch_size:
        # tile_starts allows sparse sampling; a map needs a value for every pixel.
        raise ValueError(f"stride {stride} > patch_size {patch_size} would leave gaps in the map")
    buffer_width = cols[-1] + patch_size
    total = len(rows) * len(cols)
    accumulator = _BandAccumulator(out, patch_size, buffer_width, blend_window(window, patch_size))

    # Two batch buffers: one may still be read by the device while the other is filled.
    buffers = [np.zeros((batch_size, patch_size, patch_size, channels), np.float32) for _ in range(2)]
    current = 0
    filled: list[tuple[int, int]] = []
    in_flight: tuple[object, list[tuple[int, int]], np.ndarray] | None = None
    done = 0

    def collect(pending) -> None:
        nonlocal done
        result, origins, batch = pending
        tile_maps = _as_tile_maps(result, batch_size, patch_size)
        # A NaN would blend into its neighbours and come out as a plausible-looking map (or,
        # from corrupt weights, as zeros after a normalisation): stop at the first one. One
        # pass over the batch, small next to the model's work.
        finite = np.isfinite(tile_maps[: len(origins)]).reshape(len(origins), -1).all(axis=1)
        if not finite.all():
            first = int(np.argmin(finite))
            y, x = origins[first]
            # `batch` is not refilled before this batch is collected (see submit).
            raise NonFiniteMapError(y, x, input_finite=bool(np.isfinite(batch[first]).all()))
        for (y, x), tile_map in zip(origins, tile_maps):
            accumulator.add(y, x, tile_map)
        done += len(origins)
        if progress is not None:
            progress(done, total)

    def submit() -> None:
        nonlocal current, filled, in_flight
        batch = buffers[current]
        batch[len(filled) :] = 0.0  # padding tiles of the last batch
        result = anomaly_fn(batch)
        if in_flight is not None:
            collect(in_flight)
        in_flight = (result, filled, batch)
        current, filled = 1 - current, []

    for y in rows:
        band = reader.read_region(y, 0, patch_size, buffer_width)
        for x in cols:
            buffers[current][len(filled)] = band[:, x : x + patch_size]
            filled.append((y, x))
            if len(filled) == batch_size:
                submit()
        del band
    if filled:
        submit()
    if in_flight is not None:
        collect(in_flight)
    accumulator.flush_until(accumulator.top + patch_size)
    return out
