"""Image-level labels: MVTec types without masks, the Folder layout, old splits.json files,
the tile labels that follow from an image's label, and scan folders searched recursively."""

import json
import logging
import os

import numpy as np
import pytest
from PIL import Image

from xray_flax import predict
from xray_flax.data import config as data_config_lib
from xray_flax.data import layouts, pipeline, readers, tiling


def _png(path, h=32, w=32, value=30000):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((h, w), value, np.uint16)).save(path)


def _mask(path, h=32, w=32, box=(slice(0, 8), slice(0, 8))):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    m = np.zeros((h, w), np.uint8)
    m[box] = 255
    Image.fromarray(m).save(path)


def _config(**overrides):
    c = data_config_lib.defaults()
    c.patch_size, c.stride = 32, 32
    c.background.rule = "none"
    for k, v in overrides.items():
        c[k] = v
    return c


def _labelled(records, image_label):
    return [r for r in records if r.image_label == image_label]


def _names(records):
    return sorted(os.path.relpath(r.path, os.path.dirname(os.path.dirname(r.path))) for r in records)


# ------------------------------------------------------------------------------------------
# MVTec.


@pytest.fixture
def mvtec(tmp_path):
    root = tmp_path / "bottle"
    for i in range(3):
        _png(root / f"train/good/{i:03d}.png")
    for i in range(2):
        _png(root / f"test/good/{i:03d}.png")
        _png(root / f"test/crack/{i:03d}.png")
        _mask(root / f"ground_truth/crack/{i:03d}_mask.png")
        _png(root / f"test/scratch/{i:03d}.png")  # no ground_truth/scratch: image labels only
    return root


def test_mvtec_type_without_ground_truth_gives_image_labels(mvtec):
    train, test = layouts.mvtec_layout(str(mvtec))
    assert [r.image_label for r in train] == [0, 0, 0] and all(r.mask_path is None for r in train)
    by_kind = {}
    for r in test:
        by_kind.setdefault(os.path.basename(os.path.dirname(r.path)), []).append(r)
    assert [r.image_label for r in by_kind["good"]] == [0, 0]
    assert [r.image_label for r in by_kind["crack"]] == [1, 1]
    assert all(r.mask_path.endswith(f"{i:03d}_mask.png") for i, r in enumerate(by_kind["crack"]))
    assert [(r.image_label, r.mask_path) for r in by_kind["scratch"]] == [(1, None), (1, None)]

    c = _config(source="mvtec", root=str(mvtec), split_fractions=(0.6, 0.0, 0.4))
    s = pipeline.prepare_splits(c, None)
    assert not s.val and len(s.test) == 6
    src = tiling.TileSource(s.test, pipeline.split_tiles(s, "test", c), c)
    elements = {os.path.relpath(s.test[int(e["scan_index"])].path, mvtec): e for e in (src[i] for i in range(len(src)))}
    # 32 px images are one 32 px tile each: the scratch image's label is its tile's label,
    # and its pixel mask is all zero (unknown, no mask), unlike the crack's.
    scratch = elements["test/scratch/000.png"]
    assert scratch["label"] == 1 and scratch["mask"].shape == (32, 32, 1) and not scratch["mask"].any()
    crack = elements["test/crack/000.png"]
    assert crack["label"] == 1 and crack["mask"][:8, :8].all() and not crack["mask"][8:].any()
    assert elements["test/good/000.png"]["label"] == 0


def test_mvtec_missing_mask_in_an_existing_ground_truth_folder_still_raises(mvtec):
    os.remove(mvtec / "ground_truth/crack/001_mask.png")
    with pytest.raises(readers.LayoutError, match="crack/001.png"):
        layouts.mvtec_layout(str(mvtec))


# ------------------------------------------------------------------------------------------
# Tile labels from image labels.


@pytest.mark.parametrize(
    "image_label,size,border,expected",
    [
        (1, 32, "shift", {1}),  # the image is one tile: that tile holds the defect
        (1, 20, "pad", {1}),  # smaller than a patch: one zero-padded tile
        (1, 64, "shift", {-1}),  # four tiles: which holds the defect is unknown
        (1, 40, "drop", {-1}),  # one whole tile, but it misses the dropped strip
        (0, 64, "shift", {0}),
        (None, 64, "shift", {-1}),
    ],
)
def test_tile_labels_of_an_image_without_mask(tmp_path, image_label, size, border, expected):
    _png(tmp_path / "a.png", size, size)
    rec = layouts.ScanRecord(str(tmp_path / "a.png"), image_label=image_label)
    table = tiling.scan_tiles(rec, 0, _config(border=border))
    assert len(table) > 0 and set(table.label.tolist()) == expected


