"""Dataset layouts on disk -> lists of scan records, and the split by image.

* scans:  full scans anywhere below `root` (`scan_files`: PNG, TIFF, DICOM, ..., searched
          recursively); `<stem>_mask.png` (or .tif) next to a scan is its pixel mask; an
          optional CSV `image,x,y,label` gives per-patch expert labels.
* mvtec:  `root/train/good/*`, `root/test/<type>/*`, `root/ground_truth/<type>/<stem>_mask.png`.
          A defect type without a `ground_truth/<type>/` folder has image labels only. An
          anomalous test image's kind is its type (`mvtec_kind`, xray_flax/data/kinds.py).
* folder: like anomalib's Folder datamodule: `normal_dir` (normal images), optional
          `abnormal_dir` (anomalous images), `normal_test_dir` (normal images kept for
          testing) and `mask_dir` (pixel masks of the abnormal images, `<stem>.png` or
          `<stem><mask_suffix>.png`, in the same subfolder as the image below abnormal_dir).
          Each folder is searched recursively. With only a root: `root/**` normal images.

Every record carries `image_label` where the layout knows it: 0 for a normal image (MVTec
good, folder normal dirs), 1 for an anomalous one (MVTec defect types, folder abnormal_dir).
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
from collections.abc import Sequence

import numpy as np

from xray_flax.data import readers


@dataclasses.dataclass(frozen=True)
class ScanRecord:
    """One full image. `patch_labels`: tuple of (x, y, label) from a CSV, or None.
    `image_label`: the label of the whole image when the layout knows it (0: known normal,
    e.g. MVTec good; 1: anomalous image, e.g. an MVTec defect type), else None."""

    path: str
    mask_path: str | None = None
    patch_labels: tuple | None = None
    image_label: int | None = None

    def __post_init__(self):
        if self.image_label not in (None, 0, 1):
            raise ValueError(f"{self.path}: image_label must be None, 0 or 1, got {self.image_label!r}")

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        if self.patch_labels is not None:
            d["patch_labels"] = [list(map(int, r)) for r in self.patch_labels]
        return d

    @staticmethod
    def from_json(d: dict) -> ScanRecord:
        labels = d.get("patch_labels")
        image_label = d.get("image_label")
        if image_label is None and d.get("known_normal"):
            image_label = 0  # splits.json / TFDS index written before image_label existed
        return ScanRecord(
            d["path"],
            d.get("mask_path"),
            None if labels is None else tuple(tuple(int(v) for v in r) for r in labels),
            None if image_label is None else int(image_label),
        )


SPLIT_NAMES = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class Splits:
    """Scan records per split. `tfds_dir` is set when source == 'tfds' (patches are then read
    from the array_record dataset; the records describe the scans the patches came from)."""

    train: list
    val: list
    test: list
    root: str = ""
    tfds_dir: str | None = None

    def get(self, name: str) -> list:
        if name not in SPLIT_NAMES:
            raise ValueError(f"unknown split {name!r}; use one of {SPLIT_NAMES}")
        return getattr(self, name)

    def to_json(self) -> dict:
        return {
            "root": self.root,
            "tfds_dir": self.tfds_dir,
            **{n: [r.to_json() for r in self.get(n)] for n in SPLIT_NAMES},
        }

    @staticmethod
    def from_json(d: dict) -> Splits:
        return Splits(
            *([ScanRecord.from_json(r) for r in d[n]] for n in SPLIT_NAMES),
            root=d.get("root", ""),
            tfds_dir=d.get("tfds_dir"),
        )


def _is_image(name: str) -> bool:
    return name.lower().endswith(readers.IMAGE_SUFFIXES) and not name.startswith(".")


def is_scan_file(path: str) -> bool:
    """A file the readers open: an image suffix (`readers.IMAGE_SUFFIXES`), or a DICOM file
    by its preamble whatever its name (DICOMDIR exports name images `IM000001`); hidden files
    and the DICOMDIR index itself are not scans."""
    name = os.path.basename(path)
    if name.startswith(".") or name.upper() == "DICOMDIR":
        return False
    return _is_image(name) or readers.is_dicom(path)


def scan_files(folder: str, skip: Sequence[str] = ()) -> list[str]:
    """Scan files below `folder` (`is_scan_file`), searched recursively, sorted by path (so the
    same files give the same list, hence the same splits); hidden folders (`.name`) are not
    entered, nor the `skip` folders."""
    skip = {os.path.normpath(os.path.abspath(d)) for d in skip}
    found = []
    for dirpath, dirnames, files in os.walk(folder):
        # Another configured folder nested inside this one (e.g. masks inside abnormal_dir)
        # holds other images; os.walk honours the pruned list.
        dirnames[:] = sorted(
            d for d in dirnames if not d.startswith(".") and os.path.abspath(os.path.join(dirpath, d)) not in skip
        )
        found += [p for p in (os.path.normpath(os.path.join(dirpath, n)) for n in files) if is_scan_file(p)]
    return sorted(found)


def _find_mask(folder: str, stem: str, suffixes: Sequence[str]) -> str | None:
    """The first `<folder>/<stem><suffix>.{png,tif,tiff}` that exists, trying `suffixes` in order."""
    for suffix in suffixes:
        for ext in (".png", ".tif", ".tiff"):
            p = os.path.join(folder, stem + suffix + ext)
            if os.path.isfile(p):
                return p
    return None


_CSV_COLUMNS = ("image", "x", "y", "label")


def read_labels_csv_rows(
    path: str, root: str, *, warn_repeats: bool = True
) -> dict[str, list[tuple[int, int, int, int]]]:
    """CSV `image,x,y,label` -> {absolute image path: [(x, y, label, line), ...]}.

    Read as Excel and editors save it: a UTF-8 byte-order mark, CRLF line ends, blank lines,
    spaces around headers and values, and header case are tolerated. A patch (same image, x
    and y) listed twice with different labels is an error naming both lines; exact repeats
    are dropped with one warning. `line` is the row's line number in the file."""
    out: dict[str, list] = {}
    first_line: dict[tuple, tuple[int, int]] = {}  # (image, x, y) -> (label, line)
    repeats: list[tuple[int, int]] = []
    try:
        # utf-8-sig: Excel's "CSV UTF-8" starts with a BOM that would glue onto "image".
        f = open(path, newline="", encoding="utf-8-sig")
    except OSError as e:
        raise readers.CsvLabelError(path, f"cannot open labels CSV ({e})") from e
    try:
        with f:
            rows = csv.reader(f)
            header = next(rows, None)
            names = [h.strip().lower() for h in header or []]
            missing = set(_CSV_COLUMNS) - set(names)
            if missing:
                raise readers.CsvLabelError(
                    path, f"missing columns {sorted(missing)}; need image,x,y,label (header read: {header})"
                )
            column = {name: names.index(name) for name in _CSV_COLUMNS}
            for values in rows:
                line = rows.line_num
                if not any(v.strip() for v in values):
                    continue  # a blank or all-empty row (e.g. ",,," left by a spreadsheet)
                row = {k: (values[i].strip() if i < len(values) else None) for k, i in column.items()}
                try:
                    x, y, label = int(row["x"]), int(row["y"]), int(row["label"])
                except (TypeError, ValueError) as e:
                    raise readers.CsvLabelError(path, f"line {line}: x, y, label must be integers ({row})") from e
                if label not in (0, 1):
                    raise readers.CsvLabelError(path, f"line {line}: label must be 0 or 1, got {label}")
                image = row["image"] or ""
                image = os.path.normpath(image if os.path.isabs(image) else os.path.join(root, image))
                key = (image, x, y)
                if key in first_line:
                    other_label, other_line = first_line[key]
                    if other_label != label:
                        raise readers.CsvLabelError(
                            path,
                            f"lines {other_line} and {line} give the patch x={x}, y={y} of {row['image']} "
                            f"different labels ({other_label} and {label}); keep the right one",
                        )
                    repeats.append((line, other_line))
                    continue
                first_line[key] = (label, line)
                out.setdefault(image, []).append((x, y, label, line))
    except UnicodeDecodeError as e:
        raise readers.CsvLabelError(
            path, f"not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8 (Excel: CSV UTF-8)"
        ) from e
    except csv.Error as e:
        raise readers.CsvLabelError(path, f"malformed CSV ({e})") from e
    if repeats and warn_repeats:
        line, other = repeats[0]
        logging.warning(
            "%s: %d row(s) repeat an earlier row exactly and are ignored (e.g. line %d repeats line %d)",
            path,
            len(repeats),
            line,
            other,
        )
    return out


