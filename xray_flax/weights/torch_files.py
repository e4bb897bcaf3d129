"""torch.save's two file layouts, read and written with zipfile, pickle and numpy (no torch).

Zip (torch >= 1.6, the default): a stored (uncompressed) zip whose entries sit under one root
folder, named by torch after the file (``resnet18.pth`` -> ``resnet18/``):

    <root>/data.pkl                 the object tree; storages as persistent ids
                                    ('storage', <torch.XStorage>, key, location, numel)
    <root>/.format_version          b"1"
    <root>/.storage_alignment       b"64" (each record's data starts at a multiple of 64)
    <root>/byteorder                b"little" (absent in files of torch < 1.10: little)
    <root>/data/<key>               each storage's raw elements
    <root>/version                  b"3\\n"
    <root>/.data/serialization_id   40 decimal digits

Legacy stream (torch < 1.6, or ``_use_new_zipfile_serialization=False``): five pickles and the
storages, back to back:

    MAGIC_NUMBER (0x1950a86a20f9469cfc6c), PROTOCOL_VERSION (1001),
    sys info {'protocol_version', 'little_endian', 'type_sizes'},
    the object tree (persistent ids as above plus view_metadata, None since torch 0.4),
    the list of storage keys (sorted), then per key: int64 element count, the raw elements.

Raw elements are little-endian in legacy streams and in the byte order of the ``byteorder``
record in zips. [torch/serialization.py, read against files torch 2.13 writes]
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import struct
import sys
import zipfile
import zlib

import numpy as np

from xray_flax.weights.errors import WeightsError
from xray_flax.weights.state import select_state
from xray_flax.weights.torch_pickle import (
    StorageOut,
    StorageRef,
    TensorRef,
    dumps,
    little_endian_bytes,
    materialize,
    numpy_dtype,
    plan_storages,
    restricted_load,
)

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
# torch's LONG_SIZE is struct.Struct("=l").size, which is 4 on every platform.
SYS_INFO = {
    "protocol_version": PROTOCOL_VERSION,
    "little_endian": True,
    "type_sizes": {"short": 2, "int": 4, "long": 4},
}
ALIGNMENT = 64  # torch's zip records start at multiples of 64 bytes ("FB" padding extra field)


# ----------------------------------------------------------------------------------------- reading


def _materialize_all(refs: dict[str, TensorRef], raw_of, *, swap: bool, path: str) -> dict[str, np.ndarray]:
    cache: dict[str, bytes] = {}
    out = {}
    for key, ref in refs.items():
        if ref.storage.key not in cache:
            cache[ref.storage.key] = raw_of(ref.storage, key)
        out[key] = materialize(ref, cache[ref.storage.key], swap=swap, path=path, key=key)
    return out


def read_zip(path: str) -> dict[str, np.ndarray]:
    """The state dict in a torch >= 1.6 zip checkpoint."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise WeightsError(f"weights file {path}: truncated or corrupt zip archive ({e})") from None
    with archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            what = "TorchScript archive (torch.jit.save)" if any(n.endswith("/constants.pkl") for n in names) else ""
            raise WeightsError(
                f"weights file {path}: a zip archive but not a torch.save checkpoint"
                f"{' (a ' + what + ')' if what else ''}: "
                f"expected one <root>/data.pkl, found {len(pickles)} among {len(names)} entries {names[:5]}"
            )
        root = pickles[0][: -len("data.pkl")]

        def record(name: str) -> bytes:
            try:
                return archive.read(root + name)
            except KeyError:
                raise WeightsError(f"weights file {path}: record {root + name} missing from the zip archive") from None
            except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as e:
                raise WeightsError(
                    f"weights file {path}: record {root + name} unreadable, truncated or corrupt ({e})"
                ) from None

        byteorder = record("byteorder").decode("ascii", "replace").strip() if root + "byteorder" in names else "little"
        if byteorder not in ("little", "big"):
            raise WeightsError(f"weights file {path}: byteorder record says {byteorder!r}, expected 'little' or 'big'")
        tree, _ = restricted_load(record("data.pkl"), path, legacy=False)
        refs = select_state(tree, path)

        def raw_of(storage: StorageRef, key: str) -> bytes:
            return record(f"data/{storage.key}")

        return _materialize_all(refs, raw_of, swap=byteorder != sys.byteorder, path=path)