def test_mask_overrides_the_image_label(tmp_path):
    _png(tmp_path / "a.png", 64, 64)
    _mask(tmp_path / "a_mask.png", 64, 64, (slice(40, 50), slice(40, 50)))
    rec = layouts.ScanRecord(str(tmp_path / "a.png"), str(tmp_path / "a_mask.png"), image_label=1)
    table = tiling.scan_tiles(rec, 0, _config())
    assert table.label.tolist() == [0, 0, 0, 1]


def test_image_label_must_be_0_1_or_none():
    with pytest.raises(ValueError, match="image_label"):
        layouts.ScanRecord("a.png", image_label=2)


# ------------------------------------------------------------------------------------------
# Folder layout.


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "data"
    for i in range(10):
        _png(root / f"good/{i:02d}.png", 64, 64)
    for i in range(3):
        _png(root / f"good_test/{i:02d}.png", 64, 64)
    # Abnormal images, one in a subfolder; masks named with and without the suffix.
    for name in ("a0", "a1", "a2", "sub/a3"):
        _png(root / f"bad/{name}.png", 64, 64)
    _mask(root / "masks/a0.png", 64, 64)
    _mask(root / "masks/a1_mask.png", 64, 64)
    _mask(root / "masks/a2.tif", 64, 64)
    _mask(root / "masks/sub/a3_mask.png", 64, 64)
    return root


def _folder_config(root, **dirs):
    c = _config(source="folder", root=str(root))
    for k, v in dirs.items():
        c.folder[k] = v
    return c


def test_folder_layout_with_all_dirs(folder):
    c = _folder_config(folder, normal_dir="good", abnormal_dir="bad", normal_test_dir="good_test", mask_dir="masks")
    s = pipeline.prepare_splits(c, None)
    n_train, n_val = layouts.split_counts(10, (0.6, 0.2))
    assert len(s.train) == n_train and len(_labelled(s.val, 0)) == n_val
    assert all(r.image_label == 0 and "/good/" in r.path for r in s.train + _labelled(s.val, 0))
    # Every normal_test_dir image is in test, and only those normals.
    assert _names(_labelled(s.test, 0)) == ["good_test/00.png", "good_test/01.png", "good_test/02.png"]
    # Abnormal images split 1:1 (val 0.2 : test 0.2), never in train.
    assert len(_labelled(s.val, 1)) == len(_labelled(s.test, 1)) == 2
    masks = {os.path.basename(r.path): os.path.relpath(r.mask_path, folder) for r in _labelled(s.val + s.test, 1)}
    assert masks == {
        "a0.png": "masks/a0.png",
        "a1.png": "masks/a1_mask.png",
        "a2.png": "masks/a2.tif",
        "a3.png": os.path.join("masks", "sub", "a3_mask.png"),
    }
    # Tiles of abnormal images are labelled from their masks (the 8x8 corner: tile 0 of 4).
    table = pipeline.split_tiles(s, "test", c)
    for i, r in enumerate(s.test):
        labels = table.label[table.scan_index == i].tolist()
        assert labels == ([1, 0, 0, 0] if r.image_label else [0, 0, 0, 0])
    assert pipeline.prepare_splits(c, None).to_json() == s.to_json()  # deterministic
    it = pipeline.make_train_iterator(s, c, batch_size=8, seed=0)
    assert all((next(it)["label"] == 0).all() for _ in range(3))


