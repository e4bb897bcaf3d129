"""TFDS builder: any layout -> an array_record dataset of patches, read back through Grain.

    build_tfds(data_config, data_dir) -> dataset folder
        Tiles every split of `data_config` (source 'simulated' | 'scans' | 'mvtec' | 'folder')
        exactly as the direct pipeline would and stores each tile as one record:
          patch       uint16 [P, P, C]  normalised value * 65535, rounded
          label       int32             0 normal, 1 anomalous, -1 unknown
          masked      float32           masked fraction of the tile
          mask        uint8  [P, P, 1]  pixel mask (zeros where unknown)
          scan_index, y, x  int32       position in the split's scan list
          source      string            path of the scan the tile came from
        plus `xray_index.json` (scan records per split, tiling settings) and one
        `tiles_<split>.npz` (labels and positions) so training can select normal tiles
        without decoding patches.

    Then set config.data.source = 'tfds', config.data.tfds.data_dir = <data_dir>; the same
    make_train_iterator / iterate_eval_batches read the records (random access, any number
    of Grain workers, no image decoding).

Storing normalised values as uint16 is lossless for 16-bit scans under 'bit_depth'
normalisation (the stored integer is the scanner's own sample) and quantises to 1/65535
otherwise. When it pays off: see docs/data.md (many large PNGs, slow or remote storage,
expensive background rules, repeated runs with fixed tiling). CLI:

    python -m xray_flax.data.tfds_builder --data_dir=/data/xray_tfds --source=scans --root=/scans
"""

from __future__ import annotations

import json
import os

import numpy as np

from xray_flax import files
from xray_flax.data import readers, tiling

VERSION = "1.0.0"
INDEX_FILE = "xray_index.json"
STORED_SCALE = 65535.0
_CHECKED_FIELDS = ("patch_size", "channels")


def _features(patch: int, channels: int):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    t = tfds.features.Tensor
    return tfds.features.FeaturesDict(
        {
            "patch": t(shape=(patch, patch, channels), dtype=np.uint16),
            "label": t(shape=(), dtype=np.int32),
            "masked": t(shape=(), dtype=np.float32),
            "mask": t(shape=(patch, patch, 1), dtype=np.uint8),
            "scan_index": t(shape=(), dtype=np.int32),
            "y": t(shape=(), dtype=np.int32),
            "x": t(shape=(), dtype=np.int32),
            "source": t(shape=(), dtype=np.str_),
        }
    )


def encode_patch(image: np.ndarray) -> np.ndarray:
    """float32 [0, 1] -> uint16 (exact inverse of `decode_patch` for 16-bit samples)."""
    return np.round(np.clip(image, 0.0, 1.0) * STORED_SCALE).astype(np.uint16)


def decode_patch(patch: np.ndarray) -> np.ndarray:
    # Same arithmetic as readers.normalize on a 16-bit sample, so 16-bit sources round-trip
    # bit for bit.
    return readers.normalize(patch, 0.0, STORED_SCALE)


def _make_builder_class():
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    class XrayPatches(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        """Patches of X-ray scans with labels, masks and provenance (see module docstring)."""

        VERSION = tfds.core.Version(VERSION)
        # Nothing is downloaded; a plain attribute also keeps TFDS from looking for a checksums
        # file next to this module (which needs the optional importlib_resources package).
        url_infos = {}
        RELEASE_NOTES = {str(VERSION): "Patches, labels, masks, source scan and coordinates."}

        def __init__(self, *, data_config, splits, **kwargs):
            self._data_config = data_config
            self._splits = splits
            self.name = str(data_config.tfds.name)
            super().__init__(**kwargs)

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description="Patches cut from X-ray scans by xray_flax.data.",
                features=_features(int(self._data_config.patch_size), int(self._data_config.channels)),
                disable_shuffling=True,  # records keep the direct pipeline's order
            )

        def _split_generators(self, dl_manager):
            del dl_manager
            return {name: self._generate_examples(name) for name in ("train", "val", "test") if self._splits.get(name)}

        def _generate_examples(self, split):
            from xray_flax.data import pipeline  # pylint: disable=g-import-not-at-top

            table = pipeline.split_tiles(self._splits, split, self._data_config)
            source = tiling.TileSource(self._splits.get(split), table, self._data_config)
            paths = [r.path for r in self._splits.get(split)]
            for i in range(len(source)):
                e = source[i]
                yield (
                    i,
                    {
                        "patch": encode_patch(e["image"]),
                        "label": e["label"],
                        "masked": np.float32(table.masked[i]),
                        "mask": (e["mask"] > 0).astype(np.uint8),
                        "scan_index": e["scan_index"],
                        "y": e["y"],
                        "x": e["x"],
                        "source": paths[int(e["scan_index"])],
                    },
                )

    return XrayPatches


