"""TFDS/array_record round trip: the same tiles, pixels, labels and masks as direct reading."""

import json

import numpy as np
import pytest
from PIL import Image

from xray_flax.data import config as data_config_lib
from xray_flax.data import pipeline, readers

tfds_builder = pytest.importorskip("xray_flax.data.tfds_builder")
pytest.importorskip("tensorflow_datasets")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    c = data_config_lib.defaults()
    c.simulated.cache_dir = str(tmp_path_factory.mktemp("sim"))
    c.simulated.n_scans, c.simulated.height, c.simulated.width = 3, 224, 256
    c.simulated.paint_losses, c.simulated.white_spots, c.simulated.nails = 2, 2, 1
    c.patch_size, c.stride, c.border = 32, 24, "shift"  # overlapping tiles
    c.split_fractions = (1, 1, 1)
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    tfds_builder.build_tfds(c, data_dir)
    t = c.copy_and_resolve_references()
    t.source, t.tfds.data_dir = "tfds", data_dir
    return c, t


def test_round_trip_equals_direct_reading(built):
    direct_cfg, tfds_cfg = built
    direct = pipeline.prepare_splits(direct_cfg, None)
    stored = pipeline.prepare_splits(tfds_cfg, None)
    assert stored.tfds_dir and stored.to_json()["train"] == direct.to_json()["train"]
    for split in ("train", "val", "test"):
        assert pipeline.count_tiles(stored, split, tfds_cfg) == pipeline.count_tiles(direct, split, direct_cfg) > 0
        a = list(pipeline.iterate_eval_batches(direct, split, direct_cfg, batch_size=16))
        b = list(pipeline.iterate_eval_batches(stored, split, tfds_cfg, batch_size=16))
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert set(x) == set(y)
            for k in x:
                np.testing.assert_array_equal(x[k], y[k], err_msg=f"{split}/{k}")  # bit for bit (16-bit)
    # Training reads the same normal tiles in the same order.
    ta = pipeline.make_train_iterator(direct, direct_cfg, batch_size=4, seed=0)
    tb = pipeline.make_train_iterator(stored, tfds_cfg, batch_size=4, seed=0)
    for _ in range(5):
        x, y = next(ta), next(tb)
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def test_rebuild_with_other_tiling_is_refused(built):
    direct_cfg, tfds_cfg = built
    other = direct_cfg.copy_and_resolve_references()
    other.stride = 32
    with pytest.raises(readers.DataError, match="already here"):
        tfds_builder.build_tfds(other, tfds_cfg.tfds.data_dir)
    wrong = tfds_cfg.copy_and_resolve_references()
    wrong.patch_size = 64
    with pytest.raises(readers.DataError, match="patch_size"):
        pipeline.prepare_splits(wrong, None)


def test_missing_dataset_names_the_folder(tmp_path):
    c = data_config_lib.defaults()
    c.source, c.tfds.data_dir = "tfds", str(tmp_path)
    with pytest.raises(readers.LayoutError, match=str(tmp_path)):
        pipeline.prepare_splits(c, None)


def test_folder_layout_with_image_labels(tmp_path):
    for name in ("good/0", "good/1", "good/2", "good/3", "bad/0", "bad/1"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.fromarray(np.full((32, 32), 30000, np.uint16)).save(tmp_path / f"{name}.png")
    c = data_config_lib.defaults()
    c.source, c.root, c.patch_size, c.stride = "folder", str(tmp_path), 32, 32
    c.folder.normal_dir, c.folder.abnormal_dir = "good", "bad"
    c.background.rule = "none"
    c.split_fractions = (2, 1, 1)
    data_dir = str(tmp_path / "tfds")
    tfds_builder.build_tfds(c, data_dir)
    t = c.copy_and_resolve_references()
    t.source, t.tfds.data_dir = "tfds", data_dir
    stored = pipeline.prepare_splits(t, None)
    direct = pipeline.prepare_splits(c, None)
    assert {k: v for k, v in stored.to_json().items() if k != "tfds_dir"} == {
        k: v for k, v in direct.to_json().items() if k != "tfds_dir"
    }
    for split in ("val", "test"):
        # One tile per 32 px image: an abnormal image's tile is anomalous, without a mask.
        labels = np.concatenate([b["label"] for b in pipeline.iterate_eval_batches(stored, split, t, batch_size=4)])
        assert labels.tolist() == [r.image_label for r in stored.get(split)] and 1 in labels
    train = pipeline.make_train_iterator(stored, t, batch_size=2, seed=0)
    assert all((next(train)["label"] == 0).all() for _ in range(3))


def test_index_from_before_image_label_is_reused(tmp_path):
    (tmp_path / "images").mkdir()
    for i in range(3):
        Image.fromarray(np.full((32, 32), 30000, np.uint16)).save(tmp_path / f"images/{i}.png")
    c = data_config_lib.defaults()
    c.source, c.root, c.patch_size, c.stride = "folder", str(tmp_path / "images"), 32, 32
    c.background.rule = "none"
    c.split_fractions = (1, 1, 1)
    data_dir = str(tmp_path / "tfds")
    folder = tfds_builder.build_tfds(c, data_dir)
    # Rewrite the index as the builder wrote it before image_label replaced known_normal.
    index_path = tmp_path / "tfds" / c.tfds.name / tfds_builder.VERSION / tfds_builder.INDEX_FILE
    index = json.loads(index_path.read_text())
    for n in pipeline.SPLIT_NAMES:
        for r in index["splits"][n]:
            r["known_normal"] = r.pop("image_label") == 0
    index_path.write_text(json.dumps(index))
    assert tfds_builder.build_tfds(c, data_dir) == folder  # the same data: not "already here"
    t = c.copy_and_resolve_references()
    t.source, t.tfds.data_dir = "tfds", data_dir
    splits = pipeline.prepare_splits(t, None)
    assert [r.image_label for n in pipeline.SPLIT_NAMES for r in splits.get(n)] == [0, 0, 0]
    # Other data still is.
    index["splits"]["train"][0]["known_normal"] = False
    index_path.write_text(json.dumps(index))
    with pytest.raises(readers.DataError, match="already here"):
        tfds_builder.build_tfds(c, data_dir)