def test_folder_layout_without_normal_test_dir_splits_normals_three_ways(folder, tmp_path):
    # Absolute dirs (no root), no masks: abnormal images carry image labels only.
    c = _config(source="folder")
    c.folder.normal_dir, c.folder.abnormal_dir = str(folder / "good"), str(folder / "bad")
    c.split_fractions = (0.6, 0.0, 0.4)
    s = pipeline.prepare_splits(c, str(tmp_path / "work"))
    counts = layouts.split_counts(10, (0.6, 0.0, 0.4))
    assert [len(s.train), len(s.val), len(_labelled(s.test, 0))] == counts
    # Val fraction 0: every abnormal image is tested.
    assert sorted(os.path.basename(r.path) for r in _labelled(s.test, 1)) == ["a0.png", "a1.png", "a2.png", "a3.png"]
    assert all(r.mask_path is None for r in s.test)
    table = pipeline.split_tiles(s, "test", c)
    abnormal_rows = np.isin(table.scan_index, [i for i, r in enumerate(s.test) if r.image_label == 1])
    assert (table.label[abnormal_rows] == -1).all() and (table.label[~abnormal_rows] == 0).all()
    with open(tmp_path / "work" / "splits.json") as f:
        written = json.load(f)
    assert {r["image_label"] for r in written["test"]} == {0, 1}


def test_folder_abnormal_image_without_mask_names_the_file(folder):
    os.remove(folder / "masks/sub/a3_mask.png")
    c = _folder_config(folder, normal_dir="good", abnormal_dir="bad", mask_dir="masks")
    with pytest.raises(readers.LayoutError, match=r"bad/sub/a3\.png"):
        pipeline.prepare_splits(c, None)


def test_folder_layout_configuration_errors(folder):
    with pytest.raises(readers.LayoutError, match="needs normal_dir"):
        pipeline.prepare_splits(_folder_config(folder, abnormal_dir="bad"), None)
    with pytest.raises(readers.LayoutError, match="mask_dir is set but abnormal_dir is not"):
        pipeline.prepare_splits(_folder_config(folder, normal_dir="good", mask_dir="masks"), None)
    with pytest.raises(readers.LayoutError, match="normal_dir and abnormal_dir are the same folder"):
        pipeline.prepare_splits(_folder_config(folder, normal_dir="good", abnormal_dir="good/"), None)
    with pytest.raises(readers.LayoutError, match="abnormal_dir not found"):
        pipeline.prepare_splits(_folder_config(folder, normal_dir="good", abnormal_dir="nope"), None)


def test_masks_nested_in_the_abnormal_dir_are_not_images(tmp_path):
    for i in range(3):
        _png(tmp_path / f"good/{i}.png")
    _png(tmp_path / "bad/x.png")
    _mask(tmp_path / "bad/masks/x_mask.png")
    normal, normal_test, abnormal = layouts.folder_layout(
        str(tmp_path / "good"), str(tmp_path / "bad"), mask_dir=str(tmp_path / "bad/masks")
    )
    assert len(normal) == 3 and normal_test == []
    assert [(os.path.basename(r.path), os.path.basename(r.mask_path)) for r in abnormal] == [("x.png", "x_mask.png")]


def test_folder_with_only_a_root_is_all_normal_and_recursive(tmp_path):
    for name in ("a", "b", "c", "d", "sub/e"):
        _png(tmp_path / f"{name}.png")
    s = pipeline.prepare_splits(_config(source="folder", root=str(tmp_path)), None)
    records = s.train + s.val + s.test
    assert len(records) == 5 and {r.image_label for r in records} == {0}
    assert any(r.path.endswith(os.path.join("sub", "e.png")) for r in records)


# ------------------------------------------------------------------------------------------
# splits.json from before image_label, and the train split guard.


def test_old_splits_json_with_known_normal_still_loads(tmp_path, caplog):
    for name in ("a", "b", "c"):
        _png(tmp_path / f"imgs/{name}.png")
    c = _config(source="folder", root=str(tmp_path / "imgs"), split_fractions=(1, 1, 1))
    s = pipeline.prepare_splits(c, None)
    old = s.to_json()
    for name in pipeline.SPLIT_NAMES:
        for r in old[name]:
            r["known_normal"] = r.pop("image_label") == 0
    old["test"].append({"path": "x.png", "mask_path": None, "patch_labels": None, "known_normal": False})
    loaded = pipeline.Splits.from_json(old)
    assert [r.image_label for r in loaded.train + loaded.val] == [0, 0]
    assert [r.image_label for r in loaded.test] == [0, None]

    # A workdir's splits.json in the old form with the same split is not reported as changed.
    old["test"].pop()
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "splits.json").write_text(json.dumps(old))
    with caplog.at_level(logging.WARNING):
        pipeline.prepare_splits(c, str(tmp_path / "work"))
    assert "differs" not in caplog.text
    assert json.loads((tmp_path / "work" / "splits.json").read_text()) == s.to_json()
    assert not [n for n in os.listdir(tmp_path / "work") if ".tmp" in n]  # name.<pid>.tmp.ext while written
    # ... while one whose labels differ is.
    old["train"][0]["known_normal"] = False
    (tmp_path / "work" / "splits.json").write_text(json.dumps(old))
    with caplog.at_level(logging.WARNING):
        pipeline.prepare_splits(c, str(tmp_path / "work"))
    assert "differs" in caplog.text


