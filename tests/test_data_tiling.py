"""Tiling geometry, coverage, background rule and labels from masks."""

import pickle

import numpy as np
import pytest
import tifffile
from PIL import Image

from xray_flax.data import config as data_config_lib
from xray_flax.data import layouts, tiling


def _coverage(height, width, patch, stride, border):
    ys, xs = tiling.grid_positions(height, width, patch, stride, border)
    count = np.zeros((height, width), np.int32)
    for y, x in zip(ys, xs):
        count[max(y, 0) : y + patch, max(x, 0) : x + patch] += 1
    return ys, xs, count


@pytest.mark.parametrize(
    "length,patch,stride", [(100, 32, 32), (100, 32, 24), (96, 32, 32), (20, 32, 32), (101, 32, 7), (33, 32, 32)]
)
@pytest.mark.parametrize("border", ["pad", "shift"])
def test_pad_and_shift_cover_every_pixel(length, patch, stride, border):
    ys, xs, count = _coverage(length, length + 3, patch, stride, border)
    assert count.min() >= 1, "some pixel is in no tile"
    if border == "shift":
        # Shifted tiles stay inside the image (unless the image is smaller than a patch).
        if length >= patch:
            assert (ys + patch <= length).all() and (ys >= 0).all()
    else:
        assert (ys < length).all()  # a padded tile still starts inside the image
        # Padding never adds a tile that only covers pixels another tile already reached the end of
        assert (np.sort(np.unique(ys))[:-1] + patch < length).all()


def test_stride_larger_than_patch_samples_sparsely():
    # Documented: stride > patch leaves gaps between tiles (subsampling a huge scan).
    _, _, count = _coverage(100, 100, 16, 40, "drop")
    assert count.min() == 0 and count.max() == 1


@pytest.mark.parametrize("stride", [16, 24, 32])
def test_stride_gives_expected_overlap(stride):
    starts = tiling.tile_starts(128, 32, stride, "drop")
    assert np.array_equal(starts, np.arange(0, 128 - 32 + 1, stride))
    ys, xs, count = _coverage(128, 128, 32, stride, "drop")
    # Interior pixels are covered ceil(32 / stride)-ish times; at stride 16, exactly 2 per axis.
    if stride == 16:
        assert count[16:112, 16:112].min() == 4 and count[16:112, 16:112].max() == 4


def test_drop_covers_only_full_tiles():
    ys, xs, count = _coverage(100, 70, 32, 32, "drop")
    assert (ys + 32 <= 100).all() and (xs + 32 <= 70).all()
    assert count[:96, :64].min() == 1 and count[96:].max() == 0 and count[:, 64:].max() == 0


def test_pad_tiles_are_zero_padded_and_shift_tiles_are_not(tmp_path):
    img = np.full((50, 40), 60000, np.uint16)
    Image.fromarray(img).save(tmp_path / "a.png")
    cfg = data_config_lib.defaults()
    cfg.patch_size, cfg.stride, cfg.background.rule = 32, 32, "none"
    rec = layouts.ScanRecord(str(tmp_path / "a.png"))
    for border, expect_zero in (("pad", True), ("shift", False)):
        cfg.border = border
        table = tiling.scan_tiles(rec, 0, cfg)
        src = tiling.TileSource([rec], table, cfg)
        last = src[len(src) - 1]["image"]
        assert (last.min() == 0.0) == expect_zero


def test_masked_fractions_match_brute_force():
    rng = np.random.default_rng(0)
    mask = rng.random((77, 91)) < 0.1
    ys, xs = tiling.grid_positions(77, 91, 16, 12, "pad")
    got = tiling.masked_fractions(mask, ys, xs, 16)
    for y, x, g in zip(ys, xs, got):
        assert g == pytest.approx(mask[y : y + 16, x : x + 16].sum() / 256)


def test_background_rules():
    dark = np.full((8, 8, 1), 0.01, np.float32)
    bright = np.full((8, 8, 1), 0.5, np.float32)
    half = np.concatenate([dark[:4], bright[:4]])
    assert tiling.is_background(dark, "dark_fraction", 0.08, 0.5)
    assert not tiling.is_background(bright, "dark_fraction", 0.08, 0.5)
    assert tiling.is_background(half, "dark_fraction", 0.08, 0.5)
    assert not tiling.is_background(half, "dark_fraction", 0.08, 0.6)
    assert tiling.is_background(bright, "low_std", 0.01, 0)
    assert not tiling.is_background(half, "low_std", 0.01, 0)
    assert not tiling.is_background(dark, "none", 0.08, 0.5)


def test_labels_agree_with_mask_and_background_is_skipped(tmp_path):
    h, w, p = 96, 128, 32
    img = np.full((h, w), 30000, np.uint16)
    img[:, :p] = 100  # a dark margin column: background
    mask = np.zeros((h, w), np.uint8)
    mask[40:44, 70:75] = 255  # 20 px in one tile
    mask[5, 100] = 255  # 1 px: below min_anomalous_fraction
    Image.fromarray(img).save(tmp_path / "s.png")
    Image.fromarray(mask).save(tmp_path / "s_mask.png")
    cfg = data_config_lib.defaults()
    cfg.patch_size, cfg.stride, cfg.border = p, p, "drop"
    cfg.min_anomalous_fraction = 10 / (p * p)
    rec = layouts.ScanRecord(str(tmp_path / "s.png"), str(tmp_path / "s_mask.png"))
    table = tiling.scan_tiles(rec, 0, cfg)
    assert (table.x > 0).all(), "margin tiles should be skipped"
    assert len(table) == 3 * 3
    src = tiling.TileSource([rec], table, cfg)
    for i in range(len(src)):
        e = src[i]
        y, x = int(e["y"]), int(e["x"])
        crop = mask[y : y + p, x : x + p] > 0
        np.testing.assert_array_equal(e["mask"][..., 0] > 0, crop)
        assert e["label"] == int(crop.sum() >= 10)
    assert (table.label == 1).sum() == 1
    # Training never sees a tile with any masked pixel, even one below the label threshold.
    train = table.select(tiling.training_rows(table, cfg))
    assert len(train) == 7 and (train.masked == 0).all()
    cfg.train_exclude_any_masked = False
    assert tiling.training_rows(table, cfg).sum() == 8


def test_source_pickles_without_open_files_and_reads_the_same(tmp_path):
    raw = np.random.default_rng(0).integers(0, 65536, (100, 90), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "s.tif", raw, tile=(32, 32), compression="zlib")
    cfg = data_config_lib.defaults()
    cfg.patch_size, cfg.stride, cfg.background.rule = 32, 32, "none"
    rec = layouts.ScanRecord(str(tmp_path / "s.tif"))
    src = tiling.TileSource([rec], tiling.scan_tiles(rec, 0, cfg), cfg)
    before = [src[i]["image"] for i in range(len(src))]  # opens the TIFF in this process
    clone = pickle.loads(pickle.dumps(src))  # what a Grain worker receives
    for i, image in enumerate(before):
        np.testing.assert_array_equal(clone[i]["image"], image)
