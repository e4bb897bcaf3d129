"""Scan readers: PNG, TIFF and other image files, 8- to 16-bit integers or float TIFF, gray or
RGB, read by region into float32 [0, 1].

* TIFF (tiled or striped, classic or BigTIFF, every compression imagecodecs decodes: LZW,
  Deflate/zlib, PackBits, JPEG, ZSTD, LZMA, ...) is read segment by segment: `read_region`
  seeks to and decodes only the tiles/strips the region touches, so a 512x512 patch of a
  20000x20000 scan costs a few tiles, never the whole scan. Uncompressed contiguous TIFFs
  are memory-mapped instead.
* PNG has no random access (one zlib stream), so it is decoded once on first use and kept
  in a small per-process LRU cache (`png_cache_images`); every Grain worker holds its own
  copy. Many large PNGs: convert them to tiled TIFF or to the TFDS/array_record form.
* DICOM (`.dcm`, `.dicom`, or any file with the DICM preamble) is decoded whole by pydicom
  and cached the same way: one frame, MONOCHROME1/2 or colour, the rescale slope's sign and
  MONOCHROME1 applied so that high = bright, BitsStored as the stated depth
  (`_dicom_to_unsigned`).

`read_header` checks a file from its header alone (what `validate.validate_splits` runs on
every input before training); `read_mask` binarises masks by `binarize_mask`'s rule.

Values keep their full dynamic range: integer samples are divided by 2^bits - 1, with
`bits` the depth the file states or, for 16-bit samples stating none, the depth detected
from the data (`decide_bit_depth`: 12-bit data in 16-bit files read as 0..1, not 0..0.06),
or stretched between per-image percentiles; never squeezed through 8 bits. Float samples
follow `float_scale`.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import struct
import threading
from collections.abc import Sequence

import imagecodecs
import numpy as np
import pydicom
import pydicom.pixels
import pydicom.uid
import tifffile
from PIL import Image

from xray_flax import errors

log = logging.getLogger(__name__)

# Decompression-bomb checks would reject legitimate 20k x 20k scans.
Image.MAX_IMAGE_PIXELS = None

TIFF_SUFFIXES = (".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom")
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", *DICOM_SUFFIXES)


# ------------------------------------------------------------------------------------------
# Errors: every message names the offending file.


class DataError(errors.UserError):
    """Base class of input-pipeline errors; `path` is the file (or folder) at fault."""

    def __init__(self, path, message: str):
        self.path = str(path)
        super().__init__(f"{self.path}: {message}")


class UnreadableImageError(DataError):
    """The file is missing, not an image, or truncated."""


class UnsupportedImageError(DataError):
    """Bit depth or pixel mode the pipeline does not handle."""


class MaskShapeError(DataError):
    """A mask whose size differs from its scan."""


class CsvLabelError(DataError):
    """A malformed CSV label row, or a row whose patch lies outside its image."""


class EmptySplitError(DataError):
    """A split (train/val/test) without images or without usable tiles."""


class LayoutError(DataError):
    """A folder that does not follow the configured layout."""


class NonFiniteImageError(DataError):
    """A float image holding NaN or infinite values."""


class ImageTooSmallError(UnsupportedImageError):
    """An image the tiling would give no tile (smaller than a patch, or only padding)."""


class DataValidationError(DataError):
    """Several unusable inputs found by `validate.validate_splits`, all listed at once.

    `problems` holds each one's own DataError; `path` is the first one's file."""

    def __init__(self, summary: str, problems: Sequence[DataError], listed: int):
        self.problems = list(problems)
        self.path = self.problems[0].path if self.problems else ""
        lines = [summary] + [f"  - {p}" for p in self.problems[:listed]]
        if len(self.problems) > listed:
            lines.append(f"  ... and {len(self.problems) - listed} more")
        Exception.__init__(self, "\n".join(lines))


# ------------------------------------------------------------------------------------------
# Pixel conversion (pure functions).


def to_channels(pixels: np.ndarray, channels: int, rgb_to_gray: str = "luminance") -> np.ndarray:
    """[h, w] or [h, w, c] float32 -> [h, w, channels]; alpha is dropped."""
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    c = pixels.shape[-1]
    if c in (2, 4):  # gray+alpha, rgb+alpha
        pixels = pixels[..., : c - 1]
        c -= 1
    if c == channels:
        return pixels
    if c == 1 and channels == 3:
        return np.repeat(pixels, 3, axis=-1)
    if c == 3 and channels == 1:
        if rgb_to_gray == "mean":
            return pixels.mean(axis=-1, keepdims=True, dtype=np.float32)
        weights = np.asarray([0.299, 0.587, 0.114], np.float32)
        return (pixels @ weights)[..., None].astype(np.float32)
    raise ValueError(f"cannot convert {c} channels to {channels}")


def normalize(raw: np.ndarray, scale_lo: float, scale_hi: float) -> np.ndarray:
    """Samples -> float32 in [0, 1] by a linear map [scale_lo, scale_hi] -> [0, 1], clipped."""
    out = (raw.astype(np.float32) - np.float32(scale_lo)) * np.float32(1.0 / (scale_hi - scale_lo))
    return np.clip(out, 0.0, 1.0, out=out)


# ------------------------------------------------------------------------------------------
# The intensity scale: which stored values become 0 and 1 (docs/data.md, "Bit depth").

# Depths a 16-bit container is tested for, smallest first, when the file states none: the
# detectors of digital radiography and film digitisers deliver 12 or 14 bits in 16-bit files.
DETECTED_DEPTHS = (12, 14)


def decide_bit_depth(
    container_bits: int, sample_max: int, stated_bits: int | None = None, stated_by: str = ""
) -> tuple[int, str]:
    """(significant bits, why) of integer samples stored in `container_bits`-bit words, whose
    largest value in a sample of the image is `sample_max`:

    1. a depth the file states (`stated_bits`, named by `stated_by`: TIFF SMaxSampleValue or
       MaxSampleValue, TIFF BitsPerSample below the word size, PNG sBIT, DICOM BitsStored) is
       used when the samples fit in it (all < 2^stated_bits);
    2. otherwise (nothing stated, or samples above it, e.g. a PNG whose sBIT-bit values were
       scaled up to 16 bits as the PNG specification asks) 16-bit words are 12-bit when the
       largest sample is < 2^12, 14-bit when < 2^14, else 16-bit;
    3. other words (8-bit) are used whole.
    """
    prefix = ""
    if stated_bits is not None:
        if sample_max < 2**stated_bits:
            return int(stated_bits), f"stated by {stated_by}"
        prefix = f"{stated_by} states {stated_bits} bits but a sample is {sample_max}, so "
    if container_bits == 16:
        for bits in DETECTED_DEPTHS:
            if sample_max < 2**bits:
                return bits, f"{prefix}detected from the data: 16-bit samples whose largest is {sample_max} < 2^{bits}"
        return 16, f"{prefix}16-bit samples whose largest is {sample_max} >= 2^{DETECTED_DEPTHS[-1]}"
    return int(container_bits), f"{prefix}{container_bits}-bit samples"


def float_scale(sample_min: float, sample_max: float) -> tuple[float, float, str]:
    """(lo, hi, why): the float values mapped to 0 and 1. Values that already lie in [0, 1]
    are kept as they are; any other range is mapped min-max (lo = the smallest value, hi =
    the largest; a constant image maps to 0)."""
    if 0.0 <= sample_min and sample_max <= 1.0:
        return 0.0, 1.0, f"float samples {sample_min:.6g}..{sample_max:.6g}, within [0, 1]: kept as they are"
    hi = sample_max if sample_max > sample_min else sample_min + 1.0
    return float(sample_min), float(hi), f"float samples {sample_min:.6g}..{sample_max:.6g}, mapped min-max to [0, 1]"


@dataclasses.dataclass(frozen=True)
class ScaleDecision:
    """How a scan's samples map to [0, 1] under normalization='bit_depth': `lo` -> 0, `hi` -> 1.
    `bits`: the significant bits of integer samples (None for float samples); `reason`: why."""

    bits: int | None
    lo: float
    hi: float
    reason: str

    def describe(self) -> str:
        if self.bits is None:
            return self.reason
        return f"bit depth {self.bits} ({self.reason}): samples 0..{2**self.bits - 1} -> [0, 1]"


# Decisions taken from a file's data, per (path, mtime, size): made and logged once per
# process, however many readers open the scan (tile table, Grain source, predict).
_DECISIONS: dict[tuple, ScaleDecision] = {}
_DECISIONS_LOCK = threading.Lock()


def _file_key(path: str) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (os.path.abspath(path), st.st_mtime_ns, st.st_size)


def _nonfinite_error(path, values: np.ndarray, where: str) -> NonFiniteImageError:
    count = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
    return NonFiniteImageError(
        path,
        f"{count} NaN or infinite value(s) {where} of this float image; replace them "
        f"(e.g. numpy.nan_to_num) and save it again",
    )


# ------------------------------------------------------------------------------------------
# Readers.


class ScanReader:
    """Region access to one scan. Subclasses set `_dtype` and implement `_read_raw(y0, x0, y1,
    x1)` for an in-bounds window, returning the stored samples [h, w, c_stored] with high =
    bright; `_read_stored` (default: `_read_raw`) returns them as the file holds them (before
    a MinIsWhite inversion), which is what the bit-depth detection looks at.

    The constructor's `bit_depth` is the size of the stored samples in bits (8, 16; 32 or 64
    for float samples). None means the samples are already values on their final scale (an
    in-memory float image): `read_region` returns them as stored, so `channels` must equal
    the stored channels and `normalization` must be None. `stated_bits` / `stated_by`: the
    significant bits the file states and the tag that says so. `detect_depth`: decide the
    depth by `decide_bit_depth` (from the data when 16-bit samples state none; what
    `open_scan` asks), else take `stated_bits` or `bit_depth` as given.

    Attributes: `container_bits` (the sample size); `bit_depth`, the significant bits
    'bit_depth' normalisation divides by (2^bit_depth - 1; None for float samples and values
    as stored), decided on first use and logged once per scan; `scale` (lo, hi), the stored
    values read as 0 and 1; `scale_decision`."""

    def __init__(
        self,
        path,
        height,
        width,
        stored_channels,
        bit_depth,
        channels,
        normalization,
        percentiles,
        rgb_to_gray,
        *,
        stated_bits: int | None = None,
        stated_by: str = "",
        detect_depth: bool = False,
    ):
        self._as_stored = bit_depth is None
        if self._as_stored:
            if channels not in (None, stored_channels) or normalization is not None:
                raise ValueError(
                    f"{path}: samples without a bit depth are returned as stored: channels must be "
                    f"{stored_channels} (or None) and normalization None, got {channels}, {normalization!r}"
                )
            channels = stored_channels
        else:
            if channels not in (1, 3):
                raise UnsupportedImageError(path, f"channels must be 1 or 3, got {channels}")
            if normalization not in ("bit_depth", "percentile"):
                raise ValueError(f"unknown normalization {normalization!r}")
        self.path = str(path)
        self.height = int(height)
        self.width = int(width)
        self.stored_channels = int(stored_channels)
        self.container_bits = None if bit_depth is None else int(bit_depth)
        self.channels = int(channels)
        self.normalization = normalization
        self.rgb_to_gray = rgb_to_gray
        self._float = not self._as_stored and np.dtype(self._dtype).kind == "f"
        self.stated_bits = None if stated_bits is None else int(stated_bits)
        self.stated_by = stated_by
        self._detect = bool(detect_depth)
        self._percentiles = tuple(percentiles)
        self._decision: ScaleDecision | None = None
        self._scale: tuple[float, float] | None = None
        self._clip_warned = False

    @property
    def shape(self):
        return (self.height, self.width, self.channels)

    @property
    def bit_depth(self) -> int | None:
        if self._as_stored or self._float:
            return None
        return self.scale_decision.bits

    @property
    def scale_decision(self) -> ScaleDecision:
        """How 'bit_depth' normalisation maps this scan's samples (decided once, see
        `decide_bit_depth` and `float_scale`)."""
        if self._as_stored:
            raise ValueError(f"{self.path}: values as stored have no scale")
        if self._decision is None:
            self._decision = self._decide()
        return self._decision

    @property
    def scale(self) -> tuple[float, float]:
        """(lo, hi): the stored values read as 0 and 1 (by `normalization`)."""
        if self._scale is None:
            if self.normalization == "percentile":
                self._scale = self._percentile_scale(self._percentiles)
            else:
                self._scale = (self.scale_decision.lo, self.scale_decision.hi)
        return self._scale

    def describe_scale(self) -> str:
        """The intensity scale in words, with the range a sample of the scan takes on it, e.g.
        'bit depth 16 (16-bit samples ...): samples 0..65535 -> [0, 1]; this scan's samples
        12..4095 read as 0.000..0.062'."""
        if self._as_stored:
            return "values as stored"
        lo, hi = self.scale
        rule = (
            f"per-scan percentiles {self._percentiles}: samples {lo:.6g}..{hi:.6g} -> [0, 1]"
            if self.normalization == "percentile"
            else self.scale_decision.describe()
        )
        values = self._windows(self._read_raw)
        if values.size == 0:
            return rule
        v_lo, v_hi = float(values.min()), float(values.max())
        n_lo, n_hi = ((np.clip((v - lo) / (hi - lo), 0.0, 1.0)) for v in (v_lo, v_hi))
        return f"{rule}; this scan's samples {v_lo:.6g}..{v_hi:.6g} read as {n_lo:.3f}..{n_hi:.3f}"

    def _decide(self) -> ScaleDecision:
        stated_bits, stated_by = self.stated_bits, self.stated_by
        if not self._float and not (self._detect and (stated_bits is not None or self.container_bits == 16)):
            # Nothing to decide from the data: 8-bit words, or a depth the caller gives.
            bits = stated_bits or self.container_bits
            return ScaleDecision(bits, 0.0, float(2**bits - 1), stated_by or f"{bits}-bit samples")
        key = _file_key(self.path) if self._detect else None
        with _DECISIONS_LOCK:
            if key in _DECISIONS:
                return _DECISIONS[key]
        decision = self._decide_from_data()
        with _DECISIONS_LOCK:
            first = key is not None and key not in _DECISIONS
            if key is not None:
                decision = _DECISIONS.setdefault(key, decision)
        if first:
            # A full 16-bit scan read as 16-bit is what anyone expects: said at DEBUG, so that a
            # folder of them does not print a line per scan; any other decision at INFO.
            ordinary = decision.bits is not None and decision.bits == self.container_bits
            log.log(logging.DEBUG if ordinary else logging.INFO, "%s: %s", self.path, decision.describe())
        return decision

    def _decide_from_data(self) -> ScaleDecision:
        values = self._depth_sample()
        if self._float:
            if not np.isfinite(values).all():
                raise _nonfinite_error(self.path, values, "in a sample")
            if values.size == 0:
                return ScaleDecision(None, *float_scale(0.0, 0.0))
            return ScaleDecision(None, *float_scale(float(values.min()), float(values.max())))
        sample_max = int(values.max()) if values.size else 0
        bits, reason = decide_bit_depth(self.container_bits, sample_max, self.stated_bits, self.stated_by)
        return ScaleDecision(bits, 0.0, float(2**bits - 1), reason)

    def _read_raw(self, y0, x0, y1, x1) -> np.ndarray:
        raise NotImplementedError

    def _read_stored(self, y0, x0, y1, x1) -> np.ndarray:
        return self._read_raw(y0, x0, y1, x1)

    def close(self):
        pass

    def read_raw_region(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        """Stored samples of a window, zero outside the image: [h, w, stored_channels]."""
        out = np.zeros((h, w, self.stored_channels), self._dtype)
        y0, x0 = max(y, 0), max(x, 0)
        y1, x1 = min(y + h, self.height), min(x + w, self.width)
        if y1 > y0 and x1 > x0:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = self._read_raw(y0, x0, y1, x1)
        return out

    def read_region(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        """float32 [h, w, channels] in [0, 1] (as stored when bit_depth is None); zeros where the
        window leaves the image."""
        raw = self.read_raw_region(y, x, h, w)
        if self._as_stored:
            return raw.astype(np.float32, copy=False)
        if self._float and not np.isfinite(raw).all():
            raise _nonfinite_error(self.path, raw, f"in the region y={y}, x={x}, {h}x{w}")
        lo, hi = self.scale
        self._warn_if_clipped(raw, hi)
        pixels = to_channels(normalize(raw, lo, hi), self.channels, self.rgb_to_gray)
        if lo != 0.0 and (y < 0 or x < 0 or y + h > self.height or x + w > self.width):
            # Padding stays 0 even where lo > 0 (percentiles, float ranges) maps 0 elsewhere.
            inside = np.zeros((h, w), bool)
            inside[max(-y, 0) : max(min(self.height - y, h), 0), max(-x, 0) : max(min(self.width - x, w), 0)] = True
            pixels[~inside] = 0.0
        return pixels

    def _warn_if_clipped(self, raw: np.ndarray, hi: float):
        """One warning when samples exceed a depth below the word size (a detection from a
        sample of a large TIFF that missed its brightest pixels): they read as 1.0."""
        if self._clip_warned or self._float or self.normalization != "bit_depth":
            return
        if self.bit_depth >= self.container_bits or not raw.size or raw.max() <= hi:
            return
        self._clip_warned = True
        log.warning(
            "%s: samples up to %d exceed the bit depth %d (%s) and read as 1.0; "
            "--config.data.normalization=percentile scales each scan by its own range",
            self.path,
            int(raw.max()),
            self.bit_depth,
            self.scale_decision.reason,
        )

    def _windows(self, read) -> np.ndarray:
        """[n, stored_channels] samples of `read` over up to 64 evenly spaced 256x256 windows:
        the whole image when it is at most 2048 px a side."""
        n = 8
        size = 256
        ys = np.linspace(0, max(self.height - size, 0), n).astype(int)
        xs = np.linspace(0, max(self.width - size, 0), n).astype(int)
        samples = []
        for y in np.unique(ys):
            for x in np.unique(xs):
                h, w = min(size, self.height - y), min(size, self.width - x)
                samples.append(read(y, x, y + h, x + w).reshape(-1, self.stored_channels))
        return np.concatenate(samples)

    def _depth_sample(self) -> np.ndarray:
        """The stored samples the bit-depth and float rules look at (`_windows`)."""
        return self._windows(self._read_stored)

    def _percentile_scale(self, percentiles: Sequence[float]):
        """Percentiles from up to 64 evenly spaced 256x256 windows (whole image if smaller)."""
        values = self._windows(self._read_raw)
        if self._float and not np.isfinite(values).all():
            raise _nonfinite_error(self.path, values, "in a sample")
        if self.stored_channels >= 3:
            values = values[:, :3].mean(axis=1)
        lo, hi = np.percentile(values, percentiles)
        if hi <= lo:
            hi = lo + 1.0
        return float(lo), float(hi)


class ArrayScanReader(ScanReader):
    """An image held in memory, [H, W] or [H, W, C], read region by region with zeros outside.

    * With `bit_depth` (a decoded PNG, DICOM or other whole-file format, from `open_scan`):
      samples of that size, normalised and converted to `channels` like every other scan
      (`stated_bits`, `stated_by`, `detect_depth`: see ScanReader; the depth detection looks
      at the whole array).
    * Without (`bit_depth=None`, the default): values already on their final scale (test
      images, a scan decoded elsewhere, tiles in reports), returned as float32 exactly as
      stored, with all their channels.
    """

    def __init__(
        self,
        array,
        bit_depth: int | None = None,
        *,
        path="<array>",
        channels: int | None = None,
        normalization: str | None = None,
        percentiles: Sequence[float] = (0.5, 99.5),
        rgb_to_gray: str = "luminance",
        stated_bits: int | None = None,
        stated_by: str = "",
        detect_depth: bool = False,
    ):
        array = np.asarray(array)
        if array.ndim == 2:
            array = array[..., None]
        if array.ndim != 3:
            raise ValueError(f"{path}: array must be [H, W] or [H, W, C], got {array.shape}")
        self._array = array
        self._dtype = array.dtype
        super().__init__(
            path,
            *array.shape,
            bit_depth,
            channels,
            normalization,
            percentiles=percentiles,
            rgb_to_gray=rgb_to_gray,
            stated_bits=stated_bits,
            stated_by=stated_by,
            detect_depth=detect_depth,
        )

    def _read_raw(self, y0, x0, y1, x1):
        return self._array[y0:y1, x0:x1]

    def _depth_sample(self):
        return self._array.reshape(-1, self.stored_channels)  # decoded whole anyway


class TiffScanReader(ScanReader):
    """Reads only the TIFF segments (tiles or strips) a region touches, or memory-maps."""

    def __init__(self, path, **kw):
        self._lock = threading.Lock()
        try:
            self._tif = tifffile.TiffFile(path)
        except Exception as e:  # tifffile raises several types for broken files
            raise UnreadableImageError(path, f"not a readable TIFF ({e})") from e
        try:
            self._open(path, tifffile, kw)
        except BaseException:
            # A rejected file must not stay open: validation opens every file of a dataset.
            self._tif.close()
            raise

    def _open(self, path, tifffile, kw):
        try:
            page = self._tif.pages[0]
        except Exception as e:
            raise UnreadableImageError(path, f"not a readable TIFF ({e})") from e
        self._page = page
        container, stated_bits, stated_by = _tiff_sample_type(path, page)
        samples = int(page.samplesperpixel)
        if samples not in (1, 2, 3, 4):
            raise UnsupportedImageError(path, f"unsupported samples per pixel {samples}")
        photometric = int(page.photometric)
        # 0 = min-is-white (inverted gray, common for radiographs), 1 = min-is-black, 2 = RGB;
        # 6 = YCbCr in JPEG-compressed TIFFs, which the JPEG decoder returns as RGB.
        if photometric == 6 and int(page.compression) == 7:
            photometric = 2
        if photometric not in (0, 1, 2):
            raise UnsupportedImageError(
                path, f"unsupported photometric interpretation {page.photometric!r}; need gray or RGB"
            )
        if photometric == 0 and page.dtype.kind == "f":
            raise UnsupportedImageError(path, "float TIFF stored MinIsWhite; save it MinIsBlack (high = bright)")
        self._invert = photometric == 0
        self._dtype = page.dtype
        height, width = int(page.imagelength), int(page.imagewidth)
        file_size = os.path.getsize(path)
        ends = np.asarray(page.dataoffsets, np.int64) + np.asarray(page.databytecounts, np.int64)
        if len(ends) == 0 or ends.max() > file_size or min(page.databytecounts) == 0:
            raise UnreadableImageError(
                path,
                f"truncated TIFF: image data extends to byte "
                f"{int(ends.max()) if len(ends) else 0} but the file has {file_size}",
            )
        self._memmap = None
        packed = int(page.bitspersample) != container  # e.g. 12-bit samples packed: unpacked by decode
        if page.is_contiguous and page.compression == 1 and page.planarconfig == 1 and not page.is_tiled and not packed:
            # Uncompressed, one contiguous block: let the OS page it in on demand.
            self._memmap = np.memmap(
                path,
                dtype=page.dtype.newbyteorder(page.parent.byteorder),
                mode="r",
                offset=page.dataoffsets[0],
                shape=(height, width, samples),
            )
        self._planes = samples if page.planarconfig == 2 else 1
        if page.is_tiled:
            self._seg_h, self._seg_w = int(page.tilelength), int(page.tilewidth)
        else:
            self._seg_h, self._seg_w = int(page.rowsperstrip or height), width
            self._seg_h = min(self._seg_h, height)
        self.segments_read = 0  # instrumentation: lets tests prove reads stay local
        self._seg_rows = -(-height // self._seg_h)
        self._seg_cols = -(-width // self._seg_w)
        _check_tiff_decoder(path, page)
        super().__init__(
            path,
            height,
            width,
            samples,
            container,
            **kw,
            stated_bits=stated_bits,
            stated_by=stated_by,
            detect_depth=True,
        )

    def __getstate__(self):
        raise TypeError("readers hold open files; open them in each process")

    def _read_raw(self, y0, x0, y1, x1):
        raw = self._read_stored(y0, x0, y1, x1)
        if self._invert:  # MinIsWhite: white = 2^bits - 1 of the scan's bit depth
            top = 2**self.bit_depth - 1
            np.subtract(top, np.minimum(raw, top, out=raw), out=raw)
        return raw

    def _read_stored(self, y0, x0, y1, x1):
        if self._memmap is not None:
            return np.array(self._memmap[y0:y1, x0:x1])
        page = self._page
        out = np.empty((y1 - y0, x1 - x0, self.stored_channels), self._dtype)
        r0, r1 = y0 // self._seg_h, (y1 - 1) // self._seg_h
        c0, c1 = x0 // self._seg_w, (x1 - 1) // self._seg_w
        per_plane = self._seg_rows * self._seg_cols
        fh = self._tif.filehandle
        for plane in range(self._planes):
            for r in range(r0, r1 + 1):
                for c in range(c0, c1 + 1):
                    index = plane * per_plane + r * self._seg_cols + c
                    with self._lock:  # the file handle's position is shared by reading threads
                        fh.seek(page.dataoffsets[index])
                        data = fh.read(page.databytecounts[index])
                        self.segments_read += 1
                    try:
                        segment = page.decode(data, index)[0]  # [1, seg_h, seg_w, s]
                    except Exception as e:
                        raise UnreadableImageError(self.path, f"cannot decode segment {index} ({e})") from e
                    if segment is None:
                        raise UnreadableImageError(self.path, f"segment {index} is empty")
                    segment = segment[0]
                    sy, sx = r * self._seg_h, c * self._seg_w
                    ay0, ay1 = max(y0, sy), min(y1, sy + segment.shape[0], sy + self._seg_h)
                    ax0, ax1 = max(x0, sx), min(x1, sx + segment.shape[1], sx + self._seg_w)
                    block = segment[ay0 - sy : ay1 - sy, ax0 - sx : ax1 - sx]
                    if self._planes > 1:
                        out[ay0 - y0 : ay1 - y0, ax0 - x0 : ax1 - x0, plane] = block[..., 0]
                    else:
                        out[ay0 - y0 : ay1 - y0, ax0 - x0 : ax1 - x0] = block
        return out

    def close(self):
        self._tif.close()


def _tiff_sample_type(path, page) -> tuple[int, int | None, str]:
    """(sample size in bits, the significant bits the file states or None, the tag stating
    them). Unsigned integers of 8 to 16 bits (12-bit packed too) or single-channel floats."""
    dtype, bits = page.dtype, int(page.bitspersample)
    if dtype is not None and dtype.kind == "f":
        if int(page.samplesperpixel) != 1:
            raise UnsupportedImageError(
                path,
                f"{dtype} TIFF with {page.samplesperpixel} samples per pixel; float scans must be single-channel",
            )
        return dtype.itemsize * 8, None, ""
    if dtype is None or dtype.kind != "u" or not 8 <= bits <= 16 or dtype.itemsize * 8 < bits:
        raise UnsupportedImageError(
            path,
            f"unsupported sample type {dtype} ({bits} bits); need unsigned integers of 8 to 16 bits "
            f"or single-channel float",
        )
    container = dtype.itemsize * 8
    for code, name in ((341, "SMaxSampleValue"), (281, "MaxSampleValue")):
        tag = page.tags.get(code)
        top = int(np.max(tag.value)) if tag is not None and np.size(tag.value) else 0
        if top > 0:
            return container, min(top.bit_length(), container), f"TIFF {name} {top}"
    if bits < container:
        return container, bits, f"TIFF BitsPerSample {bits}"
    return container, None, ""


def _check_tiff_decoder(path, page):
    """Fails here, naming the file, rather than deep inside a Grain worker, when no installed
    codec decodes the TIFF's compression (tifffile uses imagecodecs for all but zlib and
    PackBits; an unusual or private compression code has no decoder at all)."""
    try:
        tifffile.TIFF.DECOMPRESSORS[page.compression]
    except Exception as e:  # KeyError, or ImportError for a codec missing from imagecodecs
        code = int(page.compression)
        name = getattr(page.compression, "name", str(code))
        raise UnsupportedImageError(
            path,
            f"no decoder for TIFF compression {name} ({code}) in imagecodecs {imagecodecs.__version__}; "
            f"rewrite the file uncompressed or with LZW, Deflate or ZSTD",
        ) from e


# ------------------------------------------------------------------------------------------
# PNG and friends.


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG colour type -> (stored channels, allowed bit depths) by the PNG specification.
_PNG_COLOR_TYPES = {0: (1, (1, 2, 4, 8, 16)), 2: (3, (8, 16)), 3: (3, (1, 2, 4, 8)), 4: (2, (8, 16)), 6: (4, (8, 16))}


def _png_ihdr(path):
    """(width, height, bit depth, color type) from the IHDR chunk, or None for a non-PNG file."""
    with open(path, "rb") as f:
        head = f.read(33)
    if len(head) < 33 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", head[16:24])
    return width, height, head[24], head[25]


def _png_header(path):
    """(bit depth, color type) from the IHDR chunk, or None for a non-PNG file."""
    ihdr = _png_ihdr(path)
    return None if ihdr is None else ihdr[2:]


def _png_structure_problem(path) -> str | None:
    """Walks the chunk list (8 bytes read per chunk, pixel data skipped, CRCs not checked):
    why the file is not a complete PNG (truncated, no image data), or None."""
    size = os.path.getsize(path)
    pos, seen_idat = 8, False
    with open(path, "rb") as f:
        while True:
            f.seek(pos)
            head = f.read(8)
            if len(head) < 8:
                return f"truncated PNG: the file ends at byte {size} before the IEND chunk"
            length, kind = struct.unpack(">I4s", head)
            end = pos + 12 + length
            if end > size:
                return f"truncated PNG: chunk {kind!r} at byte {pos} needs {end} bytes but the file has {size}"
            seen_idat |= kind == b"IDAT"
            if kind == b"IEND":
                return None if seen_idat else "PNG without image data (no IDAT chunk)"
            pos = end


def _png_sbit(path) -> int | None:
    """The significant bits a PNG's sBIT chunk states for its colour channels (the largest
    over grey or R, G, B; alpha is not a colour), or None without one (or for a palette PNG,
    whose samples are 8-bit palette entries)."""
    ihdr = _png_ihdr(path)
    if ihdr is None or ihdr[3] == 3:
        return None
    colour_channels = {0: 1, 2: 3, 4: 1, 6: 3}.get(ihdr[3], 1)
    pos = 8
    with open(path, "rb") as f:
        while True:  # sBIT precedes the image data
            f.seek(pos)
            head = f.read(8)
            if len(head) < 8:
                return None
            length, kind = struct.unpack(">I4s", head)
            if kind in (b"IDAT", b"IEND"):
                return None
            if kind == b"sBIT":
                bits = f.read(min(length, 4))[:colour_channels]
                return max(bits) if bits and 0 < max(bits) <= ihdr[2] else None
            pos += 12 + length


# ------------------------------------------------------------------------------------------
# DICOM (pydicom).

_DICOM_PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")


def is_dicom(path) -> bool:
    """A `.dcm` / `.dicom` file, or any file with the DICOM preamble ('DICM' at byte 128)."""
    path = os.fspath(path)
    if path.lower().endswith(DICOM_SUFFIXES):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _read_dicom(path, pixels: bool) -> pydicom.Dataset:
    """The dataset (without the pixel data unless `pixels`); UnreadableImageError naming the
    file when pydicom cannot parse it."""
    try:
        # force: a .dcm file written without the 128-byte preamble is still a dataset.
        return pydicom.dcmread(path, force=True, stop_before_pixels=not pixels)
    except Exception as e:  # pydicom raises InvalidDicomError, EOFError, ValueError, ...
        raise UnreadableImageError(path, f"not a readable DICOM file ({e})") from e


@dataclasses.dataclass(frozen=True)
class _DicomInfo:
    height: int
    width: int
    samples: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    photometric: str
    transfer_syntax: str


def _dicom_info(path, ds) -> _DicomInfo:
    """The Image Pixel attributes, checked: one frame, 8- or 16-bit words, a photometric
    interpretation we read, and a decoder for the transfer syntax (what to install if not)."""
    missing = [
        k for k in ("Rows", "Columns", "BitsAllocated", "BitsStored", "PhotometricInterpretation") if k not in ds
    ]
    if missing:
        raise UnreadableImageError(path, f"DICOM file without {', '.join(missing)}: not an image")
    photometric = str(ds.PhotometricInterpretation).strip()
    info = _DicomInfo(
        int(ds.Rows),
        int(ds.Columns),
        int(ds.get("SamplesPerPixel", 1) or 1),
        int(ds.BitsAllocated),
        int(ds.BitsStored),
        int(ds.get("PixelRepresentation", 0) or 0) == 1,
        photometric,
        str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or ""),
    )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise UnsupportedImageError(path, f"multi-frame DICOM ({frames} frames); export one frame per file")
    if info.bits_allocated not in (8, 16) or not 1 <= info.bits_stored <= info.bits_allocated:
        raise UnsupportedImageError(
            path, f"DICOM BitsAllocated {info.bits_allocated}, BitsStored {info.bits_stored}; need 8- or 16-bit words"
        )
    if photometric not in _DICOM_PHOTOMETRICS or info.samples not in (1, 3):
        raise UnsupportedImageError(
            path,
            f"DICOM PhotometricInterpretation {photometric} with {info.samples} samples; need MONOCHROME1/2 or RGB",
        )
    if "ModalityLUTSequence" in ds and "RescaleSlope" not in ds:
        raise UnsupportedImageError(path, "DICOM with a Modality LUT Sequence (a lookup table, not a linear rescale)")
    _check_dicom_decoder(path, info.transfer_syntax)
    return info


def _check_dicom_decoder(path, transfer_syntax: str):
    """UnsupportedImageError naming the file, the compression and the packages that would
    decode it, when no installed pydicom plugin does."""
    uid = pydicom.uid.UID(transfer_syntax) if transfer_syntax else None
    if uid is None or not uid.is_compressed:
        return
    try:
        decoder = pydicom.pixels.get_decoder(uid)
    except NotImplementedError:
        raise UnsupportedImageError(
            path, f"DICOM compressed as {uid.name} ({uid}): pydicom has no decoder; export it uncompressed"
        ) from None
    if not decoder.is_available:
        options = "; ".join(decoder.missing_dependencies) or "a pydicom pixel-data plugin"
        raise UnsupportedImageError(
            path,
            f"DICOM compressed as {uid.name}: no decoder installed (pydicom decodes it with one of: {options}); "
            f"pip install one of them, or export the file uncompressed",
        )


def _decode_dicom(path) -> tuple[np.ndarray, int]:
    ds = _read_dicom(path, pixels=True)
    info = _dicom_info(path, ds)
    if "PixelData" not in ds:
        raise UnreadableImageError(path, "DICOM file without pixel data")
    try:
        raw = ds.pixel_array
    except Exception as e:  # pydicom: truncated data, a plugin failing on the stream, ...
        raise UnreadableImageError(path, f"cannot decode the DICOM pixel data ({e})") from e
    return _dicom_to_unsigned(path, ds, raw, info), info.bits_allocated


def _dicom_to_unsigned(path, ds, raw: np.ndarray, info: _DicomInfo) -> np.ndarray:
    """Stored values -> unsigned integers in [0, 2^BitsStored - 1], high = bright.

    The modality rescale m = RescaleSlope * v + RescaleIntercept is applied and the range the
    stored values can take (0 .. 2^BitsStored - 1, or -2^(BitsStored-1) .. 2^(BitsStored-1) - 1
    when signed) is mapped through it onto [0, 2^BitsStored - 1]: the intercept and the
    slope's size cancel in that map (the scan keeps the detector's absolute scale), a negative
    slope reverses it. MONOCHROME1 (minimum = white) is then reversed, so that high = bright
    as in MONOCHROME2. The window (VOI LUT) is a display setting and is not applied."""
    top = 2**info.bits_stored - 1
    values = raw.astype(np.int64)
    if info.signed:
        values = values + 2 ** (info.bits_stored - 1)
    values = np.clip(values, 0, top)
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0) if info.samples == 1 else 1.0
    if (slope < 0) != (info.photometric == "MONOCHROME1"):
        values = top - values
    return values.astype(np.uint8 if info.bits_allocated == 8 else np.uint16)


@dataclasses.dataclass(frozen=True)
class ImageHeader:
    """What a file's header says: size, stored samples per pixel, bits per sample (the
    significant bits the header states, else the sample size; a depth detected from the
    data is decided when pixels are read, see `decide_bit_depth`)."""

    path: str
    height: int
    width: int
    stored_channels: int
    bit_depth: int


def read_header(path) -> ImageHeader:
    """Checks that `path` is an image the readers can read, from its header only (no pixels
    are decoded): TIFF tags, sample type and segment extents (`TiffScanReader`'s checks);
    PNG IHDR and the chunk list (truncation); other formats as far as Pillow's lazy open goes.

    Raises UnreadableImageError or UnsupportedImageError naming the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UnreadableImageError(path, "file not found")
    try:
        return _read_header(path)
    except OSError as e:  # e.g. permission denied, an I/O error of the disk
        raise UnreadableImageError(path, f"cannot read the file ({e.strerror or e})") from e


def _read_header(path: str) -> ImageHeader:
    if path.lower().endswith(TIFF_SUFFIXES):
        # bit_depth normalisation: the percentile one would read pixels to estimate its scale.
        reader = TiffScanReader(
            path, channels=1, normalization="bit_depth", percentiles=(0, 100), rgb_to_gray="luminance"
        )
        reader.close()
        bits = reader.stated_bits or reader.container_bits
        return ImageHeader(path, reader.height, reader.width, reader.stored_channels, bits)
    if is_dicom(path):
        info = _dicom_info(path, _read_dicom(path, pixels=False))
        return ImageHeader(path, info.height, info.width, info.samples, info.bits_stored)
    ihdr = _png_ihdr(path)
    if ihdr is not None:
        width, height, depth, color_type = ihdr
        if color_type not in _PNG_COLOR_TYPES:
            raise UnsupportedImageError(path, f"unsupported PNG colour type {color_type}")
        stored, depths = _PNG_COLOR_TYPES[color_type]
        if depth not in depths:
            raise UnsupportedImageError(
                path, f"unsupported PNG bit depth {depth} for colour type {color_type}; need one of {depths}"
            )
        if width == 0 or height == 0:
            raise UnreadableImageError(path, f"PNG of size {width}x{height} (WxH)")
        problem = _png_structure_problem(path)
        if problem:
            raise UnreadableImageError(path, problem)
        # decode_whole_image returns 16-bit samples only for 16-bit PNGs; 8 bits otherwise.
        return ImageHeader(path, height, width, stored, _png_sbit(path) or (16 if depth == 16 else 8))
    try:
        with Image.open(path) as im:  # lazy: reads the header, not the pixels
            width, height, mode = im.width, im.height, im.mode
            bands = len(im.getbands())
    except FileNotFoundError as e:
        raise UnreadableImageError(path, "file not found") from e
    except Exception as e:  # PIL: UnidentifiedImageError, OSError, SyntaxError
        raise UnreadableImageError(path, f"cannot read image header ({e})") from e
    if mode in ("I;16", "I;16B", "I;16L"):
        return ImageHeader(path, height, width, 1, 16)
    if mode == "P":
        return ImageHeader(path, height, width, 3, 8)
    if mode in ("1", "L", "LA", "RGB", "RGBA"):
        return ImageHeader(path, height, width, bands, 8)
    raise UnsupportedImageError(path, f"unsupported image mode {mode!r}")


def _decode_png_16bit_color(path):
    # Pillow reduces 16-bit RGB PNGs to 8 bits; imagecodecs (libpng) decodes them at full depth.
    with open(path, "rb") as f:
        data = f.read()
    return np.asarray(imagecodecs.png_decode(data))


def decode_whole_image(path):
    """Decodes a non-TIFF image: (array uint8/uint16 [H, W] or [H, W, C], sample size in bits)."""
    if is_dicom(path):
        return _decode_dicom(path)
    header = _png_header(path)
    if header is not None:
        depth, color_type = header
        if depth not in (1, 2, 4, 8, 16):
            raise UnsupportedImageError(path, f"unsupported PNG bit depth {depth}")
        if depth == 16 and color_type in (2, 6, 4):  # RGB, RGBA, gray+alpha at 16 bits
            try:
                return _decode_png_16bit_color(path), 16
            except Exception as e:
                raise UnreadableImageError(path, f"cannot decode 16-bit PNG ({e})") from e
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L"):
                return np.asarray(im, dtype=np.uint16), 16
            if mode == "I":
                arr = np.asarray(im)
                if header is not None and header[0] == 16:
                    return arr.astype(np.uint16), 16
                raise UnsupportedImageError(path, "32-bit integer images are not supported")
            if mode == "1":
                return np.asarray(im, dtype=np.uint8) * 255, 8
            if mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                mode = im.mode
            if mode in ("L", "LA", "RGB", "RGBA"):
                return np.asarray(im, dtype=np.uint8), 8
            raise UnsupportedImageError(path, f"unsupported image mode {mode!r}")
    except DataError:
        raise
    except FileNotFoundError as e:
        raise UnreadableImageError(path, "file not found") from e
    except Exception as e:  # PIL: UnidentifiedImageError, OSError('truncated'), SyntaxError
        raise UnreadableImageError(path, f"cannot decode image ({e})") from e


_PNG_CACHE: collections.OrderedDict[tuple, np.ndarray] = collections.OrderedDict()
_PNG_CACHE_LOCK = threading.Lock()


def _cached_decode(path, cache_images):
    key = (os.path.abspath(path), os.path.getmtime(path))
    with _PNG_CACHE_LOCK:
        if key in _PNG_CACHE:
            _PNG_CACHE.move_to_end(key)
            return _PNG_CACHE[key]
    decoded = decode_whole_image(path)
    with _PNG_CACHE_LOCK:
        _PNG_CACHE[key] = decoded
        while len(_PNG_CACHE) > max(cache_images, 1):
            _PNG_CACHE.popitem(last=False)
    return decoded


def open_scan(
    path,
    channels: int = 1,
    normalization: str = "bit_depth",
    *,
    percentiles: Sequence[float] = (0.5, 99.5),
    rgb_to_gray: str = "luminance",
    png_cache_images: int = 8,
) -> ScanReader:
    """Opens a scan for region reads. TIFFs are read lazily; other formats are decoded once
    per process and cached (LRU of `png_cache_images`)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UnreadableImageError(path, "file not found")
    kw = dict(channels=channels, normalization=normalization, percentiles=percentiles, rgb_to_gray=rgb_to_gray)
    if path.lower().endswith(TIFF_SUFFIXES):
        return TiffScanReader(path, **kw)
    array, bits = _cached_decode(path, png_cache_images)
    if array.ndim == 3 and array.shape[-1] not in (1, 2, 3, 4):
        raise UnsupportedImageError(path, f"unsupported channel count {array.shape[-1]}")
    stated_bits, stated_by = _stated_depth(path, bits)
    return ArrayScanReader(
        array, bits, path=path, stated_bits=stated_bits, stated_by=stated_by, detect_depth=True, **kw
    )


def _stated_depth(path: str, container_bits: int) -> tuple[int | None, str]:
    """(significant bits, the tag stating them) of a file decoded whole, from its header:
    DICOM BitsStored, PNG sBIT; (None, '') when it states none."""
    if is_dicom(path):
        bits = int(_read_dicom(path, pixels=False).BitsStored)
        return bits, f"DICOM BitsStored {bits}"
    sbit = _png_sbit(path)
    if sbit is not None and container_bits in (8, 16):
        return sbit, f"PNG sBIT {sbit}"
    return None, ""


def read_mask_raw(path) -> tuple[np.ndarray, int]:
    """A mask's stored samples, [H, W] (the maximum over channels), and their sample size in
    bits (a mask is cut at half its type's maximum, whatever depth its values use)."""
    path = os.fspath(path)
    if path.lower().endswith(TIFF_SUFFIXES):
        reader = open_scan(path)
        try:
            if reader.container_bits not in (8, 16):
                raise UnsupportedImageError(path, f"a mask of {reader.container_bits}-bit floats; save it as 8-bit")
            raw = reader.read_raw_region(0, 0, reader.height, reader.width)
        finally:
            reader.close()
        bits = reader.container_bits
    else:
        if not os.path.isfile(path):
            raise UnreadableImageError(path, "file not found")
        raw, bits = decode_whole_image(path)
    if raw.ndim == 3:
        raw = raw.max(axis=-1)
    return raw, bits


def mask_threshold(raw_max: int, bit_depth: int) -> int:
    """Samples above this are anomalous. A mask whose maximum is 1 is a 0/1 mask (1 is
    anomalous); any other mask is cut at half its type's maximum (127 of 255, 32767 of 65535),
    so faint noise around 0 (JPEG or resampling residue) stays normal instead of marking
    every tile it touches anomalous."""
    return 0 if raw_max == 1 else (2**bit_depth - 1) // 2


def mask_rule(raw_max: int, bit_depth: int) -> str:
    """The binarisation `read_mask` applies to this mask, in words."""
    if raw_max == 1:
        return "values >= 1 are anomalous (a 0/1 mask)"
    return f"values >= {mask_threshold(raw_max, bit_depth) + 1} of {2**bit_depth - 1} are anomalous"


def binarize_mask(raw: np.ndarray, bit_depth: int) -> np.ndarray:
    """bool [H, W]: samples above `mask_threshold` (see there for the rule)."""
    raw_max = int(raw.max()) if raw.size else 0
    return raw > mask_threshold(raw_max, bit_depth)


def read_mask(path, expected_hw) -> np.ndarray:
    """A pixel mask as bool [H, W], anomalous where `binarize_mask` says (0/1 masks: 1;
    otherwise above half the type's maximum, e.g. >= 128 of 255).

    Raises MaskShapeError when its size is not `expected_hw` (the scan's height, width)."""
    path = os.fspath(path)
    raw, bits = read_mask_raw(path)
    if tuple(raw.shape) != tuple(expected_hw):
        raise MaskShapeError(
            path, f"mask is {raw.shape[0]}x{raw.shape[1]} (HxW) but its scan is {expected_hw[0]}x{expected_hw[1]}"
        )
    return binarize_mask(raw, bits)