def test_an_anomalous_image_in_the_train_split_is_refused(tmp_path, monkeypatch):
    bad = layouts.ScanRecord(str(tmp_path / "bad.png"), image_label=1)
    good = layouts.ScanRecord(str(tmp_path / "good.png"), image_label=0)
    monkeypatch.setattr(pipeline, "_resolve_records", lambda _: ([good, bad], [], [], str(tmp_path)))
    with pytest.raises(readers.LayoutError, match="bad.png"):
        pipeline.prepare_splits(_config(split_fractions=(1, 0, 0)), None)


# ------------------------------------------------------------------------------------------
# Scan folders are searched recursively (scans layout, folder layout, predict's --inputs).


def _scan_tree(root, order):
    """A lab's scan folder: nested subfolders, a mask, a DICOM export without suffixes, and
    files that are not scans. `order`: the order the scans are created in."""
    scans = {"a.png": _png, "sub/b.png": _png, "sub/deeper/c.png": _png, "sub/IM000001": _dicm}
    for name in order:
        scans[name](root / name)
    _mask(root / "sub/b_mask.png")
    _png(root / ".hidden/d.png")  # hidden folder
    _png(root / "sub/.e.png")  # hidden file
    _dicm(root / "DICOMDIR")  # the export's index, not an image
    (root / "notes.txt").write_text("not a scan")
    (root / "labels.csv").write_text("image,x,y,label\nsub/deeper/c.png,0,0,1\n")
    return sorted(os.path.normpath(root / name) for name in scans)


def _dicm(path):
    """Enough of a DICOM file for the listing: the preamble, 'DICM' at byte 128."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"\0" * 128 + b"DICM" + b"\0" * 16)


def test_scans_are_found_in_subfolders_and_split_deterministically(tmp_path):
    order = ["sub/deeper/c.png", "a.png", "sub/IM000001", "sub/b.png"]
    expected = _scan_tree(tmp_path / "one", order)
    records = layouts.scans_layout(str(tmp_path / "one"))
    assert [r.path for r in records] == expected  # sorted by path; hidden, masks, DICOMDIR, text skipped
    by_name = {os.path.basename(r.path): r for r in records}
    assert by_name["b.png"].mask_path == os.path.normpath(tmp_path / "one/sub/b_mask.png")
    assert by_name["c.png"].patch_labels == ((0, 0, 1),)  # CSV paths relative to the root
    # The same tree created in another order splits the same way.
    _scan_tree(tmp_path / "two", order[::-1])
    other = layouts.scans_layout(str(tmp_path / "two"))
    relative = lambda parts, root: [[os.path.relpath(r.path, root) for r in p] for p in parts]  # noqa: E731
    split = layouts.split_by_image(records, (1, 1, 1), 3)
    assert relative(split, tmp_path / "one") == relative(layouts.split_by_image(other, (1, 1, 1), 3), tmp_path / "two")
    assert split == layouts.split_by_image(records, (1, 1, 1), 3)
    # Predict's --inputs: a folder gives what the layout gives; globs and files are filtered.
    assert predict.expand_inputs([str(tmp_path / "one")]) == expected
    assert predict.expand_inputs([str(tmp_path / "one/sub/*")]) == [
        str(tmp_path / "one/sub/IM000001"),
        str(tmp_path / "one/sub/b.png"),
    ]
    with pytest.raises(FileNotFoundError, match="no scans"):
        predict.expand_inputs([str(tmp_path / "one/notes.txt")])
