"""Layouts, splits, the Grain training iterator (order, restore, shards, workers) and
evaluation batches."""

import json
import os

import grain
import numpy as np
import pytest
from PIL import Image

from xray_flax.data import config as data_config_lib
from xray_flax.data import layouts, pipeline, readers, tiling


def small_sim_config(cache_dir, **overrides):
    c = data_config_lib.defaults()
    c.simulated.cache_dir = str(cache_dir)
    c.simulated.n_scans, c.simulated.height, c.simulated.width = 5, 288, 256
    c.simulated.paint_losses, c.simulated.white_spots = 2, 3
    c.simulated.nails, c.simulated.foreign_objects = 1, 1
    c.patch_size, c.stride = 32, 32
    for k, v in overrides.items():
        c[k] = v
    return c


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    c = small_sim_config(tmp_path_factory.mktemp("sim"))
    return c, pipeline.prepare_splits(c, str(tmp_path_factory.mktemp("work")))


def _take(it, n):
    return [next(it) for _ in range(n)]


def _equal_batches(a, b):
    return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x) and len(a) == len(b)


# ------------------------------------------------------------------------------------------
# Splits.


def test_splits_are_by_image_disjoint_deterministic_and_written(sim, tmp_path):
    c, splits = sim
    paths = [set(r.path for r in splits.get(n)) for n in ("train", "val", "test")]
    assert all(paths) and not (paths[0] & paths[1] or paths[0] & paths[2] or paths[1] & paths[2])
    assert sum(map(len, paths)) == c.simulated.n_scans
    again = pipeline.prepare_splits(c, str(tmp_path))
    assert again.to_json() == splits.to_json()
    with open(tmp_path / "splits.json") as f:
        assert pipeline.Splits.from_json(json.load(f)).to_json() == splits.to_json()
    c2 = c.copy_and_resolve_references()
    c2.split_seed = 5
    other = [pipeline.prepare_splits(c2, None).get(n) for n in ("train", "val", "test")]
    assert [r.path for r in other[0]] != [r.path for r in splits.train] or [r.path for r in other[1]] != [
        r.path for r in splits.val
    ]


def test_split_counts():
    assert layouts.split_counts(8, (0.6, 0.2, 0.2)) == [5, 2, 1]
    assert layouts.split_counts(3, (0.9, 0.05, 0.05)) == [1, 1, 1]
    assert sum(layouts.split_counts(31, (0.7, 0.15, 0.15))) == 31


def test_empty_split_raises(tmp_path):
    for i in range(2):
        Image.fromarray(np.full((40, 40), 30000, np.uint16)).save(tmp_path / f"s{i}.png")
    c = data_config_lib.defaults()
    c.source, c.root = "folder", str(tmp_path)
    with pytest.raises(readers.EmptySplitError, match=str(tmp_path)):
        pipeline.prepare_splits(c, None)


def test_no_image_appears_in_two_splits_for_every_seed(sim):
    c, _ = sim
    records = layouts.scans_layout(os.path.dirname(sim[1].train[0].path))
    for seed in range(20):
        parts = layouts.split_by_image(records, (0.6, 0.2, 0.2), seed)
        names = [r.path for p in parts for r in p]
        assert len(names) == len(set(names)) == len(records)


# ------------------------------------------------------------------------------------------
# Layouts.


def _scan(path, h=64, w=96, value=30000):
    Image.fromarray(np.full((h, w), value, np.uint16)).save(path)


def test_scans_layout_with_csv_labels(tmp_path):
    for name in ("a", "b", "c"):
        _scan(tmp_path / f"{name}.png")
    Image.fromarray(np.zeros((64, 96), np.uint8)).save(tmp_path / "a_mask.png")
    (tmp_path / "labels.csv").write_text("image,x,y,label\na.png,0,0,1\na.png,32,32,0\nb.png,64,0,1\n")
    recs = {os.path.basename(r.path): r for r in layouts.scans_layout(str(tmp_path))}
    assert set(recs) == {"a.png", "b.png", "c.png"}
    assert recs["a.png"].mask_path.endswith("a_mask.png") and recs["b.png"].mask_path is None
    assert recs["a.png"].patch_labels == ((0, 0, 1), (32, 32, 0))
    c = data_config_lib.defaults()
    c.patch_size, c.stride = 32, 32
    t = tiling.scan_tiles(recs["a.png"], 0, c)
    assert list(zip(t.x, t.y, t.label)) == [(0, 0, 1), (32, 32, 0)]
    t = tiling.scan_tiles(recs["c.png"], 2, c)  # no labels at all: unknown
    assert len(t) == 6 and (t.label == -1).all()


