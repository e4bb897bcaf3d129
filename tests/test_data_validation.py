"""Input validation before training (validate.validate_splits), mask binarisation and the
labels CSV reader: every bad input fails in seconds, naming its file (and CSV line)."""

import logging
import os
import struct
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from xray_flax.data import config as data_config_lib
from xray_flax.data import layouts, pipeline, readers, tiling, validate


def _config(**overrides):
    c = data_config_lib.defaults()
    c.source, c.patch_size, c.stride = "scans", 32, 32
    for key, value in overrides.items():  # "background__rule" sets c.background.rule
        *parents, name = key.split("__")
        section = c
        for parent in parents:
            section = section[parent]
        section[name] = value
    return c


def _png(path, h=64, w=64, value=30000):
    Image.fromarray(np.full((h, w), value, np.uint16)).save(path)
    return str(path)


def _mask(path, h=64, w=64, box=(slice(0, 8), slice(0, 8)), value=255, noise=None):
    m = np.zeros((h, w), np.uint8)
    if noise is not None:
        m[:] = noise
    m[box] = value
    Image.fromarray(m).save(path)
    return str(path)


def _splits(train=(), val=(), test=(), root=""):
    rec = lambda r: r if isinstance(r, layouts.ScanRecord) else layouts.ScanRecord(str(r))  # noqa: E731
    return pipeline.Splits([rec(r) for r in train], [rec(r) for r in val], [rec(r) for r in test], root=str(root))


def _fails(exc, *names, splits, config=None):
    with pytest.raises(exc) as info:
        validate.validate_splits(splits, config or _config())
    for name in names:
        assert str(name) in str(info.value)
    return info.value


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


# ------------------------------------------------------------------------------------------
# Images: readability, depth, size; header only.


def test_good_data_pass_and_every_file_is_opened_once(tmp_path, monkeypatch):
    for i in range(5):
        _png(tmp_path / f"s{i}.png")
        if i % 2 == 0:
            _mask(tmp_path / f"s{i}_mask.png")
    tifffile.imwrite(tmp_path / "t.tif", np.full((64, 80), 900, np.uint16), tile=(32, 32), compression="zlib")
    c = _config(root=str(tmp_path))
    splits = pipeline.prepare_splits(c, None)
    records = [r for n in ("train", "val", "test") for r in splits.get(n)]
    opened = {"header": [], "mask": []}
    read_header, read_mask_raw = readers.read_header, readers.read_mask_raw
    monkeypatch.setattr(readers, "read_header", lambda p: opened["header"].append(p) or read_header(p))
    monkeypatch.setattr(readers, "read_mask_raw", lambda p: opened["mask"].append(p) or read_mask_raw(p))
    report = validate.validate_splits(splits, c)
    masks = [r.mask_path for r in records if r.mask_path]
    assert len(records) == 6 and len(masks) == 3
    assert (report.images, report.masks, report.files) == (6, 3, 9)
    # Every image header and every mask (header, then decoded for its values) is read once.
    assert sorted(opened["header"]) == sorted([r.path for r in records] + masks)
    assert sorted(opened["mask"]) == sorted(masks)
    assert report.warnings == ()


