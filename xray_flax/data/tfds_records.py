"""The array_record patch dataset that tfds_builder writes: its storage format and a Grain
source that reads it back (config.data.source = 'tfds'; see tfds_builder.py for the records).

Patches are stored as uint16 normalised value * STORED_SCALE: lossless for 16-bit scans under
'bit_depth' normalisation, quantised to 1/65535 otherwise.
"""

from __future__ import annotations

import json
import os

import numpy as np

from xray_flax.data import readers, tiling
from xray_flax.data.layouts import Splits

VERSION = "1.0.0"
INDEX_FILE = "xray_index.json"
STORED_SCALE = 65535.0
_CHECKED_FIELDS = ("patch_size", "channels")


def encode_patch(image: np.ndarray) -> np.ndarray:
    """float32 [0, 1] -> uint16 (exact inverse of `decode_patch` for 16-bit samples)."""
    return np.round(np.clip(image, 0.0, 1.0) * STORED_SCALE).astype(np.uint16)


def decode_patch(patch: np.ndarray) -> np.ndarray:
    # Same arithmetic as readers.normalize on a 16-bit sample, so 16-bit sources round-trip
    # bit for bit.
    return readers.normalize(patch, 0.0, STORED_SCALE)


def dataset_dir(data_config, data_dir: str | None = None) -> str:
    data_dir = os.path.expanduser(data_dir or data_config.tfds.data_dir)
    return os.path.join(data_dir, str(data_config.tfds.name), VERSION)


# ------------------------------------------------------------------------------------------
# Reading back.


def _read_index(data_config) -> tuple[str, dict]:
    folder = dataset_dir(data_config)
    path = os.path.join(folder, INDEX_FILE)
    if not os.path.isfile(path):
        raise readers.LayoutError(
            folder, "no xray_flax TFDS dataset here (run xray_flax.data.tfds_builder.build_tfds first)"
        )
    with open(path) as f:
        index = json.load(f)
    for k in _CHECKED_FIELDS:
        if index["tiling"][k] != data_config[k]:
            raise readers.DataError(
                path,
                f"dataset was built with {k}={index['tiling'][k]} but the config asks for {data_config[k]}; rebuild it",
            )
    return folder, index


def load_splits(data_config):
    """The Splits the dataset was built from (tfds_dir set)."""
    folder, index = _read_index(data_config)
    s = Splits.from_json(index["splits"])
    return Splits(s.train, s.val, s.test, root=s.root, tfds_dir=folder)


class PatchRecordSource:
    """Grain random-access source over (a selection of) one split's records, decoded into the
    pipeline's element dict. Opens the array_record files lazily in each process."""

    def __init__(self, folder: str, split: str, rows: np.ndarray):
        self._folder = folder
        self._split = split
        self._rows = np.asarray(rows, np.int64)
        self._records = None

    def __getstate__(self):
        return {**self.__dict__, "_records": None}

    def __len__(self):
        return len(self._rows)

    def __repr__(self):
        return f"PatchRecordSource({self._folder}, {self._split}, {len(self)} records)"

    def _source(self):
        if self._records is None:
            # Imported late: tensorflow_datasets takes ~0.4 s to import, only source='tfds' needs it,
            # and every run imports this module (through pipeline).
            import tensorflow_datasets as tfds  # noqa: PLC0415

            self._records = tfds.builder_from_directory(self._folder).as_data_source(split=self._split)
        return self._records

    def __getitem__(self, index: int) -> dict:
        r = self._source()[int(self._rows[index])]
        return {
            "image": decode_patch(r["patch"]),
            "label": np.int32(r["label"]),
            "mask": r["mask"].astype(np.float32),
            "scan_index": np.int32(r["scan_index"]),
            "y": np.int32(r["y"]),
            "x": np.int32(r["x"]),
        }


def patch_source(splits, split: str, data_config, train: bool = False) -> PatchRecordSource:
    """Records of `split`; with train=True only the tiles training may use (same rule as the
    direct pipeline: tiling.training_rows)."""
    path = os.path.join(splits.tfds_dir, f"tiles_{split}.npz")
    if not os.path.isfile(path):
        return PatchRecordSource(splits.tfds_dir, split, np.zeros((0,), np.int64))
    with np.load(path) as z:
        table = tiling.TileTable(z["scan_index"], z["y"], z["x"], z["label"], z["masked"])
    rows = np.arange(len(table))
    if train:
        rows = rows[tiling.training_rows(table, data_config)]
    return PatchRecordSource(splits.tfds_dir, split, rows)
