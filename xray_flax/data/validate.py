"""Checks every input file of a run before training, so bad data fail in seconds, not after
hours of training at the first validation or in the final evaluation.

`validate_splits(splits, data_config)` opens every image and mask of train, val and test:

* images by their header only (`readers.read_header`: TIFF tags and segment extents, PNG
  IHDR and chunk list), never decoded, so a 12000x9000 scan costs a few reads;
* whether the tiling can give each image a tile (see `_tiling_problem`);
* masks: header size against the image, then decoded (masks are small, usually 8-bit: a
  12000x9000 one is 108 MB and ~0.5 s) to find truncation and non-binary values; a
  non-binary mask gets one warning with the values found and the rule `readers.read_mask`
  applies;
* every labels-CSV patch row inside its scan, named by its CSV line.

All problems are collected: one is raised as its own DataError; several as one
`readers.DataValidationError` listing up to `max_listed` of them, so a user fixes them in one
go. Source 'tfds' is not checked: its patches were read and stored when it was built.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time

import numpy as np

from xray_flax import errors
from xray_flax.data import layouts, readers

SPLIT_NAMES = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class ValidationReport:
    """What `validate_splits` checked: files opened per kind, CSV rows, warnings given."""

    images: int = 0
    masks: int = 0
    csv_rows: int = 0
    warnings: tuple[str, ...] = ()
    seconds: float = 0.0
    skipped: str = ""  # why nothing was checked ('' when everything was)

    @property
    def files(self) -> int:
        return self.images + self.masks


def _tiling_problem(header: readers.ImageHeader, data_config) -> str | None:
    """Why the grid tiling gives this image no tile, from its size alone, or None.

    With border 'drop' an image smaller than a patch has no whole tile. With 'pad' or
    'shift' its tiles are zero-padded, and the 'dark_fraction' background rule drops every
    tile whose padding alone reaches `max_fraction` (padding is 0, below any threshold > 0):
    such an image silently contributes nothing, and a val/test split made of them has no
    tiles (found only at the first validation, after training started)."""
    patch = int(data_config.patch_size)
    h, w = header.height, header.width
    if h >= patch and w >= patch:
        return None
    size = f"{h}x{w} (HxW) is smaller than one {patch}x{patch} patch (config.data.patch_size)"
    if data_config.border == "drop":
        return f"image {size}: border 'drop' gives it no tile; use a smaller patch_size or remove it"
    bg = data_config.background
    padding = 1.0 - min(h, patch) * min(w, patch) / float(patch * patch)
    if bg.rule == "dark_fraction" and float(bg.threshold) > 0 and padding >= float(bg.max_fraction):
        return (
            f"image {size}: its tiles are {padding:.0%} zero padding, so the background rule "
            f"(dark_fraction, max_fraction {bg.max_fraction}) drops them all; use a smaller patch_size or remove it"
        )
    return None


def _csv_lines(splits, data_config) -> tuple[str | None, dict]:
    """(labels CSV path, {(image, x, y): line}) for naming CSV rows, when the source reads one."""
    if data_config.source != "scans" or not splits.root:
        return None, {}
    path = layouts.labels_csv_path(splits.root, data_config.labels_csv)
    if not path:
        return None, {}
    rows = layouts.read_labels_csv_rows(path, splits.root, warn_repeats=False)  # warned once already
    return path, {(image, x, y): line for image, items in rows.items() for x, y, _, line in items}


def _value_list(values: np.ndarray, limit: int = 6) -> str:
    shown = ", ".join(str(int(v)) for v in values[:limit])
    return shown + (f", ... ({len(values)} distinct values)" if len(values) > limit else "")


def _mask_values(raw: np.ndarray) -> np.ndarray:
    """Sorted distinct values. Marking a table of all 8/16-bit codes takes 0.2 s on a
    12000x9000 mask, where np.unique (a sort) or np.bincount (an int64 copy) take seconds."""
    if raw.dtype.kind == "u" and raw.dtype.itemsize <= 2:
        seen = np.zeros(2 ** (8 * raw.dtype.itemsize), bool)
        seen[raw.ravel()] = True
        return np.flatnonzero(seen)
    return np.unique(raw)


def _check_mask(path: str, image: readers.ImageHeader | None, warnings: list):
    header = readers.read_header(path)
    if image is not None and (header.height, header.width) != (image.height, image.width):
        # From the header: a wrong-size mask is refused before it is decoded.
        raise readers.MaskShapeError(
            path,
            f"mask is {header.height}x{header.width} (HxW) but its scan {os.path.basename(image.path)} "
            f"is {image.height}x{image.width}",
        )
    raw, bits = readers.read_mask_raw(path)
    values = _mask_values(raw)
    top = 2**bits - 1
    if set(values.tolist()) <= {0, top} or values.tolist() == [0, 1] or values.tolist() == [1]:
        return
    message = (
        f"{path}: mask is not binary (values {_value_list(values)}); "
        f"{readers.mask_rule(int(values[-1]), bits)}, the rest normal"
    )
    logging.warning("%s", message)
    warnings.append(message)


def validate_splits(splits, data_config, *, max_listed: int = 10) -> ValidationReport:
    """Opens every image and mask of every split and checks every CSV patch row (see the
    module docstring). Returns what was checked; raises the problem found (one) or a
    `readers.DataValidationError` listing them (several)."""
    if getattr(splits, "tfds_dir", None):
        return ValidationReport(skipped=f"source 'tfds': patches are read from {splits.tfds_dir}")
    if int(data_config.channels) not in (1, 3):
        raise errors.ConfigError(f"config.data.channels must be 1 or 3, got {data_config.channels}")
    start = time.monotonic()
    records = [(name, r) for name in SPLIT_NAMES for r in splits.get(name)]
    if not records:
        raise readers.EmptySplitError(splits.root or "<data>", "no images in any split")
    csv_path, csv_lines = _csv_lines(splits, data_config)
    patch = int(data_config.patch_size)
    problems: list[tuple[str, readers.DataError]] = []  # (what to call it in the summary, error)
    warnings: list[str] = []
    n_images = n_masks = n_rows = bad_rows = 0
    seen_masks = set()

    def attempt(split, fn, *args):
        try:
            return fn(*args)
        except readers.DataError as e:
            problems.append((f"{split} {os.path.basename(e.path)}", e))
            return None

    for split, record in records:
        n_images += 1
        header = attempt(split, readers.read_header, record.path)
        if header is not None and record.patch_labels is None:
            # CSV rows, when present, are the tiles: their bounds are checked instead.
            problem = _tiling_problem(header, data_config)
            if problem:
                problems.append(
                    (f"{split} {os.path.basename(record.path)}", readers.ImageTooSmallError(record.path, problem))
                )
        if record.mask_path and record.mask_path not in seen_masks:
            seen_masks.add(record.mask_path)
            n_masks += 1
            attempt(split, _check_mask, record.mask_path, header, warnings)
        for index, (x, y, _) in enumerate(record.patch_labels or ()):
            n_rows += 1
            if header is None or (0 <= x and 0 <= y and x + patch <= header.width and y + patch <= header.height):
                continue
            bad_rows += 1
            line = csv_lines.get((os.path.normpath(record.path), x, y))
            # Named by its CSV line when the rows came from the CSV read here, else by index.
            where, culprit = (f"line {line}", csv_path) if line else (f"patch row {index + 1}", record.path)
            problems.append(
                (
                    f"{split} {os.path.basename(culprit)} {where}",
                    readers.CsvLabelError(
                        culprit,
                        f"{where}: patch x={x}, y={y} (size {patch}) lies outside "
                        f"{os.path.basename(record.path)}, a {header.width}x{header.height} (WxH) image",
                    ),
                )
            )
    report = ValidationReport(n_images, n_masks, n_rows, tuple(warnings), time.monotonic() - start)
    if problems:
        _raise(problems, report, bad_rows, max_listed)
    logging.info(
        "input check: %d images, %d masks, %d CSV rows readable and consistent (%.1f s)",
        n_images,
        n_masks,
        n_rows,
        report.seconds,
    )
    return report


def _raise(problems, report: ValidationReport, bad_rows: int, max_listed: int):
    if len(problems) == 1:
        raise problems[0][1]
    errors = [e for _, e in problems]
    bad_files = {e.path for e in errors if not isinstance(e, readers.CsvLabelError)}
    parts = []
    if bad_files:
        parts.append(f"{len(bad_files)} of {report.files} files are unusable")
    if bad_rows:
        parts.append(f"{bad_rows} of {report.csv_rows} labels-CSV rows lie outside their image")
    listed = ", ".join(name for name, _ in problems[:max_listed])
    summary = f"{' and '.join(parts)}: {listed}{', ...' if len(problems) > max_listed else ''}"
    raise readers.DataValidationError(summary, [e for _, e in problems], max_listed)
