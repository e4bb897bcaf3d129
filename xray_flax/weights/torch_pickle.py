"""The pickle part of torch checkpoints, read and written without torch.

A torch checkpoint's object tree is a pickle. A pickle is a program: its GLOBAL opcodes import
any importable name and its REDUCE opcodes call it, so unpickling an untrusted file can run
anything (``os.system``, ``builtins.eval``...). Reading here therefore goes through
`RestrictedUnpickler`, which resolves ONLY these globals, each to a function of ours that
builds plain data and calls nothing of torch's:

    torch._utils._rebuild_tensor_v2   a tensor (torch >= 0.4; every file torch writes today)
    torch._utils._rebuild_tensor      the same for torch < 0.4 legacy files
    torch._utils._rebuild_parameter   an nn.Parameter (torch.save of parameters, not of a
                                      state_dict(), which holds plain tensors)
    torch.{Float,Double,Half,BFloat16,Long,Int,Short,Char,Byte,Bool}Storage
                                      storage types (only as markers inside persistent ids)
    collections.OrderedDict           state_dict() containers and backward_hooks

This is the set torch's own ``weights_only=True`` unpickler needs for a state dict of those
dtypes. [ours; the list of globals checked against the Lite0 package file and files written
by torch 2.13, see benchmarks/peer/check_torch_formats.py]. Anything else is a `WeightsError`
naming the global and the file. The storages' bytes are never in the pickle: a persistent id
names each storage, and `TensorRef` records which storage, offset, shape and strides a tensor
uses; the zip and legacy readers (torch_files.py) fetch the bytes and `materialize` the arrays.

Writing (`TorchPickler`) emits the same opcodes torch.save does (protocol 2, the GLOBALs above
spelled as torch spells them, BINPERSID storage ids), so torch.load(weights_only=True) reads
the files.
"""

from __future__ import annotations

import _compat_pickle
import collections
import dataclasses
import io
import math
import pickle
import sys
from collections.abc import Mapping

import numpy as np

from xray_flax.weights.errors import WeightsError

# torch storage class name -> dtype name (numpy's, and "bfloat16" from ml_dtypes).
STORAGE_DTYPES = {
    "FloatStorage": "float32",
    "DoubleStorage": "float64",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}
DTYPE_STORAGES = {dtype: storage for storage, dtype in STORAGE_DTYPES.items()}
DTYPE_NAMES = tuple(DTYPE_STORAGES)


def numpy_dtype(name: str) -> np.dtype:
    """The native-order numpy dtype for one of `DTYPE_NAMES`."""
    if name == "bfloat16":
        # Imported when a file holds bfloat16: this package imports no more than numpy until a
        # file needs it (the peer scripts' torch venv may lack it; jax depends on it).
        try:
            import ml_dtypes  # noqa: PLC0415
        except ImportError:
            raise WeightsError("bfloat16 tensors need the ml_dtypes package (pip install ml_dtypes)") from None
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def dtype_name(dtype: np.dtype) -> str | None:
    """The name in `DTYPE_NAMES` of a numpy dtype (any byte order), or None if unsupported."""
    dtype = np.dtype(dtype)
    if dtype.names is not None or dtype.subdtype is not None:
        return None
    return dtype.name if dtype.name in DTYPE_STORAGES else None


@dataclasses.dataclass(frozen=True)
class StorageRef:
    """A storage named by a persistent id: `numel` elements of `dtype` under record `key`.

    `elem_offset` > 0 only for the views of pre-0.4 legacy files (a storage that starts
    `elem_offset` elements into storage `key`).
    """

    key: str
    dtype: str
    numel: int
    elem_offset: int = 0


