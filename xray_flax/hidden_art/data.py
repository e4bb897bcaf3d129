"""Multispectral data of the hidden-art family: N-channel band readers, the ArtExtract, CAVE and
`.mat`-cube layouts, and augmentation shared by the RGB, the bands and the truth.

A scene is the family's dict (see `xray_flax.hidden_art`): "name", "rgb" float32 [H, W, 3],
"bands" float32 [H, W, B], optional "hidden" float32 [H, W] and "hidden_mask" bool [H, W].

Public functions (the source of each choice in brackets)
- `read_band(path)` -> float32 [H, W]: one band file (PNG/TIFF/BMP), 8- or 16-bit, kept at its
  full range (uint8 / 255, uint16 / 65535) [docs/papers.md, "ArtExtract": its code divides
  by 255 twice; we divide once, by the file's own maximum]. RGB/RGBA files whose colour channels
  are equal are accepted as grey [ours: some CAVE bands are stored so]; unequal channels, float
  or 32-bit samples, truncated or unreadable files raise a DataError naming the file.
- `read_rgb(path)` -> float32 [H, W, 3] (a grey file is replicated; 16-bit kept at 16 bits).
- `read_band_stack(paths)` -> float32 [H, W, B]; every band must have the first one's size.
- `read_cube(path, variable="")` -> (float32 [H, W, bands] in [0, 1], variable name): a `.mat`
  cube, MATLAB v5 through scipy.io.loadmat, v7.3 (HDF5) through h5py when it is importable.
  Scaling [ours]: unsigned integers / their type's maximum; floats kept when their maximum is
  <= 1 (Harvard's 'ref' reflectances), else divided by the cube's maximum; negatives clipped.
- `list_artextract(root, split, bands=None)`, `list_cave(root, bands=None, split="")`,
  `list_mat(root, bands=None, variable="", rgb_bands=None, rgb_variable="", split="")` and
  `list_scenes(layout, root, **kw)`: `SceneRecord`s (name + paths), from file names and headers
  only, nothing decoded. All problems of a folder (missing bands, an RGB without bands, bands
  without an RGB, duplicates, unreadable cubes) are collected and raised as one
  `readers.DataValidationError` listing every one.
- `load_scene(record)` -> scene dict; sizes of bands, RGB and truth are checked against each other.
- `augment(rng, scene, crop=None, flips=True, rot90=True)`: one random crop / flip / rotation,
  the same for every array of the scene [ours: ArtExtract flips the RGB but not its bands,
  docs/papers.md].
- `default_band_selection(n_available, n_inputs=8)`, `to_batch(scenes)`.

Layouts
- ArtExtract [docs/papers.md, "ArtExtract"]: `<root>/<split>/rgb_images/<stem>_RGB.<ext>` and
  `<root>/<split>/ms_masks/<stem>_ms_<i>.<png|tif|tiff|bmp>`, i = 1, 2, ... (zero padding
  accepted). Default bands: every index present in the split (1..8 for ArtExtract's data).
- CAVE [Yasuma et al. 2010; docs/papers.md, "ArtExtract"]: a folder per scene holding `<scene>_ms_01..31.png` (16-bit,
  512x512) and `<scene>_RGB.bmp`; the files may sit in a nested folder of the same name
  (`balloons_ms/balloons_ms/...`, as CAVE's archive unpacks); both are searched. Default bands:
  8 evenly spaced of the 31, indices 1, 5, 10, 14, 18, 22, 27, 31 = 400, 440, 490, 530, 570,
  610, 660, 700 nm [ours: spans CAVE's whole range].
- `.mat` cubes (Harvard style, `imgX.mat` with 'ref' [H, W, 31]): the cube variable is
  `variable`, by default the largest 3-D numeric array; its last axis is the band axis
  [H, W, bands] (a v7.3 file stores MATLAB's column-major array, which h5py shows reversed: it is
  transposed back). Default bands: 8 evenly spaced of the cube's. The RGB comes from
  `rgb_variable` when given; otherwise it is SYNTHESISED from three bands `rgb_bands` = (red,
  green, blue) 1-based indices, linear (no gamma, no white balance), by default the bands at
  19/30, 12/30, 4/30 of the range: (20, 13, 5) of 31, 610 / 540 / 460 nm on Harvard's
  420-720 nm grid [ours].
- Truth, optional, beside the RGB (ArtExtract, CAVE) or the `.mat` file: `<stem>_hidden.<ext>`
  (presence map, read like a band) and `<stem>_hidden_mask.<ext>` (read by
  `readers.read_mask`: 0/1, or above half the type's maximum). The simulated data writes them.

`bands=` is always a tuple of 1-based indices into the layout's bands, in the order the inputs
are wanted.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence

import numpy as np
import scipy.io

from xray_flax.data import readers

LAYOUTS = ("artextract", "cave", "mat")
RGB_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg")
BAND_SUFFIXES = (".png", ".tif", ".tiff", ".bmp")
TRUTH_SUFFIXES = (".png", ".tif", ".tiff", ".bmp")
SPATIAL_KEYS = ("rgb", "bands", "hidden", "hidden_mask")

_BAND_RE = re.compile(r"^(?P<stem>.+)_ms_(?P<index>\d+)(?P<ext>\.[A-Za-z]+)$")
_RGB_RE = re.compile(r"^(?P<stem>.+)_RGB(?P<ext>\.[A-Za-z]+)$")


class BandShapeError(readers.DataError):
    """A band (or RGB, or truth image) whose size differs from the rest of its scene."""


# ------------------------------------------------------------------------------------------
# Files.


def _read_raw(path) -> tuple[np.ndarray, int]:
    """Stored samples [H, W, C] (uint8/uint16) and their bit depth, after the header checks of
    `readers.read_header` (truncation, sample type)."""
    path = os.fspath(path)
    readers.read_header(path)
    if path.lower().endswith(readers.TIFF_SUFFIXES):
        reader = readers.TiffScanReader(
            path, channels=1, normalization="bit_depth", percentiles=(0, 100), rgb_to_gray="luminance"
        )
        try:
            raw = reader.read_raw_region(0, 0, reader.height, reader.width)
        finally:
            reader.close()
        bits = reader.container_bits  # the sample size: a band uses the file's full range
    else:
        raw, bits = readers.decode_whole_image(path)
    if raw.dtype.kind != "u" or bits not in (8, 16):
        raise readers.UnsupportedImageError(path, f"unsupported samples {raw.dtype} ({bits} bits); need 8 or 16 bits")
    return (raw if raw.ndim == 3 else raw[..., None]), bits


def _unit(raw: np.ndarray, bits: int) -> np.ndarray:
    return raw.astype(np.float32) * np.float32(1.0 / (2**bits - 1))


def read_band(path) -> np.ndarray:
    """One band file -> float32 [H, W] in [0, 1] at the file's full range (see the module docstring)."""
    raw, bits = _read_raw(path)
    c = raw.shape[-1]
    if c in (2, 4):  # grey + alpha, RGB + alpha: the alpha says nothing about the band
        raw, c = raw[..., : c - 1], c - 1
    if c == 3:
        differs = np.any(raw[..., 0] != raw[..., 1]) or np.any(raw[..., 0] != raw[..., 2])
        if differs:
            diff = np.abs(raw.astype(np.int32) - raw[..., :1].astype(np.int32)).max()
            raise readers.UnsupportedImageError(
                path,
                f"a band must be one grey channel, but this file has 3 colour channels that differ "
                f"(by up to {int(diff)} of {2**bits - 1}); save the band as a grey image",
            )
        raw = raw[..., :1]
    elif c != 1:
        raise readers.UnsupportedImageError(path, f"a band must be one grey channel, got {c} channels")
    return _unit(raw[..., 0], bits)