def read_labels_csv(path: str, root: str) -> dict[str, list[tuple[int, int, int]]]:
    """CSV `image,x,y,label` -> {absolute image path: [(x, y, label), ...]} (see
    `read_labels_csv_rows` for what is tolerated and refused)."""
    return {image: [r[:3] for r in rows] for image, rows in read_labels_csv_rows(path, root).items()}


def labels_csv_path(root: str, labels_csv: str = "") -> str | None:
    """The labels CSV the scans layout reads for `root`: `labels_csv` (relative to root), else
    `<root>/labels.csv` when it exists, else None."""
    if labels_csv:
        return labels_csv if os.path.isabs(labels_csv) else os.path.join(root, labels_csv)
    default = os.path.join(root, "labels.csv")
    return default if os.path.isfile(default) else None


def scans_layout(root: str, *, labels_csv: str = "", mask_suffix: str = "_mask") -> list[ScanRecord]:
    """Full scans in `root` and its subfolders (`scan_files`), each with its mask
    `<stem><mask_suffix>.*` from the same folder and its CSV labels (image paths relative to
    `root`); files named `<stem><mask_suffix>.*` are masks, not scans."""
    if not os.path.isdir(root):
        raise readers.LayoutError(root, "scans folder not found")
    csv_path = labels_csv_path(root, labels_csv)
    labels = read_labels_csv(csv_path, root) if csv_path else {}
    records = []
    for path in scan_files(root):
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem.endswith(mask_suffix):
            continue
        patch_labels = labels.pop(path, None)
        mask = _find_mask(os.path.dirname(path), stem, [mask_suffix])
        records.append(ScanRecord(path, mask, None if patch_labels is None else tuple(patch_labels)))
    if labels:
        image = sorted(labels)[0]
        raise readers.CsvLabelError(csv_path, f"labels refer to an image that is not in {root} or below it: {image}")
    if not records:
        raise readers.LayoutError(root, "no scans (PNG, TIFF, DICOM, JPEG, BMP) in it or its subfolders")
    return records