@dataclasses.dataclass(frozen=True)
class TensorRef:
    """A tensor in a pickle: its storage, element offset, shape and element strides."""

    storage: StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class _StorageType:
    """What a storage-type GLOBAL resolves to: a marker (not callable, not a class)."""

    name: str
    dtype: str


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _int_tuple(x, what: str) -> tuple[int, ...]:
    if not isinstance(x, tuple | list) or not all(_is_int(v) and v >= 0 for v in x):
        raise WeightsError(f"tensor {what} {x!r} is not a tuple of non-negative integers")
    return tuple(int(v) for v in x)


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored) -> TensorRef:
    """Ours, standing in for torch._utils._rebuild_tensor(_v2): records, computes nothing.

    The trailing arguments of _v2 (requires_grad, backward_hooks, metadata) carry no data.
    """
    if not isinstance(storage, StorageRef):
        raise WeightsError(f"tensor storage is {type(storage).__name__}, not a storage persistent id")
    if not _is_int(storage_offset) or storage_offset < 0:
        raise WeightsError(f"tensor storage offset {storage_offset!r} is not a non-negative integer")
    shape, strides = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if len(shape) != len(strides):
        raise WeightsError(f"tensor size {shape} and stride {strides} differ in length")
    return TensorRef(storage, int(storage_offset), shape, strides)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *_ignored) -> TensorRef:
    """Ours, standing in for torch._utils._rebuild_parameter: a parameter is its tensor."""
    if not isinstance(data, TensorRef):
        raise WeightsError(f"parameter data is {type(data).__name__}, not a tensor")
    return data


ALLOWED_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    **{("torch", name): _StorageType(name, dtype) for name, dtype in STORAGE_DTYPES.items()},
}