def read_rgb(path) -> np.ndarray:
    """An RGB image -> float32 [H, W, 3] in [0, 1] (grey replicated, alpha dropped, 16-bit kept)."""
    raw, bits = _read_raw(path)
    c = raw.shape[-1]
    if c in (2, 4):
        raw, c = raw[..., : c - 1], c - 1
    if c == 1:
        raw = np.repeat(raw, 3, axis=-1)
    elif c != 3:
        raise readers.UnsupportedImageError(path, f"an RGB image must have 1 or 3 channels, got {c}")
    return _unit(raw, bits)


def _size_error(path, hw, other_path, other_hw, what="band") -> BandShapeError:
    return BandShapeError(
        path,
        f"{what} is {hw[0]}x{hw[1]} (HxW) but {os.path.basename(os.fspath(other_path))} of the same scene is "
        f"{other_hw[0]}x{other_hw[1]}; every band, the RGB and the truth must have one size",
    )


def read_band_stack(paths: Sequence) -> np.ndarray:
    """Band files -> float32 [H, W, B], in the order given; all must have the first one's size."""
    if not paths:
        raise ValueError("read_band_stack: no band files given")
    out = None
    for b, path in enumerate(paths):
        band = read_band(path)
        if out is None:
            out = np.empty(band.shape + (len(paths),), np.float32)
        elif band.shape != out.shape[:2]:
            raise _size_error(path, band.shape, paths[0], out.shape[:2])
        out[..., b] = band
    return out