def test_csv_row_outside_its_image(tmp_path):
    _scan(tmp_path / "a.png")
    (tmp_path / "labels.csv").write_text("image,x,y,label\na.png,80,0,1\n")
    c = data_config_lib.defaults()
    c.patch_size = 32
    rec = layouts.scans_layout(str(tmp_path))[0]
    with pytest.raises(readers.CsvLabelError, match="a.png"):
        tiling.scan_tiles(rec, 0, c)
    (tmp_path / "labels.csv").write_text("image,x,y,label\nzzz.png,0,0,1\n")
    with pytest.raises(readers.CsvLabelError, match="labels.csv"):
        layouts.scans_layout(str(tmp_path))
    (tmp_path / "labels.csv").write_text("image,x,y\na.png,0,0\n")
    with pytest.raises(readers.CsvLabelError, match="labels.csv"):
        layouts.scans_layout(str(tmp_path))


def test_wrong_size_mask_in_a_layout_names_the_mask(tmp_path):
    _scan(tmp_path / "a.png")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "a_mask.png")
    c = data_config_lib.defaults()
    with pytest.raises(readers.MaskShapeError, match="a_mask.png"):
        tiling.scan_tiles(layouts.scans_layout(str(tmp_path))[0], 0, c)


def test_mvtec_layout(tmp_path):
    root = tmp_path / "bottle"
    for d in ("train/good", "test/good", "test/crack", "ground_truth/crack"):
        (root / d).mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((64, 64, 3), 120, np.uint8)).save(root / f"train/good/{i:03d}.png")
    for i in range(2):
        Image.fromarray(np.full((64, 64, 3), 120, np.uint8)).save(root / f"test/good/{i:03d}.png")
        Image.fromarray(np.full((64, 64, 3), 120, np.uint8)).save(root / f"test/crack/{i:03d}.png")
        m = np.zeros((64, 64), np.uint8)
        m[:20, :20] = 255
        Image.fromarray(m).save(root / f"ground_truth/crack/{i:03d}_mask.png")
    c = data_config_lib.defaults()
    c.source, c.root, c.patch_size, c.stride = "mvtec", str(root), 32, 32
    c.background.rule = "none"
    s = pipeline.prepare_splits(c, None)
    assert len(s.train) == 3 and all("train/good" in r.path for r in s.train)
    assert len(s.val) + len(s.test) == 4 and len(s.val) == 2
    tables = [pipeline.split_tiles(s, n, c) for n in ("val", "test")]
    labels = np.concatenate([t.label for t in tables])
    assert set(labels.tolist()) <= {0, 1} and (labels == 1).sum() == 2  # one tile per crack image
    os.remove(root / "ground_truth/crack/001_mask.png")
    with pytest.raises(readers.LayoutError, match="001.png"):
        pipeline.prepare_splits(c, None)


# ------------------------------------------------------------------------------------------
# Training iterator.


def test_train_batches_are_normal_16bit_and_shaped(sim):
    c, splits = sim
    it = pipeline.make_train_iterator(splits, c, batch_size=6, seed=0)
    for b in _take(it, 5):
        assert set(b) == {"image", "label", "mask"}
        assert b["image"].shape == (6, 32, 32, 1) and b["image"].dtype == np.float32
        assert b["mask"].shape == (6, 32, 32, 1) and b["label"].dtype == np.int32
        assert (b["label"] == 0).all() and b["mask"].max() == 0
        assert 0.0 <= b["image"].min() and b["image"].max() <= 1.0
        # 16-bit codes reach the batch untouched: every value is k/65535, and far more than
        # 256 distinct levels appear.
        codes = b["image"] * 65535
        np.testing.assert_allclose(codes, np.round(codes), atol=2e-3)
        assert len(np.unique(b["image"])) > 1000


def test_train_epochs_cover_all_normal_tiles_in_new_orders(sim):
    c, splits = sim
    table = pipeline.split_tiles(splits, "train", c)
    n = int(tiling.training_rows(table, c).sum())
    src = tiling.TileSource(splits.train, table.select(tiling.training_rows(table, c)), c)

    def key(img):
        return img.tobytes()

    index = {key(src[i]["image"]): i for i in range(n)}
    it = pipeline.make_train_iterator(splits, c, batch_size=1, seed=3)
    first = [index[key(next(it)["image"][0])] for _ in range(n)]
    second = [index[key(next(it)["image"][0])] for _ in range(n)]
    assert sorted(first) == sorted(second) == list(range(n))
    assert first != second  # reshuffled every epoch