def test_truncated_png_and_tiff_are_all_listed(tmp_path):
    raw = np.arange(128 * 128, dtype=np.uint16).reshape(128, 128)
    Image.fromarray(raw).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    tifffile.imwrite(tmp_path / "full.tif", raw, tile=(64, 64))
    data = (tmp_path / "full.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) - 5000])
    splits = _splits(train=[tmp_path / "full.png", tmp_path / "cut.png"], val=[tmp_path / "cut.tif"])
    err = _fails(readers.DataValidationError, "cut.png", "cut.tif", "truncated", splits=splits)
    assert str(err).splitlines()[0] == "2 of 3 files are unusable: train cut.png, val cut.tif"
    assert [type(e) for e in err.problems] == [readers.UnreadableImageError] * 2
    assert "full.png" not in str(err)


def test_a_single_problem_is_raised_as_its_own_error(tmp_path):
    (tmp_path / "text.png").write_text("not an image")
    _png(tmp_path / "a.png")
    _fails(
        readers.UnreadableImageError,
        tmp_path / "text.png",
        splits=_splits([tmp_path / "a.png"], [tmp_path / "text.png"]),
    )
    _fails(readers.UnreadableImageError, tmp_path / "gone.tif", "not found", splits=_splits([tmp_path / "gone.tif"]))


def test_unsupported_bit_depths(tmp_path):
    tifffile.imwrite(tmp_path / "f32.tif", np.zeros((64, 64, 3), np.float32), photometric="rgb")  # float colour
    # A PNG whose IHDR claims 32-bit samples (not a PNG depth; Pillow cannot decode it either).
    ihdr = struct.pack(">IIBBBBB", 64, 64, 32, 0, 0, 0, 0)
    body = _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 100)) + _png_chunk(b"IEND", b"")
    (tmp_path / "d32.png").write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    Image.new("CMYK", (64, 64)).save(tmp_path / "cmyk.jpg")
    splits = _splits([tmp_path / "f32.tif"], [tmp_path / "d32.png"], [tmp_path / "cmyk.jpg"])
    err = _fails(readers.DataValidationError, "f32.tif", "d32.png", "cmyk.jpg", "3 of 3 files", splits=splits)
    assert all(isinstance(e, readers.UnsupportedImageError) for e in err.problems)
    assert "bit depth 32" in str(err) and "float32" in str(err) and "'CMYK'" in str(err)


def test_too_small_images_in_val_and_test_fail_before_training(tmp_path):
    _png(tmp_path / "train.png")
    _png(tmp_path / "val.png", 20, 24)
    _png(tmp_path / "test.png", 64, 10)
    splits = _splits([tmp_path / "train.png"], [tmp_path / "val.png"], [tmp_path / "test.png"])
    err = _fails(readers.DataValidationError, "val.png", "test.png", "patch_size", splits=splits)
    assert str(err).splitlines()[0] == "2 of 3 files are unusable: val val.png, test test.png"
    assert all(isinstance(e, readers.ImageTooSmallError) for e in err.problems)
    # What the check prevents: the tiling gives such an image no tile at all.
    for name in ("val.png", "test.png"):
        assert len(tiling.scan_tiles(layouts.ScanRecord(str(tmp_path / name)), 0, _config())) == 0
    # Smaller than a patch is fine where the image still gets a tile: no background rule.
    validate.validate_splits(splits, _config(background__rule="none"))
    # ... but never with border 'drop'.
    _fails(readers.DataValidationError, "drop", splits=splits, config=_config(border="drop"))


def test_large_scans_are_checked_from_their_headers(tmp_path, monkeypatch):
    big = tmp_path / "big.tif"
    tiles = (np.zeros((512, 512), np.uint16) for _ in range(24 * 18))
    tifffile.imwrite(big, tiles, shape=(12000, 9000), dtype=np.uint16, tile=(512, 512), compression="zlib")
    flat = tmp_path / "flat.tif"  # uncompressed, striped: the reader would memory-map it
    tifffile.imwrite(flat, shape=(12000, 9000), dtype=np.uint8)
    Image.fromarray(np.zeros((3000, 4000), np.uint8)).save(tmp_path / "big.png")

    def no_decoding(*args, **kwargs):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(tifffile.TiffPage, "decode", no_decoding)
    monkeypatch.setattr(tifffile.TiffPage, "asarray", no_decoding)
    monkeypatch.setattr(readers.TiffScanReader, "_read_raw", no_decoding)
    monkeypatch.setattr(readers, "decode_whole_image", no_decoding)
    monkeypatch.setattr(Image.Image, "load", no_decoding)
    splits = _splits([big], [flat], [tmp_path / "big.png"])
    report = validate.validate_splits(splits, _config(patch_size=512, stride=512))
    assert (report.images, report.files) == (3, 3)


