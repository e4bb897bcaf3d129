"""Pretrained PyTorch state dicts read (and written) without torch: numpy arrays by key.

    load_state_dict(path)                   -> {key: np.ndarray}, any of the three formats below
    check_state_dict(state, shapes, path)   one WeightsError naming missing/extra/mis-shaped keys
    assert_finite(state, path)              WeightsError naming a tensor with NaN/Inf
    package_file(package, relative)         a file inside an installed package, or None
    missing_weights_error(path, how_to_get) the 'weights file X not found; <how>' error
    save_safetensors / save_torch_zip / save_torch_legacy (state, path)

The format is found from the file's first bytes, never its extension:

    safetensors          8-byte little-endian header length, then a JSON header ("{")
    torch zip            "PK\\x03\\x04": torch.save since torch 1.6 (the default)
    legacy torch stream  a pickle of torch's magic number: torch < 1.6, or
                         torch.save(..., _use_new_zipfile_serialization=False)

Torch files are pickles, and a pickle is code; they are read with a restricted unpickler that
resolves only tensor rebuilding, the storage types and OrderedDict (torch_pickle.py), each to
a function of ours, so a hostile file is refused with a WeightsError and nothing in it runs.
Dtypes: float32, float16, bfloat16 (ml_dtypes), float64, int64, int32, int16, int8, uint8,
bool. Every array returned is an owned, writable, C-contiguous copy in native byte order.

This package imports numpy (and safetensors, ml_dtypes when a file needs them) only: no jax,
no torch, so the peer scripts' torch venv can use it too.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np

from xray_flax.weights.errors import WeightsError, missing_weights_error
from xray_flax.weights.safetensors_io import read_safetensors, write_safetensors
from xray_flax.weights.state import WRAPPER_KEYS, assert_finite, check_state_dict, strip_module_prefix
from xray_flax.weights.torch_files import read_legacy, read_zip, write_legacy, write_zip

__all__ = [
    "FORMATS",
    "WRAPPER_KEYS",
    "WeightsError",
    "assert_finite",
    "check_state_dict",
    "detect_format",
    "load_state_dict",
    "missing_weights_error",
    "package_file",
    "save_safetensors",
    "save_torch_legacy",
    "save_torch_zip",
]

FORMATS = {
    "safetensors": "safetensors",
    "torch_zip": "torch zip (torch.save since torch 1.6)",
    "torch_legacy": "legacy torch stream (torch < 1.6, or _use_new_zipfile_serialization=False)",
}


def detect_format(path: str | os.PathLike) -> str:
    """One of FORMATS' keys, from the content of `path`; WeightsError if none fits."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise WeightsError(f"weights file {path} not found")
    if os.path.isdir(path):
        raise WeightsError(f"weights file {path} is a directory, not a file")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        raise WeightsError(f"weights file {path} is empty")
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "torch_zip"
    if len(head) >= 9 and head[8:9] == b"{":
        header = int.from_bytes(head[:8], "little")
        if header <= size - 8:
            return "safetensors"
        raise WeightsError(
            f"weights file {path}: a safetensors header of {header} bytes in a file of {size} (truncated file)"
        )
    if head[:1] == b"\x80":  # pickle protocol >= 2: read_legacy checks for torch's magic number
        return "torch_legacy"
    if head[257:262] == b"ustar":
        raise WeightsError(f"weights file {path}: a tar archive (torch's format before 0.1.10), which is not read")
    known = "; ".join(FORMATS.values())
    raise WeightsError(
        f"weights file {path}: not a recognised weights format (known: {known}); first bytes {head[:8]!r}"
    )


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The tensors of a safetensors, torch zip or legacy torch file, as numpy arrays by key.

    A torch file's top object is used when it is a dict of tensors; a checkpoint that wraps its
    state dict (a dict with other entries) is accepted when exactly one of its entries
    "state_dict", "model" or "module" is a dict of tensors, and that one is returned. A
    leading "module." (DataParallel) is stripped when every key has it. Finiteness is not
    checked here (see assert_finite).
    """
    path = os.fspath(path)
    kind = detect_format(path)
    if kind == "safetensors":
        state = read_safetensors(path)
    elif kind == "torch_zip":
        state = read_zip(path)
    else:
        state = read_legacy(path)
    return strip_module_prefix(state)


def save_safetensors(state: dict[str, np.ndarray], path: str | os.PathLike) -> None:
    """Write `state` as a safetensors file (contiguous copies; atomic rename)."""
    write_safetensors(state, os.fspath(path))


def save_torch_zip(state: dict[str, np.ndarray], path: str | os.PathLike) -> None:
    """Write `state` as torch.save does (zip layout); torch.load(weights_only=True) reads it.

    Arrays that are views of one C-contiguous array share it as one storage with their
    offsets and strides, as tensors viewing one storage do in torch.
    """
    write_zip(state, os.fspath(path))


def save_torch_legacy(state: dict[str, np.ndarray], path: str | os.PathLike) -> None:
    """Write `state` as torch.save(..., _use_new_zipfile_serialization=False) does."""
    write_legacy(state, os.fspath(path))


def package_file(package: str, relative: str) -> str | None:
    """The path of `relative` inside the installed `package`, or None when either is absent.

    Uses importlib.util.find_spec, so the package's own code is not run (its parent packages
    are imported for a dotted name, as Python requires).
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        roots = list(spec.submodule_search_locations)
    elif spec.origin and os.path.isfile(spec.origin):
        roots = [os.path.dirname(spec.origin)]
    else:
        return None
    for root in roots:
        candidate = os.path.join(root, relative)
        if os.path.isfile(candidate):
            return candidate
    return None
