"""Splits and Grain pipelines: what training and evaluation consume.

prepare_splits(data_config, workdir) -> Splits        (by image, deterministic, splits.json)
make_train_iterator(splits, data_config, *, batch_size, seed, process_index, process_count)
    -> grain DatasetIterator of {'image', 'label', 'mask'}; infinite, normal tiles only,
       reshuffled every epoch; with several processes, each yields its contiguous slice of
       every global batch (the global batches do not depend on the process count);
       checkpointable (get_state / set_state, grain.checkpoint.CheckpointSave /
       CheckpointRestore in an orbax Composite).
iterate_eval_batches(splits, split, data_config, *, batch_size) -> Iterator[dict]
    all tiles of 'val' / 'test' in a fixed order, with 'scan_index', 'y', 'x'.
count_tiles(splits, split, data_config) -> int
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator

import grain
import numpy as np
from absl import flags

from xray_flax import errors, files
from xray_flax.data import config as data_config_lib
from xray_flax.data import layouts, readers, simulate, tfds_records, tiling
from xray_flax.data.layouts import SPLIT_NAMES, Splits

TRAIN_KEYS = ("image", "label", "mask")


def _val_test(records, fractions, seed):
    """(val, test): `records` split by image by the val:test ratio of `fractions` (train,
    val, test); all to test, in their order, when the val fraction is 0."""
    _, f_val, f_test = fractions
    if f_val > 0:
        return layouts.split_by_image(records, (f_val, f_test), seed)
    return [], list(records)


def _folder_dirs(data_config) -> dict:
    """`config.data.folder` with every key (the config.json of a run from before the section
    has none)."""
    dirs = data_config_lib.defaults().folder.to_dict()
    dirs.update(data_config.get("folder", {}))
    return dirs


def _folder_records(data_config, root: str, fractions, seed):
    """(train, val, test) of the folder layout with `config.data.folder` dirs (see config.py)."""
    dirs = _folder_dirs(data_config)

    def resolve(path: str) -> str:
        path = os.path.expanduser(path)
        return os.path.join(root, path) if path and root and not os.path.isabs(path) else path

    normal, normal_test, abnormal = layouts.folder_layout(
        resolve(dirs["normal_dir"]),
        abnormal_dir=resolve(dirs["abnormal_dir"]),
        normal_test_dir=resolve(dirs["normal_test_dir"]),
        mask_dir=resolve(dirs["mask_dir"]),
        mask_suffix=data_config.mask_suffix,
    )
    if dirs["normal_test_dir"]:
        # The test normals are given: normal_dir only feeds train and val, by their ratio.
        train, val = layouts.split_by_image(normal, fractions[:2], seed)
        test = normal_test
    else:
        train, val, test = layouts.split_by_image(normal, fractions, seed)
    # Anomalous images never train.
    val_abnormal, test_abnormal = _val_test(abnormal, fractions, seed)
    return train, val + val_abnormal, test + test_abnormal


def _resolve_records(data_config):
    """(train, val, test) scan records and the root folder for the configured source."""
    source = data_config.source
    fractions, seed = tuple(data_config.split_fractions), int(data_config.split_seed)
    if source == "simulated":
        params = simulate.SimulationParams.from_config(data_config.simulated)
        root = simulate.ensure_simulated(params, data_config.simulated.cache_dir)
        records = layouts.scans_layout(root, mask_suffix="_mask")
        return (*layouts.split_by_image(records, fractions, seed), root)
    root = os.path.expanduser(data_config.root)
    if source == "folder" and _folder_dirs(data_config)["normal_dir"]:
        return (*_folder_records(data_config, root, fractions, seed), root)
    if not root:
        raise readers.LayoutError("<config.data.root>", f"source {source!r} needs config.data.root")
    if source == "scans":
        records = layouts.scans_layout(root, labels_csv=data_config.labels_csv, mask_suffix=data_config.mask_suffix)
        return (*layouts.split_by_image(records, fractions, seed), root)
    if source == "folder":
        if any(_folder_dirs(data_config).values()):
            raise readers.LayoutError(
                "<config.data.folder.normal_dir>", "the folder layout needs normal_dir when other folder dirs are set"
            )
        # Only a root: every image below it is normal (configs from before config.data.folder).
        normal, _, _ = layouts.folder_layout(root)
        return (*layouts.split_by_image(normal, fractions, seed), root)
    if source == "mvtec":
        train, test_pool = layouts.mvtec_layout(root, data_config.mask_suffix)
        # MVTec's own train/test partition is kept; its test images are split by image into
        # val and test with the val:test ratio of split_fractions.
        val, test = _val_test(test_pool, fractions, seed)
        return train, val, test, root
    raise errors.ConfigError(f"unknown data source {source!r} (config.data.source)")


def _stored_splits(path: str) -> dict | None:
    """An existing splits.json as Splits.to_json() writes it now (a file from before
    image_label, with known_normal, compares equal), or None when it is not one."""
    with open(path) as f:
        stored = json.load(f)
    try:
        return Splits.from_json(stored).to_json()
    except (KeyError, TypeError, ValueError):
        return None


def prepare_splits(data_config, workdir: str | None) -> Splits:
    """Resolves the layout, splits by image (deterministic in split_seed) and writes
    <workdir>/splits.json. For source='tfds' the splits are those the dataset was built with."""
    if data_config.source == "tfds":
        splits = tfds_records.load_splits(data_config)
    else:
        train, val, test, root = _resolve_records(data_config)
        splits = Splits(train, val, test, root=root)
    for name, fraction in zip(SPLIT_NAMES, tuple(data_config.split_fractions)):
        if fraction > 0 and not splits.get(name):
            raise readers.EmptySplitError(
                splits.root or "<data>",
                f"split {name!r} has no images (fractions "
                f"{tuple(data_config.split_fractions)}, "
                f"{sum(len(splits.get(n)) for n in SPLIT_NAMES)} images)",
            )
    names = {n: {r.path for r in splits.get(n)} for n in SPLIT_NAMES}
    assert not (names["train"] & names["val"] or names["train"] & names["test"] or names["val"] & names["test"])
    anomalous = [r.path for r in splits.train if r.image_label == 1]
    if anomalous:
        # DRAEM learns "normal" from the train split. The layouts never put anomalous images
        # there; their unknown (-1) tiles would otherwise be trained on with train_on_unlabelled.
        raise readers.LayoutError(anomalous[0], "an anomalous image (image_label 1) is in the train split")
    if workdir:
        os.makedirs(workdir, exist_ok=True)
        path = os.path.join(workdir, "splits.json")
        new = splits.to_json()
        if os.path.isfile(path) and _stored_splits(path) != new:
            logging.warning("%s differs from the split computed now (data or config changed); overwriting it", path)
        # Every process of a multi-host run writes the same file.
        files.write_text_atomic(path, json.dumps(new, indent=1))
    return splits


# ------------------------------------------------------------------------------------------
# Tile tables are cached per (split contents, tiling config) within a process: building one
# reads every tile once for the background rule.

_TABLE_CACHE: dict = {}

_TABLE_FIELDS = ("patch_size", "stride", "border", "min_anomalous_fraction", "channels", "normalization", "rgb_to_gray")


def _table_key(records, data_config):
    cfg = tuple(str(data_config[k]) for k in _TABLE_FIELDS)
    cfg += (str(tuple(data_config.percentiles)), str(data_config.background.to_dict()))
    files = tuple(
        (r.path, r.mask_path, r.patch_labels, r.image_label, os.path.getmtime(r.path) if os.path.exists(r.path) else 0)
        for r in records
    )
    return (cfg, files)


def split_tiles(splits: Splits, split: str, data_config) -> tiling.TileTable:
    """The tile table of one split (every tile, all labels)."""
    records = splits.get(split)
    key = _table_key(records, data_config)
    if key not in _TABLE_CACHE:
        _TABLE_CACHE[key] = tiling.build_tile_table(records, data_config)
    return _TABLE_CACHE[key]


def count_tiles(splits: Splits, split: str, data_config) -> int:
    """Number of tiles iterate_eval_batches yields for `split`."""
    if splits.tfds_dir:
        return len(tfds_records.patch_source(splits, split, data_config))
    return len(split_tiles(splits, split, data_config))


def _source(splits, split, data_config, train: bool):
    """Grain random-access source of tile dicts for `split` (training: clean normal tiles only)."""
    if splits.tfds_dir:
        return tfds_records.patch_source(splits, split, data_config, train=train)
    table = split_tiles(splits, split, data_config)
    if train:
        table = table.select(tiling.training_rows(table, data_config))
    return tiling.TileSource(splits.get(split), table, data_config)


def _train_example(element: dict) -> dict:
    return {k: element[k] for k in TRAIN_KEYS}


def _shuffle_seed(data_config, seed: int) -> int:
    # Mixes the data seed and the run seed into the 32-bit seed Grain's shuffle wants.
    return int(np.random.SeedSequence([int(data_config.shuffle_seed), int(seed)]).generate_state(1)[0])


def _ensure_absl_flags_parsed():
    """Grain's mp_prefetch reads absl flags; outside absl.app.run they are unparsed."""
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _training_source(splits: Splits, data_config):
    """The clean normal tiles of the train split (what training and fitting read); an error
    naming the data when there are none."""
    source = _source(splits, "train", data_config, train=True)
    if len(source) == 0:
        if splits.tfds_dir:
            raise readers.EmptySplitError(splits.tfds_dir, "the train split has no normal tiles")
        raise readers.EmptySplitError(splits.root or "<data>", _no_training_tiles(splits, data_config))
    return source