# ------------------------------------------------------------------------------------------
# .mat cubes.


def _mat_format(path) -> str:
    """'v5' (scipy.io reads it; v4 and v6 too) or 'v7.3' (HDF5); DataError for anything else."""
    try:
        major, _ = scipy.io.matlab.matfile_version(path)
    except Exception as e:  # ValueError for a non-MAT file, OSError for an empty or unreadable one
        raise readers.UnreadableImageError(path, f"not a MATLAB .mat file ({e})") from e
    return "v7.3" if major == 2 else "v5"


def _require_h5py(path):
    # Imported when a v7.3 file is read: h5py is optional, and its absence is reported then.
    try:
        import h5py  # noqa: PLC0415
    except ImportError as e:
        raise readers.UnsupportedImageError(
            path, "a MATLAB v7.3 (HDF5) file needs h5py, which is not installed: pip install h5py"
        ) from e
    return h5py


def _mat_variables(path, fmt: str) -> list[tuple[str, tuple[int, ...], bool]]:
    """(name, shape as [H, W, ...], numeric) of the top-level variables, read from the headers."""
    if fmt == "v5":
        try:
            found = scipy.io.whosmat(path)
        except Exception as e:
            raise readers.UnreadableImageError(path, f"cannot read the .mat file ({e})") from e
        numeric = ("double", "single", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64")
        return [(name, tuple(int(s) for s in shape), kind in numeric) for name, shape, kind in found]
    h5py = _require_h5py(path)
    out = []
    try:
        with h5py.File(path, "r") as f:
            for name, item in f.items():
                if isinstance(item, h5py.Dataset):
                    numeric = item.dtype.kind in "uif" and item.attrs.get("MATLAB_class", b"") not in (
                        b"char",
                        b"logical",
                    )
                    out.append((name, tuple(int(s) for s in item.shape[::-1]), numeric))
    except OSError as e:
        raise readers.UnreadableImageError(path, f"cannot read the v7.3 .mat (HDF5) file ({e})") from e
    return out


def _pick_variable(path, variables, variable: str) -> tuple[str, tuple[int, ...]]:
    listing = ", ".join(f"{n} {list(s)}" for n, s, _ in variables) or "none"
    if variable:
        for name, shape, numeric in variables:
            if name == variable:
                if len(shape) != 3 or not numeric:
                    raise readers.UnsupportedImageError(
                        path, f"variable {variable!r} is {list(shape)}, not a numeric 3-D cube [H, W, bands]"
                    )
                return name, shape
        raise readers.LayoutError(path, f"no variable {variable!r} in the .mat file (variables: {listing})")
    cubes = [(int(np.prod(s)), n, s) for n, s, numeric in variables if numeric and len(s) == 3]
    if not cubes:
        raise readers.LayoutError(
            path, f"no numeric 3-D array (cube [H, W, bands]) in the .mat file (variables: {listing})"
        )
    _, name, shape = max(cubes, key=lambda c: c[0])  # ties: the first listed
    return name, shape


def _unit_cube(path, array: np.ndarray) -> np.ndarray:
    """Scaling to [0, 1], see the module docstring."""
    if array.dtype.kind == "u":
        return array.astype(np.float32) * np.float32(1.0 / np.iinfo(array.dtype).max)
    if array.dtype.kind not in "if":
        raise readers.UnsupportedImageError(path, f"cube of {array.dtype} values; need numbers")
    cube = array.astype(np.float32)
    if not np.all(np.isfinite(cube)):
        raise readers.UnsupportedImageError(path, "the cube holds NaN or infinite values")
    top = float(cube.max(initial=0.0))
    if top > 1.0:
        cube *= np.float32(1.0 / top)
    return np.clip(cube, 0.0, 1.0, out=cube)


def _read_mat_array(path, name: str, fmt: str) -> np.ndarray:
    if fmt == "v5":
        try:
            data = scipy.io.loadmat(path, variable_names=[name])
        except Exception as e:  # truncated files raise OSError or ValueError
            raise readers.UnreadableImageError(path, f"cannot read variable {name!r} ({e})") from e
        if name not in data:
            raise readers.LayoutError(path, f"no variable {name!r} in the .mat file")
        return np.asarray(data[name])
    h5py = _require_h5py(path)
    try:
        with h5py.File(path, "r") as f:
            return np.asarray(f[name]).T  # MATLAB column-major: h5py shows the axes reversed
    except (OSError, KeyError) as e:
        raise readers.UnreadableImageError(path, f"cannot read variable {name!r} ({e})") from e


def read_cube(path, variable: str = "") -> tuple[np.ndarray, str]:
    """A `.mat` cube -> (float32 [H, W, bands] in [0, 1], the variable's name); see the module
    docstring for the variable choice and the scaling."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise readers.UnreadableImageError(path, "file not found")
    fmt = _mat_format(path)
    name, _ = _pick_variable(path, _mat_variables(path, fmt), variable)
    array = _read_mat_array(path, name, fmt)
    if array.ndim != 3:
        raise readers.UnsupportedImageError(path, f"variable {name!r} is {list(array.shape)}, not [H, W, bands]")
    return _unit_cube(path, array), name


# ------------------------------------------------------------------------------------------
# Layouts.


@dataclasses.dataclass(frozen=True)
class SceneRecord:
    """Where one scene's files are; nothing decoded. Paths are '' when absent."""

    name: str
    layout: str  # one of LAYOUTS
    split: str = ""
    rgb: str = ""  # RGB image ('' for a .mat cube: rgb_variable or rgb_bands)
    bands: tuple[str, ...] = ()  # the selected band files, in input order (artextract, cave)
    band_indices: tuple[int, ...] = ()  # their 1-based indices in the layout's bands
    hidden: str = ""
    hidden_mask: str = ""
    cube: str = ""  # .mat file
    cube_variable: str = ""
    cube_format: str = ""  # 'v5' | 'v7.3'
    rgb_variable: str = ""
    rgb_bands: tuple[int, ...] = ()  # (red, green, blue), 1-based, for a synthesised RGB


def default_band_selection(n_available: int, n_inputs: int = 8) -> tuple[int, ...]:
    """`n_inputs` evenly spaced 1-based indices from 1 to n_available (all when there are fewer):
    (1, 5, 10, 14, 18, 22, 27, 31) of 31."""
    if n_available <= n_inputs:
        return tuple(range(1, n_available + 1))
    return tuple(int(np.floor(x + 0.5)) for x in np.linspace(1, n_available, n_inputs))


def _check_bands(bands, where) -> tuple[int, ...] | None:
    if bands is None:
        return None
    try:
        out = tuple(int(b) for b in bands)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: bands must be a tuple of 1-based band indices, got {bands!r}") from e
    if not out or min(out) < 1 or any(float(b) != int(b) for b in bands):
        raise ValueError(f"{where}: bands must be a non-empty tuple of 1-based band indices (>= 1), got {bands!r}")
    return out


def _raise_problems(folder, problems: list[readers.DataError]):
    if problems:
        raise readers.DataValidationError(
            f"{folder}: {len(problems)} problem(s) in the multispectral data", problems, listed=len(problems)
        )


def _listdir(folder) -> list[str]:
    try:
        return sorted(os.listdir(folder))
    except OSError as e:
        raise readers.LayoutError(folder, f"cannot list the folder ({e.strerror or e})") from e


def _truth(folder: str, stem: str) -> tuple[str, str]:
    def find(suffix):
        for ext in TRUTH_SUFFIXES:
            path = os.path.join(folder, stem + suffix + ext)
            if os.path.isfile(path):
                return path
        return ""

    return find("_hidden"), find("_hidden_mask")


def _group_bands(files: Sequence[str], problems) -> dict[str, dict[int, str]]:
    """{stem: {index: path}} of band files; duplicates (ms_1 and ms_01, .png and .tif) are problems."""
    out: dict[str, dict[int, str]] = {}
    for path in files:
        m = _BAND_RE.match(os.path.basename(path))
        if not m or m["ext"].lower() not in BAND_SUFFIXES:
            continue
        index = int(m["index"])
        have = out.setdefault(m["stem"], {})
        if index in have:
            problems.append(
                readers.LayoutError(
                    path, f"band {index} of {m['stem']!r} given twice (also {os.path.basename(have[index])})"
                )
            )
        else:
            have[index] = path
    return out


def _group_rgb(files: Sequence[str], problems) -> dict[str, str]:
    out: dict[str, str] = {}
    for path in files:
        m = _RGB_RE.match(os.path.basename(path))
        if not m or m["ext"].lower() not in RGB_SUFFIXES:
            continue
        if m["stem"] in out:
            problems.append(
                readers.LayoutError(path, f"two RGB images for {m['stem']!r} (also {os.path.basename(out[m['stem']])})")
            )
        else:
            out[m["stem"]] = path
    return out


def _pair(layout, split, rgbs, bands_by_stem, bands, default, problems, band_hint) -> list[SceneRecord]:
    """Records for stems with an RGB and every selected band; every mismatch is a problem."""
    available = sorted({i for have in bands_by_stem.values() for i in have})
    selection = bands if bands is not None else default(available)
    records = []
    for stem in sorted(set(rgbs) | set(bands_by_stem)):
        have = bands_by_stem.get(stem, {})
        if stem not in rgbs:
            first = have[min(have)]
            problems.append(
                readers.LayoutError(first, f"bands of {stem!r} without an RGB image (expected {stem}_RGB.<ext>)")
            )
            continue
        if not have:
            problems.append(readers.LayoutError(rgbs[stem], f"RGB image without any band ({band_hint(stem)})"))
            continue
        missing = [i for i in selection if i not in have]
        if missing:
            problems.append(
                readers.LayoutError(
                    rgbs[stem],
                    f"{stem!r} lacks band(s) {missing} of the selected {list(selection)} "
                    f"(has {sorted(have)}; expected {band_hint(stem, missing[0])})",
                )
            )
            continue
        hidden, mask = _truth(os.path.dirname(rgbs[stem]), stem)
        records.append(
            SceneRecord(
                name=stem,
                layout=layout,
                split=split,
                rgb=rgbs[stem],
                bands=tuple(have[i] for i in selection),
                band_indices=tuple(selection),
                hidden=hidden,
                hidden_mask=mask,
            )
        )
    return records


def list_artextract(root, split: str = "train", bands: Sequence[int] | None = None) -> list[SceneRecord]:
    """Scenes of `<root>/<split>/{rgb_images,ms_masks}` (see the module docstring); `bands` None =
    every band index present in the split."""
    root = os.fspath(root)
    bands = _check_bands(bands, f"{root} ({split})")
    folder = os.path.join(root, split)
    rgb_dir, ms_dir = os.path.join(folder, "rgb_images"), os.path.join(folder, "ms_masks")
    for d in (rgb_dir, ms_dir):
        if not os.path.isdir(d):
            raise readers.LayoutError(
                d, "folder not found; the ArtExtract layout is <root>/<split>/rgb_images and ms_masks"
            )
    problems: list[readers.DataError] = []
    rgbs = _group_rgb([os.path.join(rgb_dir, n) for n in _listdir(rgb_dir)], problems)
    by_stem = _group_bands([os.path.join(ms_dir, n) for n in _listdir(ms_dir)], problems)
    if not rgbs and not by_stem and not problems:
        raise readers.EmptySplitError(folder, "no <stem>_RGB images and no <stem>_ms_<i> bands")
    records = _pair(
        "artextract",
        split,
        rgbs,
        by_stem,
        bands,
        tuple,
        problems,
        lambda stem, i=1: f"ms_masks/{stem}_ms_{i}.png",
    )
    _raise_problems(folder, problems)
    return records


def list_cave(root, bands: Sequence[int] | None = None, split: str = "") -> list[SceneRecord]:
    """Scenes of a CAVE-style folder (see the module docstring); `bands` None = 8 evenly spaced
    of the bands present. `split` '' = `root` itself holds the scene folders."""
    root = os.fspath(root)
    bands = _check_bands(bands, root)
    folder = os.path.join(root, split) if split else root
    if not os.path.isdir(folder):
        raise readers.LayoutError(folder, "folder not found")
    files = []
    for name in _listdir(folder):
        path = os.path.join(folder, name)
        if os.path.isfile(path):  # a single scene's files directly in the folder
            files.append(path)
            continue
        if not os.path.isdir(path):
            continue
        places = [path]
        nested = os.path.join(path, name)
        if os.path.isdir(nested):  # CAVE's archive: balloons_ms/balloons_ms/balloons_ms_01.png
            places.append(nested)
        for place in places:
            files.extend(os.path.join(place, n) for n in _listdir(place) if os.path.isfile(os.path.join(place, n)))
    problems: list[readers.DataError] = []
    rgbs = _group_rgb(files, problems)
    by_stem = _group_bands(files, problems)
    if not rgbs and not by_stem and not problems:
        raise readers.EmptySplitError(folder, "no CAVE scenes (<scene>_ms_NN.png with <scene>_RGB.bmp) found")
    records = _pair(
        "cave",
        split,
        rgbs,
        by_stem,
        bands,
        lambda available: tuple(available[i - 1] for i in default_band_selection(len(available))),
        problems,
        lambda stem, i=1: f"{stem}_ms_{i:02d}.png",
    )
    _raise_problems(folder, problems)
    return records


def _default_rgb_bands(n: int) -> tuple[int, int, int]:
    return tuple(int(np.floor(1 + (n - 1) * f + 0.5)) for f in (19 / 30, 12 / 30, 4 / 30))


def list_mat(
    root,
    bands: Sequence[int] | None = None,
    variable: str = "",
    rgb_bands: Sequence[int] | None = None,
    rgb_variable: str = "",
    split: str = "",
) -> list[SceneRecord]:
    """Scenes of `.mat` cubes in a folder (or one `.mat` file); see the module docstring. Only
    the files' headers are read."""
    root = os.fspath(root)
    bands = _check_bands(bands, root)
    rgb_bands = _check_bands(rgb_bands, f"{root} (rgb_bands)")
    if rgb_bands is not None and len(rgb_bands) != 3:
        raise ValueError(f"{root}: rgb_bands must be 3 band indices (red, green, blue), got {rgb_bands}")
    folder = os.path.join(root, split) if split else root
    if os.path.isfile(folder) and folder.lower().endswith(".mat"):
        paths = [folder]
    elif os.path.isdir(folder):
        paths = [os.path.join(folder, n) for n in _listdir(folder) if n.lower().endswith(".mat")]
    else:
        raise readers.LayoutError(folder, "neither a folder nor a .mat file")
    if not paths:
        raise readers.EmptySplitError(folder, "no .mat files")
    problems: list[readers.DataError] = []
    records = []
    for path in paths:
        try:
            fmt = _mat_format(path)
            variables = _mat_variables(path, fmt)
            name, shape = _pick_variable(path, variables, variable)
            n = shape[2]
            selection = bands if bands is not None else default_band_selection(n)
            rgb_sel = ()
            if rgb_variable:
                match = [s for v, s, numeric in variables if v == rgb_variable]
                if not match or len(match[0]) != 3 or match[0][2] != 3:
                    raise readers.LayoutError(path, f"rgb_variable {rgb_variable!r} is not an [H, W, 3] array here")
                if match[0][:2] != shape[:2]:
                    raise _size_error(path, match[0][:2], path, shape[:2], what=f"rgb_variable {rgb_variable!r}")
            else:
                rgb_sel = rgb_bands if rgb_bands is not None else _default_rgb_bands(n)
            out_of_range = sorted({i for i in (*selection, *rgb_sel) if i > n})
            if out_of_range:
                raise readers.LayoutError(
                    path,
                    f"band index(es) {out_of_range} beyond the cube's {n} bands (variable {name!r}, {list(shape)})",
                )
        except readers.DataError as e:
            problems.append(e)
            continue
        stem = os.path.splitext(os.path.basename(path))[0]
        hidden, mask = _truth(os.path.dirname(path), stem)
        records.append(
            SceneRecord(
                name=stem,
                layout="mat",
                split=split,
                band_indices=tuple(selection),
                hidden=hidden,
                hidden_mask=mask,
                cube=path,
                cube_variable=name,
                cube_format=fmt,
                rgb_variable=rgb_variable,
                rgb_bands=tuple(rgb_sel),
            )
        )
    _raise_problems(folder, problems)
    return records


def list_scenes(layout: str, root, **kw) -> list[SceneRecord]:
    """`list_artextract` / `list_cave` / `list_mat` by name (keyword arguments passed on)."""
    listers = {"artextract": list_artextract, "cave": list_cave, "mat": list_mat}
    if layout not in listers:
        raise ValueError(f"unknown multispectral layout {layout!r}; known: {LAYOUTS}")
    return listers[layout](root, **kw)


# ------------------------------------------------------------------------------------------
# Scenes.


def _load_truth(record: SceneRecord, hw, reference: str) -> dict:
    out = {}
    if record.hidden:
        hidden = read_band(record.hidden)
        if hidden.shape != tuple(hw):
            raise _size_error(record.hidden, hidden.shape, reference, hw, what="hidden (truth) image")
        out["hidden"] = hidden
    if record.hidden_mask:
        out["hidden_mask"] = readers.read_mask(record.hidden_mask, hw)
    return out


def load_scene(record: SceneRecord) -> dict:
    """Decodes one scene into the family's dict (see the module docstring)."""
    if record.layout == "mat":
        cube, _ = read_cube(record.cube, record.cube_variable)
        bands = np.ascontiguousarray(cube[..., [i - 1 for i in record.band_indices]])
        if record.rgb_variable:
            rgb = _unit_cube(record.cube, _read_mat_array(record.cube, record.rgb_variable, record.cube_format))
            if rgb.shape != cube.shape[:2] + (3,):
                raise _size_error(record.cube, rgb.shape[:2], record.cube, cube.shape[:2], what="rgb_variable")
        else:
            rgb = np.ascontiguousarray(cube[..., [i - 1 for i in record.rgb_bands]])
        reference = record.cube
    else:
        rgb = read_rgb(record.rgb)
        bands = read_band_stack(record.bands)
        if bands.shape[:2] != rgb.shape[:2]:
            raise _size_error(record.bands[0], bands.shape[:2], record.rgb, rgb.shape[:2])
        reference = record.rgb
    scene = {"name": record.name, "rgb": rgb, "bands": bands}
    scene.update(_load_truth(record, rgb.shape[:2], reference))
    return scene


def to_batch(scenes: Sequence[dict]) -> dict:
    """{"rgb": [N, H, W, 3], "bands": [N, H, W, B]} (+ "hidden", "hidden_mask" when every scene
    has them); every scene must have one size and band count."""
    if not scenes:
        raise ValueError("to_batch: no scenes")
    first = scenes[0]
    for s in scenes[1:]:
        if s["rgb"].shape != first["rgb"].shape or s["bands"].shape != first["bands"].shape:
            raise ValueError(
                f"to_batch: scene {s.get('name')!r} is rgb {s['rgb'].shape}, bands {s['bands'].shape} but "
                f"{first.get('name')!r} is rgb {first['rgb'].shape}, bands {first['bands'].shape}; crop or resize first"
            )
    out = {k: np.stack([s[k] for s in scenes]) for k in ("rgb", "bands")}
    for k in ("hidden", "hidden_mask"):
        if all(k in s for s in scenes):
            out[k] = np.stack([s[k] for s in scenes])
    return out


def augment(rng: np.random.Generator, scene: dict, crop=None, flips: bool = True, rot90: bool = True) -> dict:
    """One random crop (None, an int or (h, w)), left-right and up-down flips (each with
    probability 1/2) and rotation by k * 90 degrees, the same for every array in SPATIAL_KEYS.
    A non-square result is rotated by 0 or 180 degrees only, so scenes of one size keep it (a
    batch stays stackable). Returns a new dict; other keys are copied as they are."""
    h, w = scene["rgb"].shape[:2]
    for key in SPATIAL_KEYS:
        if key in scene and scene[key].shape[:2] != (h, w):
            raise ValueError(f"augment: scene {scene.get('name')!r}: {key} is {scene[key].shape[:2]}, rgb is {(h, w)}")
    y0, x0, ch, cw = 0, 0, h, w
    if crop is not None:
        ch, cw = (int(crop), int(crop)) if np.isscalar(crop) else (int(crop[0]), int(crop[1]))
        if not (0 < ch <= h and 0 < cw <= w):
            raise ValueError(f"augment: crop {(ch, cw)} does not fit scene {scene.get('name')!r} of {(h, w)}")
        y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    flip_lr = bool(flips and rng.random() < 0.5)
    flip_ud = bool(flips and rng.random() < 0.5)
    k = 0
    if rot90:
        k = int(rng.integers(0, 4)) if ch == cw else 2 * int(rng.integers(0, 2))

    def apply(a):
        a = a[y0 : y0 + ch, x0 : x0 + cw]
        if flip_lr:
            a = a[:, ::-1]
        if flip_ud:
            a = a[::-1]
        if k:
            a = np.rot90(a, k, axes=(0, 1))
        return np.ascontiguousarray(a)

    out = dict(scene)
    for key in SPATIAL_KEYS:
        if key in scene:
            out[key] = apply(np.asarray(scene[key]))
    return out
