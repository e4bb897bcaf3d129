"""TensorBoard event files without TensorFlow: the scalars and images both training loops log.

`create_writer(workdir, just_logging)` is what `xray_flax/train.py` and
`xray_flax/hidden_art/train.py` write through. It writes the records `tf.summary.scalar` and
`tf.summary.image` write (a float32 scalar tensor with the scalars plugin's metadata; a string
tensor [width, height, PNG, ...] with the images plugin's; the same pixels), so TensorBoard
shows them as it showed clu's TensorFlow writer's, and `report.plots.logged_scalars` reads them
back. It needs only the protos of the `tensorboard` package: clu's writers import TensorFlow
(1.3 GB installed, seconds at every start) as soon as `clu.metric_writers` is imported, and
tensorboard's own record writer imports its TensorFlow stub (0.3 s).

Writes are asynchronous, as clu's writer's were: one background thread encodes and appends them
in order (the record checksums are pure Python, ~0.3 s per MB of PNG); `flush()` waits for them
(the loops call it when they stop). A write that fails (a full disk) is logged as a warning, not
raised: the run goes on without its TensorBoard records. Scalars are also logged (the
`xray_flax.summary` logger, shown with --verbose). Processes other than 0 get a writer that
only logs (`just_logging`): one event file per run.
"""

from __future__ import annotations

import concurrent.futures
import io
import itertools
import logging
import os
import socket
import struct
import time
from collections.abc import Mapping

import numpy as np
from PIL import Image
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
from tensorboard.plugins.image import metadata as image_metadata
from tensorboard.plugins.scalar import metadata as scalar_metadata

log = logging.getLogger(__name__)

_SERIAL = itertools.count()  # two writers of one process in the same second get two files
# One background thread for every writer of the process: writes leave in call order.
_BACKGROUND = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="xray_flax.summary")


def event_file_name(now: float | None = None) -> str:
    """events.out.tfevents.<seconds>.<host>.<pid>.<n>.v2, as TensorFlow's writer names it."""
    seconds = int(time.time() if now is None else now)
    return f"events.out.tfevents.{seconds}.{socket.gethostname()}.{os.getpid()}.{next(_SERIAL)}.v2"


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)  # Castagnoli, reflected
        table.append(crc)
    return table


_CRC32C = _crc32c_table()


def masked_crc32c(data: bytes) -> int:
    """The TFRecord checksum: CRC-32C of `data`, rotated and offset ("masked")."""
    crc, table = 0xFFFFFFFF, _CRC32C
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def record(data: bytes) -> bytes:
    """One TFRecord: length, its checksum, the data, its checksum (little-endian)."""
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", masked_crc32c(data))


def to_uint8(images) -> np.ndarray:
    """Pixels as `tf.image.convert_image_dtype(x, tf.uint8, saturate=True)` makes them: floats
    (any width, bfloat16 too, computed in float32) clipped to [0, 1] and scaled by 255.5, then
    truncated; integers clipped to [0, 255]."""
    images = np.asarray(images)
    if not np.issubdtype(images.dtype, np.integer):  # float16/32/64, bfloat16, bool
        return (np.clip(images.astype(np.float32), 0.0, 1.0) * np.float32(255.5)).astype(np.uint8)
    return np.clip(images, 0, 255).astype(np.uint8)


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG")
    return buffer.getvalue()


def scalar_value(tag: str, value) -> summary_pb2.Summary.Value:
    """What tf.summary.scalar stores: a float32 scalar tensor (its four bytes) and the scalars
    plugin's metadata."""
    tensor = tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(),
        tensor_content=np.float32(value).tobytes(),
    )
    metadata = scalar_metadata.create_summary_metadata(display_name="", description="")
    return summary_pb2.Summary.Value(tag=tag, tensor=tensor, metadata=metadata)


def _check_image_shape(tag: str, shape: tuple[int, ...]) -> None:
    if len(shape) not in (3, 4) or shape[-1] not in (1, 2, 3, 4):
        raise ValueError(f"image summary {tag!r}: shape {shape}, expected [n, H, W, C] or [H, W, C] with C in 1-4")