def _background_rule(bg) -> str:
    if bg.rule == "dark_fraction":
        return (
            f"config.data.background.rule='dark_fraction': at least max_fraction={bg.max_fraction} of a tile's "
            f"pixels below threshold={bg.threshold}"
        )
    return f"config.data.background.rule={bg.rule!r}: a tile's standard deviation below threshold={bg.threshold}"


def _intensity_scales(records, data_config, listed: int = 3) -> str:
    """How the first `listed` scans' samples became [0, 1] values, and the values they take."""
    scales = []
    for record in records[:listed]:
        reader = readers.open_scan(record.path, **tiling.reader_options(data_config))
        try:
            scales.append(f"{os.path.basename(record.path)}: {reader.describe_scale()}")
        finally:
            reader.close()
    more = f"; and {len(records) - listed} more scans" if len(records) > listed else ""
    return "; ".join(scales) + more


def _no_training_tiles(splits: Splits, data_config) -> str:
    """Why the train split has no clean normal tile, in numbers, with the intensity scale the
    background rule saw and what to try."""
    records = splits.train
    table = split_tiles(splits, "train", data_config)
    patch, stride, border = int(data_config.patch_size), int(data_config.stride), data_config.border
    grid = 0
    for index, record in enumerate(records):
        if record.patch_labels is None:
            header = readers.read_header(record.path)
            grid += len(tiling.grid_positions(header.height, header.width, patch, stride, border)[0])
        else:
            grid += int(np.sum(table.scan_index == index))
    background = grid - len(table)
    anomalous = int(np.sum(tiling.anomalous_rows(table)))
    unknown = int(np.sum(table.label == tiling.LABEL_UNKNOWN))
    parts = [f"the train split has no clean normal tiles: of its {grid} tiles in {len(records)} scan(s)"]
    parts.append(f"{background} are background ({_background_rule(data_config.background)})")
    parts.append(f"{anomalous} anomalous or touch a mask")
    if not data_config.train_on_unlabelled:
        parts.append(f"{unknown} unlabelled (config.data.train_on_unlabelled=False)")
    message = ", ".join(parts)
    if background:
        message += (
            f". Intensity scale (config.data.normalization={data_config.normalization!r}): "
            f"{_intensity_scales(records, data_config)}. Try --config.data.normalization=percentile, a lower "
            f"--config.data.background.threshold, or --config.data.background.rule=none"
        )
    return message