def dataset_dir(data_config, data_dir: str | None = None) -> str:
    data_dir = os.path.expanduser(data_dir or data_config.tfds.data_dir)
    return os.path.join(data_dir, str(data_config.tfds.name), VERSION)


def build_tfds(data_config, data_dir: str | None = None) -> str:
    """Writes the array_record dataset for `data_config` (its source must be a layout, not
    'tfds'); returns the dataset folder. Splits follow prepare_splits exactly."""
    from xray_flax.data import pipeline  # pylint: disable=g-import-not-at-top

    if data_config.source == "tfds":
        raise ValueError("build_tfds converts a layout: set data_config.source to the layout")
    data_dir = os.path.expanduser(data_dir or data_config.tfds.data_dir)
    if not data_dir:
        raise ValueError("build_tfds needs data_dir (or config.data.tfds.data_dir)")
    splits = pipeline.prepare_splits(data_config, None)
    out = dataset_dir(data_config, data_dir)
    tiling_settings = {
        k: data_config[k]
        for k in ("patch_size", "stride", "border", "channels", "normalization", "min_anomalous_fraction")
    }
    tiling_settings["background"] = data_config.background.to_dict()
    index = {"splits": splits.to_json(), "tiling": tiling_settings}
    index = json.loads(json.dumps(index, default=list))
    index_path = os.path.join(out, INDEX_FILE)
    if os.path.isfile(index_path):
        # TFDS silently reuses a prepared dataset; refuse one built from other data or tiling.
        with open(index_path) as f:
            stored = json.load(f)
        # Through Splits, so that an index written before image_label (known_normal) compares equal.
        stored["splits"] = json.loads(json.dumps(pipeline.Splits.from_json(stored["splits"]).to_json()))
        if stored != index:
            raise readers.DataError(
                out,
                "a dataset built from other splits or tiling settings is "
                "already here; delete it or set config.data.tfds.name",
            )
        return out
    builder = _make_builder_class()(
        data_config=data_config, splits=splits, data_dir=data_dir, file_format="array_record"
    )
    builder.download_and_prepare()
    for name in ("train", "val", "test"):
        if splits.get(name):
            t = pipeline.split_tiles(splits, name, data_config)
            np.savez(
                os.path.join(out, f"tiles_{name}.npz"),
                scan_index=t.scan_index,
                y=t.y,
                x=t.x,
                label=t.label,
                masked=t.masked,
            )
    # Written last, atomically: a whole index marks the dataset complete.
    files.write_text_atomic(index_path, json.dumps(index, indent=1))
    return out


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
    from xray_flax.data import pipeline  # pylint: disable=g-import-not-at-top

    folder, index = _read_index(data_config)
    s = pipeline.Splits.from_json(index["splits"])
    return pipeline.Splits(s.train, s.val, s.test, root=s.root, tfds_dir=folder)


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
            import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

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


def main(argv):
    del argv
    from absl import flags  # pylint: disable=g-import-not-at-top

    from xray_flax.data import config as data_config_lib  # pylint: disable=g-import-not-at-top

    f = flags.FLAGS
    c = data_config_lib.defaults()
    c.source, c.root = f.source, f.root
    c.patch_size, c.stride = f.patch_size, f.stride or f.patch_size
    print(build_tfds(c, f.data_dir))


if __name__ == "__main__":
    from absl import (
        app,  # pylint: disable=g-import-not-at-top
        flags,  # pylint: disable=g-import-not-at-top
    )

    flags.DEFINE_string("data_dir", None, "Where to write the dataset.", required=True)
    flags.DEFINE_string("source", "simulated", "Layout to convert.")
    flags.DEFINE_string("root", "", "Layout root folder.")
    flags.DEFINE_integer("patch_size", 64, "Patch size.")
    flags.DEFINE_integer("stride", 0, "Stride (0 = patch size).")
    app.run(main)
