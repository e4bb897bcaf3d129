"""Dataset layouts on disk -> lists of scan records, and the split by image.

* scans:  `root/*.{png,tif,tiff}` full scans; `<stem>_mask.png` (or .tif) next to a scan is
          its pixel mask; an optional CSV `image,x,y,label` gives per-patch expert labels.
* mvtec:  `root/train/good/*`, `root/test/<type>/*`, `root/ground_truth/<type>/<stem>_mask.png`.
* folder: `root/*` normal images only.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Sequence

import numpy as np

from xray_flax.data import readers


@dataclasses.dataclass(frozen=True)
class ScanRecord:
    """One full image. `patch_labels`: tuple of (x, y, label) from a CSV, or None.
    `known_normal`: the layout says the whole image is anomaly-free (MVTec good, folder)."""

    path: str
    mask_path: str | None = None
    patch_labels: tuple | None = None
    known_normal: bool = False

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        if self.patch_labels is not None:
            d["patch_labels"] = [list(map(int, r)) for r in self.patch_labels]
        return d

    @staticmethod
    def from_json(d: dict) -> ScanRecord:
        labels = d.get("patch_labels")
        return ScanRecord(
            d["path"],
            d.get("mask_path"),
            None if labels is None else tuple(tuple(int(v) for v in r) for r in labels),
            bool(d.get("known_normal", False)),
        )


def _is_image(name: str) -> bool:
    return name.lower().endswith(readers.IMAGE_SUFFIXES) and not name.startswith(".")


def _find_mask(folder: str, stem: str, suffix: str) -> str | None:
    for ext in (".png", ".tif", ".tiff"):
        p = os.path.join(folder, stem + suffix + ext)
        if os.path.isfile(p):
            return p
    return None


def read_labels_csv(path: str, root: str) -> dict[str, list[tuple[int, int, int]]]:
    """CSV `image,x,y,label` -> {absolute image path: [(x, y, label), ...]}."""
    out: dict[str, list] = {}
    try:
        f = open(path, newline="")
    except OSError as e:
        raise readers.CsvLabelError(path, f"cannot open labels CSV ({e})") from e
    with f:
        rows = csv.DictReader(f)
        missing = {"image", "x", "y", "label"} - set(rows.fieldnames or [])
        if missing:
            raise readers.CsvLabelError(path, f"missing columns {sorted(missing)}; need image,x,y,label")
        for line, row in enumerate(rows, start=2):
            try:
                x, y, label = int(row["x"]), int(row["y"]), int(row["label"])
            except (TypeError, ValueError) as e:
                raise readers.CsvLabelError(path, f"line {line}: x, y, label must be integers ({row})") from e
            if label not in (0, 1):
                raise readers.CsvLabelError(path, f"line {line}: label must be 0 or 1, got {label}")
            image = row["image"]
            image = image if os.path.isabs(image) else os.path.join(root, image)
            out.setdefault(os.path.normpath(image), []).append((x, y, label))
    return out


def scans_layout(root: str, *, labels_csv: str = "", mask_suffix: str = "_mask") -> list[ScanRecord]:
    """Full scans in `root` (not recursive) with optional masks and CSV labels."""
    if not os.path.isdir(root):
        raise readers.LayoutError(root, "scans folder not found")
    csv_path = labels_csv or os.path.join(root, "labels.csv")
    if labels_csv and not os.path.isabs(csv_path):
        csv_path = os.path.join(root, csv_path)
    labels = read_labels_csv(csv_path, root) if (labels_csv or os.path.isfile(csv_path)) else {}
    records = []
    names = sorted(n for n in os.listdir(root) if _is_image(n))
    for name in names:
        stem = os.path.splitext(name)[0]
        if stem.endswith(mask_suffix):
            continue
        path = os.path.normpath(os.path.join(root, name))
        patch_labels = labels.pop(path, None)
        records.append(
            ScanRecord(path, _find_mask(root, stem, mask_suffix), None if patch_labels is None else tuple(patch_labels))
        )
    if labels:
        image = sorted(labels)[0]
        raise readers.CsvLabelError(csv_path, f"labels refer to an image that is not in {root}: {image}")
    if not records:
        raise readers.LayoutError(root, "no scans (*.png, *.tif, *.tiff) found")
    return records


def folder_layout(root: str) -> list[ScanRecord]:
    """All images in `root` (recursive), every one normal."""
    if not os.path.isdir(root):
        raise readers.LayoutError(root, "image folder not found")
    records = []
    for dirpath, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            if _is_image(name):
                records.append(ScanRecord(os.path.normpath(os.path.join(dirpath, name)), known_normal=True))
    if not records:
        raise readers.LayoutError(root, "no images found")
    return records


def mvtec_layout(root: str, mask_suffix: str = "_mask") -> tuple[list[ScanRecord], list[ScanRecord]]:
    """(train records, test records) of one MVTec AD category folder."""
    train_dir, test_dir = os.path.join(root, "train", "good"), os.path.join(root, "test")
    if not os.path.isdir(train_dir) or not os.path.isdir(test_dir):
        raise readers.LayoutError(root, "not an MVTec AD category (need train/good and test/)")
    train = [
        ScanRecord(os.path.join(train_dir, n), known_normal=True) for n in sorted(os.listdir(train_dir)) if _is_image(n)
    ]
    test = []
    for kind in sorted(os.listdir(test_dir)):
        kind_dir = os.path.join(test_dir, kind)
        if not os.path.isdir(kind_dir):
            continue
        for name in sorted(n for n in os.listdir(kind_dir) if _is_image(n)):
            path = os.path.join(kind_dir, name)
            if kind == "good":
                test.append(ScanRecord(path, known_normal=True))
                continue
            mask = _find_mask(os.path.join(root, "ground_truth", kind), os.path.splitext(name)[0], mask_suffix)
            if mask is None:
                raise readers.LayoutError(path, f"no ground-truth mask in ground_truth/{kind}/")
            test.append(ScanRecord(path, mask))
    if not train:
        raise readers.EmptySplitError(train_dir, "no training images")
    if not test:
        raise readers.EmptySplitError(test_dir, "no test images")
    return train, test


# ------------------------------------------------------------------------------------------
# Split by image.


def split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Largest-remainder rounding of n * fractions; every positive fraction gets at least one
    image when there are enough images."""
    f = np.asarray(fractions, np.float64)
    if (f < 0).any() or f.sum() <= 0:
        raise ValueError(f"split fractions must be >= 0 and not all 0: {fractions}")
    f = f / f.sum()
    raw = f * n
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    for i in np.nonzero((f > 0) & (counts == 0))[0]:
        donor = int(np.argmax(counts))
        if counts[donor] > 1:
            counts[donor] -= 1
            counts[i] += 1
    return counts.tolist()


def split_by_image(records: Sequence[ScanRecord], fractions: Sequence[float], seed: int):
    """Deterministic split of whole images: sorted by path, permuted by `seed`, cut by counts."""
    ordered = sorted(records, key=lambda r: r.path)
    order = np.random.default_rng(seed).permutation(len(ordered))
    counts = split_counts(len(ordered), fractions)
    parts, start = [], 0
    for c in counts:
        parts.append([ordered[i] for i in order[start : start + c]])
        start += c
    return parts