def test_restored_iterator_continues_the_exact_sequence(sim):
    c, splits = sim
    it = pipeline.make_train_iterator(splits, c, batch_size=4, seed=1)
    _take(it, 7)
    state = it.get_state()
    expected = _take(it, 6)
    fresh = pipeline.make_train_iterator(splits, c, batch_size=4, seed=1)
    fresh.set_state(state)
    assert _equal_batches(expected, _take(fresh, 6))
    other_seed = pipeline.make_train_iterator(splits, c, batch_size=4, seed=2)
    other_seed.set_state(state)
    assert not _equal_batches(expected, _take(other_seed, 6))


def test_iterator_checkpoint_through_orbax(sim, tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    c, splits = sim
    it = pipeline.make_train_iterator(splits, c, batch_size=4, seed=0)
    _take(it, 3)
    with ocp.CheckpointManager(str(tmp_path / "ckpt")) as mngr:
        mngr.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
        expected = _take(it, 4)
        fresh = pipeline.make_train_iterator(splits, c, batch_size=4, seed=0)
        mngr.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
    assert _equal_batches(expected, _take(fresh, 4))


def test_process_shards_are_disjoint_and_complete(sim):
    c, splits = sim
    table = pipeline.split_tiles(splits, "train", c)
    n = int(tiling.training_rows(table, c).sum())
    seen = []
    for p in range(2):
        it = pipeline.make_train_iterator(splits, c, batch_size=1, seed=0, process_index=p, process_count=2)
        per_epoch = len(range(p, n, 2))
        seen.append({next(it)["image"][0].tobytes() for _ in range(per_epoch)})
        assert len(seen[-1]) == per_epoch
    assert not (seen[0] & seen[1]) and len(seen[0] | seen[1]) == n


def test_worker_processes_deliver_the_same_batches(sim):
    c, splits = sim
    in_process = _take(pipeline.make_train_iterator(splits, c, batch_size=4, seed=0), 5)
    c2 = c.copy_and_resolve_references()
    c2.workers = 2
    it = pipeline.make_train_iterator(splits, c2, batch_size=4, seed=0)
    first = _take(it, 3)
    state = it.get_state()
    rest = _take(it, 2)
    assert _equal_batches(in_process, first + rest)
    fresh = pipeline.make_train_iterator(splits, c2, batch_size=4, seed=0)
    fresh.set_state(state)
    assert _equal_batches(rest, _take(fresh, 2))


def test_empty_training_set_raises(tmp_path):
    _scan(tmp_path / "a.png", value=10)  # all background
    _scan(tmp_path / "b.png")
    _scan(tmp_path / "c.png")
    c = data_config_lib.defaults()
    c.source, c.root, c.patch_size, c.stride = "scans", str(tmp_path), 32, 32
    c.split_fractions = (1, 1, 1)
    c.split_seed = next(
        s
        for s in range(50)
        if "a.png" in layouts.split_by_image(layouts.scans_layout(str(tmp_path)), (1, 1, 1), s)[0][0].path
    )
    s = pipeline.prepare_splits(c, None)
    with pytest.raises(readers.EmptySplitError, match="train"):
        pipeline.make_train_iterator(s, c, batch_size=2, seed=0)


# ------------------------------------------------------------------------------------------
# Evaluation batches.


def test_eval_batches_cover_every_tile_in_a_fixed_order(sim):
    c, splits = sim
    for split in ("val", "test"):
        n = pipeline.count_tiles(splits, split, c)
        batches = list(pipeline.iterate_eval_batches(splits, split, c, batch_size=7))
        assert sum(len(b["label"]) for b in batches) == n
        assert all(len(b["label"]) == 7 for b in batches[:-1]) and 1 <= len(batches[-1]["label"]) <= 7
        table = pipeline.split_tiles(splits, split, c)
        got = np.concatenate([np.stack([b["scan_index"], b["y"], b["x"], b["label"]], 1) for b in batches])
        np.testing.assert_array_equal(got, np.stack([table.scan_index, table.y, table.x, table.label], 1))
        again = list(pipeline.iterate_eval_batches(splits, split, c, batch_size=7))
        assert _equal_batches(batches, again)
        # Eval sees anomalous tiles, and their masks match the labels.
        labels = np.concatenate([b["label"] for b in batches])
        masked = np.concatenate([b["mask"].mean(axis=(1, 2, 3)) for b in batches])
        assert (labels == 1).any() and (labels == 0).any()
        np.testing.assert_array_equal(labels == 1, masked >= c.min_anomalous_fraction - 1e-9)
        # Pixels agree with a direct read of the scan.
        b = batches[0]
        r = readers.open_scan(splits.get(split)[int(b["scan_index"][0])].path)
        np.testing.assert_array_equal(b["image"][0], r.read_region(int(b["y"][0]), int(b["x"][0]), 32, 32))
