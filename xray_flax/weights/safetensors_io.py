"""safetensors files through the `safetensors` package (numpy, no torch).

safetensors.numpy has no BF16 entry (numpy has no bfloat16), so reading goes through the
package's own parser, `safetensors.deserialize` (what safetensors.numpy.load calls), with a
dtype table that adds BF16 as ml_dtypes.bfloat16. Writing is safetensors.numpy.save_file.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

import numpy as np

from xray_flax.weights.errors import WeightsError
from xray_flax.weights.torch_pickle import DTYPE_NAMES, dtype_name, numpy_dtype

# safetensors dtype codes -> our dtype names (the ones torch's legacy storages cover).
SAFETENSORS_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


def _safetensors():
    # Imported when a file needs it: the peer scripts' torch venv may lack it (package docstring).
    try:
        import safetensors  # noqa: PLC0415
        import safetensors.numpy  # noqa: PLC0415
    except ImportError:
        raise WeightsError("safetensors files need the safetensors package (pip install safetensors)") from None
    return safetensors


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    safetensors = _safetensors()
    with open(path, "rb") as f:
        data = f.read()
    try:
        items = safetensors.deserialize(data)
    except Exception as e:  # SafetensorError and friends: bad header, offsets past the end
        raise WeightsError(f"weights file {path}: truncated or corrupt safetensors file ({e})") from None
    state = {}
    for key, info in items:
        name = SAFETENSORS_DTYPES.get(info["dtype"])
        if name is None:
            raise WeightsError(
                f"weights file {path}: tensor {key!r} has safetensors dtype {info['dtype']}; "
                f"readable: {sorted(SAFETENSORS_DTYPES)}"
            )
        array = np.frombuffer(info["data"], dtype=numpy_dtype(name)).reshape(info["shape"])
        state[key] = array.byteswap() if sys.byteorder == "big" else array
    return state


def write_safetensors(state: dict, path: str) -> None:
    safetensors = _safetensors()
    if not isinstance(state, Mapping):
        raise WeightsError(
            f"weights file {path}: a state dict to write must be a dict of arrays, not {type(state).__name__}"
        )
    arrays = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise WeightsError(f"weights file {path}: state dict key {key!r} is not a string")
        array = np.asarray(value)
        if dtype_name(array.dtype) is None:
            raise WeightsError(
                f"weights file {path}: tensor {key!r} has dtype {array.dtype}; writable dtypes: {DTYPE_NAMES}"
            )
        arrays[key] = np.asarray(array, order="C")  # not ascontiguousarray: it makes 0-d arrays 1-d
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        safetensors.numpy.save_file(arrays, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
