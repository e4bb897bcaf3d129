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
import tensorflow_datasets as tfds
from absl import app, flags

from xray_flax import errors, files
from xray_flax.data import config as data_config_lib
from xray_flax.data import pipeline, readers, tfds_records, tiling
from xray_flax.data.tfds_records import INDEX_FILE, VERSION


def _features(patch: int, channels: int):
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
        table = pipeline.split_tiles(self._splits, split, self._data_config)
        source = tiling.TileSource(self._splits.get(split), table, self._data_config)
        paths = [r.path for r in self._splits.get(split)]
        for i in range(len(source)):
            e = source[i]
            yield (
                i,
                {
                    "patch": tfds_records.encode_patch(e["image"]),
                    "label": e["label"],
                    "masked": np.float32(table.masked[i]),
                    "mask": (e["mask"] > 0).astype(np.uint8),
                    "scan_index": e["scan_index"],
                    "y": e["y"],
                    "x": e["x"],
                    "source": paths[int(e["scan_index"])],
                },
            )


def build_tfds(data_config, data_dir: str | None = None) -> str:
    """Writes the array_record dataset for `data_config` (its source must be a layout, not
    'tfds'); returns the dataset folder. Splits follow prepare_splits exactly."""
    if data_config.source == "tfds":
        raise errors.ConfigError("build_tfds converts a layout: set data_config.source to the layout")
    data_dir = os.path.expanduser(data_dir or data_config.tfds.data_dir)
    if not data_dir:
        raise errors.ConfigError("build_tfds needs data_dir (or config.data.tfds.data_dir)")
    splits = pipeline.prepare_splits(data_config, None)
    out = tfds_records.dataset_dir(data_config, data_dir)
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
    builder = XrayPatches(data_config=data_config, splits=splits, data_dir=data_dir, file_format="array_record")
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


def main(argv):
    del argv
    f = flags.FLAGS
    c = data_config_lib.defaults()
    c.source, c.root = f.source, f.root
    c.patch_size, c.stride = f.patch_size, f.stride or f.patch_size
    print(build_tfds(c, f.data_dir))


if __name__ == "__main__":
    flags.DEFINE_string("data_dir", None, "Where to write the dataset.", required=True)
    flags.DEFINE_string("source", "simulated", "Layout to convert.")
    flags.DEFINE_string("root", "", "Layout root folder.")
    flags.DEFINE_integer("patch_size", 64, "Patch size.")
    flags.DEFINE_integer("stride", 0, "Stride (0 = patch size).")
    app.run(main)