def _read_exact(f, n: int, path: str, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise WeightsError(
            f"weights file {path}: the file ends inside {what} ({len(data)} of {n} bytes; truncated file)"
        )
    return data


def read_legacy(path: str) -> dict[str, np.ndarray]:
    """The state dict in a legacy (pre-1.6) torch stream."""
    with open(path, "rb") as f:
        magic, _ = restricted_load(f, path, legacy=True)
        if magic != MAGIC_NUMBER:
            raise WeightsError(
                f"weights file {path}: a pickle, but not a torch checkpoint (its first object is not torch's "
                "magic number); plain pickles are not read"
            )
        protocol, _ = restricted_load(f, path, legacy=True)
        if protocol != PROTOCOL_VERSION:
            raise WeightsError(
                f"weights file {path}: legacy torch protocol {protocol!r}, only {PROTOCOL_VERSION} is known"
            )
        sys_info, _ = restricted_load(f, path, legacy=True)
        if not isinstance(sys_info, dict):
            raise WeightsError(f"weights file {path}: malformed legacy header (sys info {sys_info!r})")
        tree, unpickler = restricted_load(f, path, legacy=True)
        keys, _ = restricted_load(f, path, legacy=True)
        if not isinstance(keys, list) or not all(isinstance(k, str | bytes) for k in keys):
            raise WeightsError(f"weights file {path}: malformed list of storage keys ({type(keys).__name__})")
        raws: dict[str, bytes] = {}
        for key in keys:
            key = key.decode("ascii") if isinstance(key, bytes) else key
            storage = unpickler.storages.get(key)
            if storage is None:
                raise WeightsError(
                    f"weights file {path}: storage {key} is listed but no tensor names it (corrupt file)"
                )
            (count,) = struct.unpack("<q", _read_exact(f, 8, path, f"the size of storage {key}"))
            if count != storage.numel:
                raise WeightsError(
                    f"weights file {path}: storage {key} holds {count} elements but its tensors say "
                    f"{storage.numel} (corrupt file)"
                )
            nbytes = count * numpy_dtype(storage.dtype).itemsize
            raws[key] = _read_exact(f, nbytes, path, f"storage {key}")
    refs = select_state(tree, path)

    def raw_of(storage: StorageRef, key: str) -> bytes:
        try:
            return raws[storage.key]
        except KeyError:
            raise WeightsError(
                f"weights file {path}: storage {storage.key} of tensor {key!r} is not in the file"
            ) from None

    # Legacy storages are little-endian whatever the writer's host (torch swaps on big-endian ones).
    return _materialize_all(refs, raw_of, swap=sys.byteorder != "little", path=path)


# ----------------------------------------------------------------------------------------- writing


def _atomic_write(path: str, write) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_zip(state: dict, path: str) -> None:
    """`state` as torch.save writes it (zip format): the same records, root name and alignment.

    Data descriptors and timestamps aside, this is torch.save's file: Python's zipfile with
    each record's data aligned to 64 bytes by an "FB" extra field, as torch's
    PyTorchStreamWriter does.
    """
    storages, tensors = plan_storages(state, path)
    write_zip_records(path, dumps(tensors, legacy=False), storages)


def write_zip_records(path: str, pkl: bytes, storages: list[StorageOut]) -> None:
    """A torch zip checkpoint holding the pickle `pkl` and the raw `storages`."""
    digest = hashlib.sha1(pkl)
    for storage in storages:
        digest.update(little_endian_bytes(storage.data))
    serialization_id = f"{int(digest.hexdigest(), 16) % 10**40:040d}"
    records = [
        ("data.pkl", pkl),
        (".format_version", b"1"),
        (".storage_alignment", str(ALIGNMENT).encode()),
        ("byteorder", b"little"),
        *[(f"data/{s.key}", little_endian_bytes(s.data)) for s in storages],
        ("version", b"3\n"),
        (".data/serialization_id", serialization_id.encode()),
    ]
    root = os.path.splitext(os.path.basename(path))[0] or "archive"

    def write(tmp: str) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            for name, data in records:
                info = zipfile.ZipInfo(f"{root}/{name}", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_STORED
                # zipfile adds a 20-byte zip64 field to the local header past this size.
                zip64 = len(data) * 1.05 > zipfile.ZIP64_LIMIT
                start = archive.fp.tell() + 30 + len(info.filename.encode("utf-8")) + (20 if zip64 else 0)
                pad = -(start + 4) % ALIGNMENT
                info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
                archive.writestr(info, data)

    _atomic_write(path, write)


def write_legacy(state: dict, path: str) -> None:
    """`state` as torch.save(..., _use_new_zipfile_serialization=False) writes it."""
    storages, tensors = plan_storages(state, path)
    write_legacy_records(path, dumps(tensors, legacy=True), storages)


def write_legacy_records(path: str, pkl: bytes, storages: list[StorageOut]) -> None:
    """A legacy torch stream holding the pickle `pkl` and the raw `storages`."""
    out = io.BytesIO()
    for header in (MAGIC_NUMBER, PROTOCOL_VERSION, SYS_INFO):
        pickle.dump(header, out, protocol=2)
    out.write(pkl)
    ordered = sorted(storages, key=lambda s: s.key)  # torch writes the keys sorted (as strings)
    pickle.dump([s.key for s in ordered], out, protocol=2)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(out.getbuffer())
            for storage in ordered:
                f.write(struct.pack("<q", storage.data.size))
                f.write(little_endian_bytes(storage.data))

    _atomic_write(path, write)