def _text(x) -> str | None:
    """A pickled str (or a Python 2 file's bytes) as str; None for anything else."""
    if isinstance(x, bytes):
        try:
            return x.decode("ascii")
        except UnicodeDecodeError:
            return None
    return x if isinstance(x, str) else None


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles a torch object tree, resolving only `ALLOWED_GLOBALS`.

    `legacy` selects the persistent-id layout: ('storage', type, key, location, numel) in zip
    files, the same plus view_metadata in legacy streams. `storages` collects every storage
    named (key -> StorageRef of its root), in order of first use.
    """

    def __init__(self, file, path: str, *, legacy: bool):
        super().__init__(file, encoding="utf-8")
        self.path = path
        self.legacy = legacy
        self.storages: dict[str, StorageRef] = {}

    def find_class(self, module: str, name: str):
        # Protocol-2 pickles spell some names the Python 2 way (builtins.eval as __builtin__.eval);
        # map them as pickle's own find_class does, for the lookup and the message alike.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except (KeyError, TypeError):
            raise WeightsError(
                f"weights file {self.path}: its pickle refers to the global {module}.{name}, which is not a "
                "torch tensor, storage type or OrderedDict. A pickle is code, so anything else is refused and "
                "nothing was run; if you trust the file, convert it to safetensors with torch and load that."
            ) from None

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid:
            raise WeightsError(f"weights file {self.path}: persistent id {pid!r} is not a storage reference")
        kind = _text(pid[0])
        if kind != "storage":
            raise WeightsError(
                f"weights file {self.path}: persistent id of kind {kind or pid[0]!r} refused (only tensor "
                "storages are read; 'module' ids carry a whole pickled model's source code)"
            )
        fields = pid[1:]
        if len(fields) != (5 if self.legacy else 4):
            raise WeightsError(f"weights file {self.path}: storage persistent id {pid!r} has {len(fields)} fields")
        storage_type, key, _location, numel = fields[:4]
        key = _text(key)
        if not isinstance(storage_type, _StorageType) or key is None or not _is_int(numel) or numel < 0:
            raise WeightsError(f"weights file {self.path}: malformed storage persistent id {pid!r}")
        root = self.storages.setdefault(key, StorageRef(key, storage_type.dtype, int(numel)))
        if root.numel * _itemsize(root.dtype) != numel * _itemsize(storage_type.dtype):
            raise WeightsError(f"weights file {self.path}: storage {key} is named with two sizes ({root}, {pid!r})")
        ref = StorageRef(key, storage_type.dtype, int(numel))
        view = fields[4] if self.legacy else None
        if view is None:
            return ref
        # Pre-0.4 storage views: (view_key, offset, size) in elements of the root storage.
        if not isinstance(view, tuple) or len(view) != 3 or not all(_is_int(v) and v >= 0 for v in view[1:]):
            raise WeightsError(f"weights file {self.path}: malformed storage view {view!r}")
        _, offset, size = view
        if offset + size > numel:
            raise WeightsError(
                f"weights file {self.path}: storage view {view!r} lies outside storage {key} of {numel} elements"
            )
        return StorageRef(key, storage_type.dtype, int(size), int(offset))


def restricted_load(data: bytes | io.BufferedIOBase, path: str, *, legacy: bool) -> tuple[object, RestrictedUnpickler]:
    """Unpickle one object from `data` (bytes or a file positioned at it)."""
    file = io.BytesIO(data) if isinstance(data, bytes | bytearray | memoryview) else data
    unpickler = RestrictedUnpickler(file, path, legacy=legacy)
    try:
        return unpickler.load(), unpickler
    except WeightsError:
        raise
    except EOFError:
        raise WeightsError(f"weights file {path}: the pickle ends early (truncated file)") from None
    except Exception as e:  # a corrupt pickle can raise almost anything; never let it pass silently
        raise WeightsError(f"weights file {path}: truncated or corrupt pickle ({type(e).__name__}: {e})") from None


def _itemsize(dtype: str) -> int:
    return 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize


def materialize(ref: TensorRef, raw: bytes | memoryview, *, swap: bool, path: str, key: str) -> np.ndarray:
    """The array `ref` describes, from the bytes `raw` of its root storage; an owned copy.

    `swap`: the file's byte order is not the host's. Strides are honoured with
    as_strided over the storage after checking that every element lies inside it.
    """
    storage = ref.storage
    dtype = numpy_dtype(storage.dtype)
    need = (storage.elem_offset + storage.numel) * dtype.itemsize
    if len(raw) < need:
        raise WeightsError(
            f"weights file {path}: storage {storage.key} of tensor {key!r} holds {len(raw)} bytes, {need} "
            "needed (truncated file)"
        )
    if math.prod(ref.shape) == 0:
        return np.zeros(ref.shape, dtype)
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride))
    if last >= storage.numel:
        raise WeightsError(
            f"weights file {path}: tensor {key!r} (offset {ref.offset}, size {ref.shape}, stride {ref.stride}) "
            f"reaches element {last} of a storage of {storage.numel}"
        )
    flat = np.frombuffer(raw, dtype=dtype, count=storage.numel, offset=storage.elem_offset * dtype.itemsize)
    view = np.lib.stride_tricks.as_strided(
        flat[ref.offset :], shape=ref.shape, strides=tuple(s * dtype.itemsize for s in ref.stride), writeable=False
    )
    out = np.array(view, copy=True, order="C")
    if swap:
        out.byteswap(inplace=True)
    return out


# ----------------------------------------------------------------------------------------- writing


def _torch_global(module: str, name: str) -> type:
    """A stand-in class that `TorchPickler` writes as GLOBAL 'module name' (no torch import)."""
    return type(name, (), {"_pickle_global": (module, name)})


_REBUILD_TENSOR_V2 = _torch_global("torch._utils", "_rebuild_tensor_v2")
_STORAGE_CLASSES = {dtype: _torch_global("torch", storage) for dtype, storage in DTYPE_STORAGES.items()}


@dataclasses.dataclass(eq=False)
class StorageOut:
    """A storage to write: record `key`, and its elements as a 1-D C-contiguous array."""

    key: str
    data: np.ndarray

    @property
    def dtype(self) -> str:
        return dtype_name(self.data.dtype)


@dataclasses.dataclass(eq=False)
class TensorOut:
    storage: StorageOut
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    def __reduce__(self):
        # torch's Tensor.__reduce_ex__ for a CPU tensor: (_rebuild_tensor_v2, (storage, offset,
        # size, stride, requires_grad, backward_hooks)).
        return _REBUILD_TENSOR_V2, (
            self.storage,
            self.offset,
            self.shape,
            self.stride,
            False,
            collections.OrderedDict(),
        )


class TorchPickler(pickle._Pickler):
    """Protocol-2 pickler writing `StorageOut` as torch persistent ids and our stand-ins as torch GLOBALs.

    The pure-Python pickler is used because its `save_global` can be overridden: the C one
    insists on importing the module (torch), which is exactly what is avoided here.
    """

    def __init__(self, file, *, legacy: bool):
        super().__init__(file, protocol=2)
        self.legacy = legacy

    def persistent_id(self, obj):
        if not isinstance(obj, StorageOut):
            return None
        pid = ("storage", _STORAGE_CLASSES[obj.dtype], obj.key, "cpu", int(obj.data.size))
        return pid + (None,) if self.legacy else pid

    def save_global(self, obj, name=None):
        ref = getattr(obj, "_pickle_global", None) if isinstance(obj, type) else None
        if ref is None:
            return super().save_global(obj, name)
        module, qualname = ref
        self.write(pickle.GLOBAL + f"{module}\n{qualname}\n".encode())
        self.memoize(obj)


def dumps(obj, *, legacy: bool) -> bytes:
    buffer = io.BytesIO()
    TorchPickler(buffer, legacy=legacy).dump(obj)
    return buffer.getvalue()


def little_endian_bytes(data: np.ndarray) -> bytes:
    """The raw bytes torch writes for a storage: little-endian elements."""
    return (data.byteswap() if sys.byteorder == "big" else data).tobytes()


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


def plan_storages(state: dict, path: str) -> tuple[list[StorageOut], dict[str, TensorOut]]:
    """Storages and tensors for `state` as torch.save lays them out.

    As torch does, arrays that are views of one C-contiguous numpy array share that array as
    one storage (with their offsets and strides, e.g. a transposed or sliced view); any other
    array becomes its own contiguous storage. Storage keys are "0", "1", ... in order of first use.
    """
    if not isinstance(state, Mapping):
        raise WeightsError(
            f"weights file {path}: a state dict to write must be a dict of arrays, not {type(state).__name__}"
        )
    storages: dict[int, StorageOut] = {}
    keep_alive = []  # roots stay alive while their ids are dictionary keys
    tensors: dict[str, TensorOut] = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise WeightsError(f"weights file {path}: state dict key {key!r} is not a string")
        array = np.asarray(value)
        if dtype_name(array.dtype) is None:
            raise WeightsError(
                f"weights file {path}: tensor {key!r} has dtype {array.dtype}; writable dtypes: {DTYPE_NAMES}"
            )
        if not array.dtype.isnative:
            array = array.astype(array.dtype.newbyteorder("="))
        root, offset, stride = _shared_root(array)
        if root is None:
            root = np.ascontiguousarray(array).reshape(-1)
            offset, stride = 0, _contiguous_strides(array.shape)
        if id(root) not in storages:
            keep_alive.append(root)
            storages[id(root)] = StorageOut(str(len(storages)), root.reshape(-1))
        tensors[key] = TensorOut(storages[id(root)], offset, tuple(array.shape), stride)
    return list(storages.values()), tensors


def _shared_root(array: np.ndarray):
    """(root, element offset, element strides) when `array` lies inside a C-contiguous base array."""
    root = array
    while isinstance(root.base, np.ndarray):
        root = root.base
    itemsize = array.dtype.itemsize
    if (
        array.size == 0
        or root.dtype != array.dtype
        or not root.flags.c_contiguous
        or any(s < 0 or s % itemsize for s in array.strides)
    ):
        return None, 0, ()
    start = array.ctypes.data - root.ctypes.data
    if start < 0 or start % itemsize:
        return None, 0, ()
    offset, stride = start // itemsize, tuple(s // itemsize for s in array.strides)
    if offset + sum((n - 1) * s for n, s in zip(array.shape, stride)) >= root.size:
        return None, 0, ()
    return root, offset, stride