def make_train_dataset(
    splits: Splits, data_config, *, batch_size: int, seed: int, process_index: int = 0, process_count: int = 1
) -> grain.IterDataset:
    """The training IterDataset (see make_train_iterator)."""
    source = _training_source(splits, data_config)
    if process_index not in range(process_count):
        raise ValueError(f"process_index={process_index} is not in range(process_count={process_count})")
    # Every process shuffles the same global sequence of tiles (same seed) and cuts it into
    # chunks of its per-process batch; global batch g is chunks g*P .. g*P+P-1, and process p
    # reads only chunk g*P+p. make_array_from_process_local_data concatenates the chunks in
    # process order, so the global batch is the same for any number of processes (1 process
    # with batch B sees exactly what P processes with B/P each see together), so runs on any
    # number of hosts are comparable. Data must be readable by every host (a shared disk).
    # Slicing a lazy MapDataset only selects indices: no process reads another's tiles.
    ds = grain.MapDataset.source(source)
    ds = ds.shuffle(seed=_shuffle_seed(data_config, seed)).repeat()  # new order every epoch
    ds = ds.map(_train_example).batch(batch_size, drop_remainder=True)
    if process_count > 1:
        ds = ds[process_index::process_count]
    return _to_iter_dataset(ds, data_config)


def _to_iter_dataset(ds, data_config):
    """Reading threads and prefetch, and worker processes when config.workers > 0."""
    read = grain.ReadOptions(
        num_threads=max(int(data_config.read_threads), 1), prefetch_buffer_size=max(int(data_config.prefetch), 1)
    )
    it_ds = ds.to_iter_dataset(read)
    if int(data_config.workers) > 0:
        _ensure_absl_flags_parsed()
        it_ds = it_ds.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=int(data_config.workers), per_worker_buffer_size=max(int(data_config.prefetch), 1)
            )
        )
    return it_ds