def image_value(tag: str, images) -> summary_pb2.Summary.Value:
    """What tf.summary.image stores: a string tensor [width, height, PNG of each image] and the
    images plugin's metadata. `images`: [n, H, W, C] or [H, W, C], C in 1 (grey), 2, 3 (RGB), 4;
    floats in [0, 1] (`to_uint8`)."""
    _check_image_shape(tag, np.shape(images))
    batch = to_uint8(images)
    if batch.ndim == 3:
        batch = batch[None]
    height, width = batch.shape[1:3]
    strings = [str(width).encode(), str(height).encode(), *(_png(image) for image in batch)]
    tensor = tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(strings))]),
        string_val=strings,
    )
    metadata = image_metadata.create_summary_metadata(display_name="", description="")
    metadata.data_class = summary_pb2.DATA_CLASS_BLOB_SEQUENCE
    return summary_pb2.Summary.Value(tag=tag, tensor=tensor, metadata=metadata)


class LoggingWriter:
    """Logs the scalars, writes no file: processes other than 0 (clu's writer interface)."""

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        log.info("[%d] %s", step, ", ".join(f"{k}={float(v):.6g}" for k, v in scalars.items()))

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        del step, images

    def write_hparams(self, hparams: Mapping[str, bool | int | float | str]) -> None:
        del hparams

    def flush(self) -> None:
        """Nothing to do."""

    def close(self) -> None:
        """Nothing to do."""


class EventFileWriter(LoggingWriter):
    """Scalars and images into one TensorBoard event file under `logdir` (scalars logged too)."""

    def __init__(self, logdir: str):
        os.makedirs(logdir, exist_ok=True)
        self.path = os.path.join(logdir, event_file_name())
        self._pending: list[concurrent.futures.Future] = []
        self._failed = False
        self._submit(lambda: [event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")])

    def _submit(self, make_events) -> None:
        """Appends the events `make_events()` returns, in the background, in call order."""
        self._pending = [f for f in self._pending if not f.done()]
        self._pending.append(_BACKGROUND.submit(self._append, make_events))

    def _append(self, make_events) -> None:
        try:
            data = b"".join(record(event.SerializeToString()) for event in make_events())
            with open(self.path, "ab") as f:
                f.write(data)
        except Exception as e:  # noqa: BLE001 - the run goes on without its TensorBoard records
            if not self._failed:
                log.warning("TensorBoard summaries not written to %s: %s", self.path, e)
            self._failed = True

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        super().write_scalars(step, scalars)
        wall_time, values = time.time(), {tag: float(value) for tag, value in scalars.items()}
        self._submit(lambda: [_event(wall_time, step, scalar_value(t, v)) for t, v in values.items()])

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        wall_time, arrays = time.time(), {tag: np.array(value) for tag, value in images.items()}
        for tag, array in arrays.items():  # a wrong shape is a bug: raised here, not logged later
            _check_image_shape(tag, array.shape)
        self._submit(lambda: [_event(wall_time, step, image_value(t, a)) for t, a in arrays.items()])

    def write_hparams(self, hparams: Mapping[str, bool | int | float | str]) -> None:
        """The run's hyperparameters for TensorBoard's HParams dashboard, at step 0 (as
        `tensorboard.plugins.hparams.api.hparams` writes them); values bool, int, float or str."""
        # Imported here: tensorboard's hparams module loads its TensorFlow stub (0.3 s), and only
        # evaluate writes hyperparameters, once.
        from tensorboard.plugins.hparams import summary_v2 as hparams_summary  # noqa: PLC0415

        wall_time, proto = time.time(), hparams_summary.hparams_pb(dict(hparams))
        self._submit(lambda: [event_pb2.Event(wall_time=wall_time, step=0, summary=proto)])

    def flush(self) -> None:
        """Waits until every write so far is in the file."""
        pending, self._pending = self._pending, []
        concurrent.futures.wait(pending)

    def close(self) -> None:
        self.flush()


def _event(wall_time: float, step: int, value: summary_pb2.Summary.Value) -> event_pb2.Event:
    return event_pb2.Event(wall_time=wall_time, step=int(step), summary=summary_pb2.Summary(value=[value]))


def create_writer(workdir: str, just_logging: bool = False) -> LoggingWriter:
    """The loops' summary writer: an event file in `workdir`, or only logging (`just_logging`:
    every process but 0)."""
    return LoggingWriter() if just_logging else EventFileWriter(workdir)