def folder_layout(
    normal_dir: str,
    abnormal_dir: str = "",
    normal_test_dir: str = "",
    mask_dir: str = "",
    mask_suffix: str = "_mask",
) -> tuple[list[ScanRecord], list[ScanRecord], list[ScanRecord]]:
    """(normal, normal_test, abnormal) records of an anomalib-style Folder dataset.

    Every folder is searched recursively; '' = not given (empty list). Normal images get
    image_label 0, abnormal ones 1. With `mask_dir`, each abnormal image `<abnormal_dir>/<sub>/
    <stem>.<ext>` needs a mask `<mask_dir>/<sub>/<stem>.{png,tif,tiff}` or with `mask_suffix`
    before the extension (LayoutError naming the image otherwise); without it abnormal images
    have image labels only."""
    if not normal_dir:
        raise readers.LayoutError("<folder.normal_dir>", "folder layout: normal_dir is required")
    if mask_dir and not abnormal_dir:
        raise readers.LayoutError(mask_dir, "folder layout: mask_dir is set but abnormal_dir is not")
    given = {"normal_dir": normal_dir, "abnormal_dir": abnormal_dir, "normal_test_dir": normal_test_dir}
    given = {k: os.path.normpath(v) for k, v in given.items() if v}
    if mask_dir:
        given["mask_dir"] = os.path.normpath(mask_dir)
    for key, folder in given.items():
        if not os.path.isdir(folder):
            raise readers.LayoutError(folder, f"folder layout: {key} not found")
    by_path = {}
    for key, folder in given.items():
        other = by_path.setdefault(os.path.abspath(folder), key)
        if other != key:
            raise readers.LayoutError(folder, f"folder layout: {other} and {key} are the same folder")
    folders = list(given.values())

    def images(key: str) -> list[str]:
        if key not in given:
            return []
        found = scan_files(given[key], [f for f in folders if f != given[key]])
        if not found:
            raise readers.LayoutError(given[key], f"folder layout: no images in {key}")
        return found

    normal = [ScanRecord(p, image_label=0) for p in images("normal_dir")]
    normal_test = [ScanRecord(p, image_label=0) for p in images("normal_test_dir")]
    abnormal = []
    for path in images("abnormal_dir"):
        mask = None
        if mask_dir:
            sub = os.path.relpath(os.path.dirname(path), given["abnormal_dir"])
            mask_folder = os.path.normpath(os.path.join(given["mask_dir"], sub))
            stem = os.path.splitext(os.path.basename(path))[0]
            mask = _find_mask(mask_folder, stem, ["", mask_suffix])
            if mask is None:
                raise readers.LayoutError(
                    path, f"no mask {stem}.png or {stem}{mask_suffix}.png (or .tif) for it in {mask_folder}"
                )
        abnormal.append(ScanRecord(path, mask, image_label=1))
    return normal, normal_test, abnormal


def mvtec_kind(path: str) -> str:
    """The defect type of an MVTec test image `test/<kind>/<name>`: its folder's name ('good':
    normal)."""
    return os.path.basename(os.path.dirname(os.path.normpath(path)))


def mvtec_layout(root: str, mask_suffix: str = "_mask") -> tuple[list[ScanRecord], list[ScanRecord]]:
    """(train records, test records) of one MVTec AD category folder."""
    train_dir, test_dir = os.path.join(root, "train", "good"), os.path.join(root, "test")
    if not os.path.isdir(train_dir) or not os.path.isdir(test_dir):
        raise readers.LayoutError(root, "not an MVTec AD category (need train/good and test/)")
    train = [
        ScanRecord(os.path.join(train_dir, n), image_label=0) for n in sorted(os.listdir(train_dir)) if _is_image(n)
    ]
    test = []
    for kind in sorted(os.listdir(test_dir)):
        kind_dir = os.path.join(test_dir, kind)
        if not os.path.isdir(kind_dir):
            continue
        for name in sorted(n for n in os.listdir(kind_dir) if _is_image(n)):
            path = os.path.join(kind_dir, name)
            if kind == "good":
                test.append(ScanRecord(path, image_label=0))
                continue
            truth_dir = os.path.join(root, "ground_truth", kind)
            if not os.path.isdir(truth_dir):
                # A defect type shipped without masks: image labels only.
                test.append(ScanRecord(path, image_label=1))
                continue
            mask = _find_mask(truth_dir, os.path.splitext(name)[0], [mask_suffix])
            if mask is None:
                raise readers.LayoutError(path, f"no ground-truth mask in ground_truth/{kind}/")
            test.append(ScanRecord(path, mask, image_label=1))
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