# ------------------------------------------------------------------------------------------
# Masks.


def test_mask_size_mismatch_is_found_from_the_header(tmp_path, monkeypatch):
    _png(tmp_path / "a.png", 64, 64)
    _mask(tmp_path / "a_mask.png", 64, 48)
    monkeypatch.setattr(readers, "read_mask_raw", lambda p: pytest.fail("decoded a mask of the wrong size"))
    splits = _splits(val=[layouts.ScanRecord(_png(tmp_path / "a.png"), str(tmp_path / "a_mask.png"))])
    _fails(readers.MaskShapeError, "a_mask.png", "64x48", splits=splits)


def test_truncated_mask_fails(tmp_path):
    _mask(tmp_path / "full_mask.png", 256, 256, noise=np.random.default_rng(0).integers(0, 255, (256, 256)))
    data = (tmp_path / "full_mask.png").read_bytes()
    (tmp_path / "a_mask.png").write_bytes(data[: len(data) // 2])
    splits = _splits(test=[layouts.ScanRecord(_png(tmp_path / "a.png", 256, 256), str(tmp_path / "a_mask.png"))])
    _fails(readers.UnreadableImageError, "a_mask.png", "truncated", splits=splits)


def test_noisy_mask_warns_once_and_labels_only_the_defect(tmp_path, caplog):
    rng = np.random.default_rng(0)
    noise = rng.choice(np.asarray([0, 1, 2], np.uint8), (64, 64))
    mask = _mask(tmp_path / "a_mask.png", 64, 64, box=(slice(40, 50), slice(40, 50)), value=254, noise=noise)
    rec = layouts.ScanRecord(_png(tmp_path / "a.png"), mask)
    with caplog.at_level(logging.WARNING):
        report = validate.validate_splits(_splits([rec]), _config())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and report.warnings == tuple(warnings)
    assert "a_mask.png" in warnings[0] and "values 0, 1, 2, 254" in warnings[0]
    assert ">= 128 of 255 are anomalous" in warnings[0]
    # The rule stated is the rule applied: noise stays normal, the 254 block is anomalous.
    table = tiling.scan_tiles(rec, 0, _config(background__rule="none"))
    assert table.label.tolist() == [0, 0, 0, 1]
    np.testing.assert_array_equal(readers.read_mask(mask, (64, 64)), np.asarray(Image.open(mask)) >= 128)


@pytest.mark.parametrize(
    "values,bits,anomalous",
    [((0, 255), 8, (False, True)), ((0, 1), 8, (False, True)), ((0, 1, 2, 200), 8, (False, False, False, True))]
    + [((0, 65535), 16, (False, True)), ((0, 300, 40000), 16, (False, False, True))],
)
def test_mask_binarisation_rule(values, bits, anomalous):
    raw = np.asarray(values, np.uint16 if bits == 16 else np.uint8)[None]
    assert readers.binarize_mask(raw, bits)[0].tolist() == list(anomalous)


def test_binary_masks_do_not_warn(tmp_path, caplog):
    recs = [
        layouts.ScanRecord(_png(tmp_path / "a.png"), _mask(tmp_path / "a_mask.png")),
        layouts.ScanRecord(_png(tmp_path / "b.png"), _mask(tmp_path / "b_mask.png", value=1)),
    ]
    with caplog.at_level(logging.WARNING):
        assert validate.validate_splits(_splits(recs), _config()).warnings == ()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# ------------------------------------------------------------------------------------------
# Labels CSV.


def _csv(path, text: str, encoding="utf-8"):
    path.write_bytes(text.encode(encoding))
    return str(path)


def test_bom_crlf_and_spaces_in_a_labels_csv_are_accepted(tmp_path):
    _png(tmp_path / "a.png")
    _csv(tmp_path / "labels.csv", "\ufeff Image , x,y ,label\r\na.png, 0, 0, 1\r\n\r\na.png,32,32,0\r\n")
    records = layouts.scans_layout(str(tmp_path))
    assert records[0].patch_labels == ((0, 0, 1), (32, 32, 0))


def test_contradictory_duplicate_rows_are_refused_naming_both_lines(tmp_path):
    _png(tmp_path / "a.png")
    csv = _csv(tmp_path / "labels.csv", "image,x,y,label\na.png,0,0,1\na.png,32,0,0\n\na.png,0,0,0\n")
    with pytest.raises(readers.CsvLabelError, match=r"labels\.csv: lines 2 and 5 .*x=0, y=0 of a\.png"):
        layouts.read_labels_csv(csv, str(tmp_path))


def test_exact_duplicate_rows_are_kept_once_with_a_warning(tmp_path, caplog):
    csv = _csv(tmp_path / "labels.csv", "image,x,y,label\na.png,0,0,1\na.png,0,0,1\n")
    with caplog.at_level(logging.WARNING):
        labels = layouts.read_labels_csv(csv, str(tmp_path))
    assert labels == {os.path.join(str(tmp_path), "a.png"): [(0, 0, 1)]}
    assert any("line 3 repeats line 2" in r.getMessage() for r in caplog.records)


def test_a_labels_csv_that_is_not_utf8_is_refused(tmp_path):
    csv = _csv(tmp_path / "labels.csv", "image,x,y,label\nbild_ä.png,0,0,1\n", encoding="latin-1")
    with pytest.raises(readers.CsvLabelError, match=r"labels\.csv: not UTF-8"):
        layouts.read_labels_csv(csv, str(tmp_path))


def test_out_of_bounds_csv_patch_of_a_validation_scan_is_refused(tmp_path):
    for i in range(5):
        _png(tmp_path / f"s{i}.png")
    rows = "".join(f"s{i}.png,0,0,0\n" for i in range(5))
    c = _config(root=str(tmp_path))
    _csv(tmp_path / "labels.csv", "image,x,y,label\n" + rows)
    val = pipeline.prepare_splits(c, None).val[0]
    name = os.path.basename(val.path)
    _csv(tmp_path / "labels.csv", "image,x,y,label\n" + rows + f"{name},40,0,1\n")
    splits = pipeline.prepare_splits(c, None)
    assert splits.val[0].path == val.path
    err = _fails(readers.CsvLabelError, "labels.csv", "line 7", "x=40, y=0", name, "64x64", splits=splits)
    assert str(err).startswith(str(tmp_path / "labels.csv"))


# ------------------------------------------------------------------------------------------
# Nothing to check.


def test_an_empty_folder(tmp_path):
    with pytest.raises(readers.LayoutError, match=str(tmp_path)):
        pipeline.prepare_splits(_config(root=str(tmp_path)), None)
    with pytest.raises(readers.EmptySplitError, match=str(tmp_path)):
        validate.validate_splits(_splits(root=tmp_path), _config())


def test_more_problems_than_listed(tmp_path):
    for i in range(13):
        (tmp_path / f"bad{i:02d}.png").write_text("x")
    err = _fails(
        readers.DataValidationError,
        "13 of 13 files",
        "bad00.png",
        "... and 3 more",
        splits=_splits(sorted(tmp_path.iterdir())),
    )
    assert len(err.problems) == 13 and "bad12.png" not in str(err)


def test_file_and_row_problems_are_summed_up_together(tmp_path):
    # Records built without a CSV on disk (e.g. another layout's rows): rows are named by index.
    rec = layouts.ScanRecord(_png(tmp_path / "a.png"), patch_labels=((0, 0, 0), (0, 50, 1)))
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    err = _fails(readers.DataValidationError, splits=_splits([rec], [tmp_path / "b.png"]))
    assert str(err).splitlines()[0] == (
        "1 of 2 files are unusable and 1 of 2 labels-CSV rows lie outside their image: "
        "train a.png patch row 2, val b.png"
    )
    assert "x=0, y=50 (size 32) lies outside a.png, a 64x64 (WxH) image" in str(err)