def make_train_iterator(
    splits: Splits, data_config, *, batch_size: int, seed: int, process_index: int = 0, process_count: int = 1
):
    """Infinite iterator of training batches {'image' [b,P,P,C], 'label' [b], 'mask' [b,P,P,1]}
    from normal tiles of the train split. A grain DatasetIterator: get_state()/set_state(),
    and grain.checkpoint.CheckpointSave(it) / CheckpointRestore(it) inside orbax."""
    return iter(
        make_train_dataset(
            splits,
            data_config,
            batch_size=batch_size,
            seed=seed,
            process_index=process_index,
            process_count=process_count,
        )
    )


def iterate_eval_batches(splits: Splits, split: str, data_config, *, batch_size: int) -> Iterator[dict]:
    """All tiles of `split` in a fixed order (scan, then row-major), batched; the last batch may
    be smaller. Keys: image, label, mask, scan_index, y, x."""
    source = _source(splits, split, data_config, train=False)
    if len(source) == 0:
        return iter(())
    ds = grain.MapDataset.source(source).batch(batch_size, drop_remainder=False)
    return iter(_to_iter_dataset(ds, data_config))


# ------------------------------------------------------------------------------------------
# One finite pass over the training tiles (fit-kind detectors).


def count_training_tiles(splits: Splits, data_config) -> int:
    """Clean normal tiles of the train split (what training and fitting see)."""
    return len(_source(splits, "train", data_config, train=True))


class _PaddedTiles:
    """The training tiles, then zero images with valid = 0 up to a whole number of global batches."""

    def __init__(self, source, total: int, image_shape: tuple[int, ...]):
        self.source, self.n, self.total, self.image_shape = source, len(source), total, image_shape

    def __len__(self):
        return self.total

    def __getitem__(self, index: int) -> dict:
        if index < self.n:
            return {"image": self.source[index]["image"], "valid": np.float32(1.0)}
        return {"image": np.zeros(self.image_shape, np.float32), "valid": np.float32(0.0)}


def iterate_fit_batches(
    splits: Splits,
    data_config,
    *,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    start_batch: int = 0,
) -> Iterator[dict]:
    """Every clean normal training tile once, in a fixed order, as {'image', 'valid'} batches.

    Every batch has `batch_size` rows per process (one compilation): the last global batch is
    padded with zero images whose `valid` is 0. Process p of P takes the p-th contiguous chunk
    of every global batch, as the train iterator does, so all processes see the same number of
    batches and the global batches do not depend on P. `start_batch` skips that many global
    batches without reading them (a resumed fit).
    """
    source = _training_source(splits, data_config)
    shape = (data_config.patch_size, data_config.patch_size, data_config.channels)
    global_batch = batch_size * process_count
    total = -(-len(source) // global_batch) * global_batch
    ds = grain.MapDataset.source(_PaddedTiles(source, total, shape)).batch(batch_size, drop_remainder=True)
    if process_count > 1:
        ds = ds[process_index::process_count]
    if start_batch:
        ds = ds[int(start_batch) :]
    return iter(_to_iter_dataset(ds, data_config))
