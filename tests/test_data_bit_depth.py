"""The stored bit depth honoured (docs/data.md, "Bit depth"): 12- and 14-bit data in 16-bit
files, stated by a tag or detected from the data and logged once per scan; float TIFF
radiographs by their documented rule; the message when a train split is all background.

Every expected value is computed with NumPy from the array that was written."""

import logging

import numpy as np
import pytest
import tifffile
from PIL import Image, PngImagePlugin

from xray_flax.data import config as data_config_lib
from xray_flax.data import pipeline, readers


def _scan12(h=96, w=80, top=4095, seed=0):
    """A radiograph-like 16-bit array whose values use `top` at most (12-bit by default)."""
    raw = np.random.default_rng(seed).integers(top // 4, top + 1, (h, w), dtype=np.uint16)
    raw[0, 0] = top
    return raw


def _unit(raw, top):
    """What 'bit_depth' normalisation must return: raw / top, in float32 as the readers do."""
    return (raw.astype(np.float32) * np.float32(1.0 / top))[..., None]


def _png(path, raw, sbit=None):
    info = PngImagePlugin.PngInfo()
    if sbit is not None:
        info.add(b"sBIT", bytes([sbit]))
    Image.fromarray(raw).save(path, pnginfo=info)
    return str(path)


def _tiff(path, raw, tag=None, **kw):
    """A TIFF with SMaxSampleValue (341) or MaxSampleValue (281) = value when `tag` is (code, value)."""
    extratags = [(tag[0], "H", 1, tag[1], True)] if tag else []
    tifffile.imwrite(path, raw, extratags=extratags, **kw)
    return str(path)


def _read_all(path, **kw):
    r = readers.open_scan(path, **kw)
    return r, r.read_region(0, 0, r.height, r.width)


# ------------------------------------------------------------------------------------------
# The rule itself.


@pytest.mark.parametrize(
    "container, sample_max, stated, expected",
    [
        (16, 4095, None, 12),
        (16, 0, None, 12),
        (16, 4096, None, 14),
        (16, 16383, None, 14),
        (16, 16384, None, 16),
        (16, 65535, None, 16),
        (8, 3, None, 8),  # 8-bit words are used whole
        (16, 4000, 16, 16),  # a stated depth wins over the detection...
        (16, 900, 10, 10),
        (16, 5000, 12, 14),  # ... unless the data exceed it: then the data decide
        (16, 65520, 12, 16),  # sBIT 12 whose samples were scaled up to 16 bits (the PNG spec's way)
        (8, 31, 5, 5),
    ],
)
def test_decide_bit_depth(container, sample_max, stated, expected):
    bits, reason = readers.decide_bit_depth(container, sample_max, stated, "TAG" if stated else "")
    assert bits == expected and reason


def test_float_scale_rule():
    assert readers.float_scale(0.0, 1.0)[:2] == (0.0, 1.0)
    assert readers.float_scale(0.2, 0.7)[:2] == (0.0, 1.0)  # within [0, 1]: kept
    assert readers.float_scale(-3.0, 5.0)[:2] == (-3.0, 5.0)  # else min-max
    assert readers.float_scale(0.5, 1.5)[:2] == (0.5, 1.5)
    assert readers.float_scale(7.0, 7.0)[:2] == (7.0, 8.0)  # constant: maps to 0


# ------------------------------------------------------------------------------------------
# Integer files.


@pytest.mark.parametrize("top", [4095, 16383])
def test_12_and_14_bit_data_in_16_bit_files_without_a_tag_are_detected(tmp_path, top, caplog):
    raw = _scan12(top=top)
    for path in (_png(tmp_path / "a.png", raw), _tiff(tmp_path / "a.tif", raw, tile=(32, 32), compression="lzw")):
        with caplog.at_level(logging.INFO, logger="xray_flax.data.readers"):
            r, values = _read_all(path)
        assert r.bit_depth == {4095: 12, 16383: 14}[top] and r.container_bits == 16
        np.testing.assert_array_equal(values, _unit(raw, top))
        lines = [m for m in caplog.messages if path in m]
        assert len(lines) == 1 and f"bit depth {r.bit_depth}" in lines[0] and "detected from the data" in lines[0]


@pytest.mark.parametrize("top", [4095, 16383])
def test_stated_depths_are_honoured(tmp_path, top):
    bits = top.bit_length()
    raw = _scan12(top=top) // 2  # the stated depth, not the data's maximum, decides
    cases = {
        "png sBIT": _png(tmp_path / "s.png", raw, sbit=bits),
        "tiff SMaxSampleValue": _tiff(tmp_path / "s.tif", raw, (341, top), rowsperstrip=16, compression="zlib"),
        "tiff MaxSampleValue": _tiff(tmp_path / "m.tif", raw, (281, top)),
    }
    for name, path in cases.items():
        r, values = _read_all(path)
        assert r.bit_depth == bits, name
        np.testing.assert_array_equal(values, _unit(raw, top), err_msg=name)
        assert readers.read_header(path).bit_depth == bits  # from the header alone


def test_12_bit_packed_tiff(tmp_path):
    raw = _scan12()
    path = _tiff(tmp_path / "p.tif", raw, bitspersample=12)
    r, values = _read_all(path)
    assert (r.bit_depth, r.container_bits, readers.read_header(path).bit_depth) == (12, 16, 12)
    np.testing.assert_array_equal(values, _unit(raw, 4095))
    np.testing.assert_array_equal(r.read_raw_region(40, 30, 20, 20)[..., 0], raw[40:60, 30:50])


def test_a_tag_of_the_full_range_keeps_dark_16_bit_data_16_bit(tmp_path):
    raw = _scan12() // 4  # dark: the detection alone would call it 12-bit
    r, values = _read_all(_tiff(tmp_path / "d.tif", raw, (341, 65535)))
    assert r.bit_depth == 16
    np.testing.assert_array_equal(values, _unit(raw, 65535))


def test_sbit_with_samples_scaled_up_to_16_bits_is_read_as_16_bit(tmp_path):
    raw = _scan12() << 4  # what the PNG specification asks of a 12-bit image in a 16-bit PNG
    r, values = _read_all(_png(tmp_path / "up.png", raw, sbit=12))
    assert r.bit_depth == 16 and "PNG sBIT 12" in r.scale_decision.reason
    np.testing.assert_array_equal(values, _unit(raw, 65535))


def test_full_range_16_bit_and_8_bit_data_are_unchanged(tmp_path):
    raw = _scan12(top=60000)
    r, values = _read_all(_png(tmp_path / "full.png", raw))
    assert r.bit_depth == 16
    np.testing.assert_array_equal(values, _unit(raw, 65535))
    dark8 = (_scan12() // 400).astype(np.uint8)  # 8-bit values all below 16: still 8-bit
    r, values = _read_all(_png(tmp_path / "dark8.png", dark8))
    assert r.bit_depth == 8
    np.testing.assert_array_equal(values, _unit(dark8, 255))


def test_miniswhite_12_bit_is_inverted_within_its_depth(tmp_path):
    raw = _scan12()
    r, values = _read_all(_tiff(tmp_path / "w.tif", raw, photometric="miniswhite"))
    assert r.bit_depth == 12  # decided on the stored values, before the inversion
    np.testing.assert_array_equal(values, _unit(4095 - raw, 4095))


def test_percentile_normalisation_is_unchanged_by_the_depth(tmp_path):
    raw = _scan12()
    r, values = _read_all(_png(tmp_path / "p.png", raw), normalization="percentile", percentiles=(1, 99))
    lo, hi = np.percentile(raw, (1, 99))
    np.testing.assert_allclose(values[..., 0], np.clip((raw - lo) / (hi - lo), 0, 1), atol=1e-6)


def test_samples_above_a_depth_detected_from_a_sample_warn_once(tmp_path, caplog):
    raw = np.full((4096, 300), 1000, np.uint16)  # taller than 2048: 64 windows, not the whole image
    raw[400, 10] = 60000  # between the windows at rows 0-255 and 548-803
    path = _tiff(tmp_path / "tall.tif", raw, tile=(64, 64), compression="zlib")
    r = readers.open_scan(path)
    assert r.bit_depth == 12
    with caplog.at_level(logging.WARNING, logger="xray_flax.data.readers"):
        assert r.read_region(384, 0, 32, 32).max() == 1.0
        r.read_region(384, 0, 32, 32)
    assert len([m for m in caplog.messages if "exceed the bit depth 12" in m and path in m]) == 1


# ------------------------------------------------------------------------------------------
# Float TIFFs.


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_tiff_in_0_1_is_kept_as_it_is(tmp_path, dtype):
    raw = np.random.default_rng(1).uniform(0.1, 0.9, (70, 50)).astype(dtype)
    r, values = _read_all(_tiff(tmp_path / "f.tif", raw, tile=(32, 32), compression="zlib", predictor=True))
    assert r.bit_depth is None and r.scale == (0.0, 1.0)
    np.testing.assert_array_equal(values[..., 0], raw.astype(np.float32))


def test_float_tiff_outside_0_1_is_mapped_min_max(tmp_path):
    raw = np.random.default_rng(2).normal(300.0, 80.0, (70, 50)).astype(np.float32)
    r, values = _read_all(_tiff(tmp_path / "f.tif", raw))
    lo, hi = float(raw.min()), float(raw.max())
    expect = (raw - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    np.testing.assert_allclose(values[..., 0], expect, atol=1e-6)
    assert values.min() == 0.0 and values.max() == pytest.approx(1.0)
    assert not r.read_region(-4, -4, 8, 8)[:4].any()  # padding stays 0 although lo maps 0 elsewhere


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_in_a_float_tiff_is_refused_naming_the_file(tmp_path, bad):
    raw = np.full((40, 40), 0.5, np.float32)
    raw[30, 20] = bad
    path = _tiff(tmp_path / "nan.tif", raw)
    for normalization in ("bit_depth", "percentile"):
        with pytest.raises(readers.NonFiniteImageError) as info:
            readers.open_scan(path, normalization=normalization).read_region(0, 0, 8, 8)
        assert path in str(info.value) and "NaN or infinite" in str(info.value)
        assert isinstance(info.value, readers.DataError)


# ------------------------------------------------------------------------------------------
# Through the pipeline with the default config.


def _config(root, **overrides):
    c = data_config_lib.defaults()
    c.source, c.root, c.patch_size, c.stride, c.split_fractions = "scans", str(root), 32, 32, (1, 1, 1)
    for key, value in overrides.items():
        setattr(c, key, value)
    return c


def test_12_bit_scans_train_with_the_default_config(tmp_path):
    # 12-bit values are all below the background threshold read as 16-bit (0.08 x 65535).
    for i in range(3):
        _png(tmp_path / f"s{i}.png", _scan12(96, 96, top=4095, seed=i))
    c = _config(tmp_path)
    assert c.normalization == data_config_lib.defaults().normalization == "bit_depth"
    splits = pipeline.prepare_splits(c, None)
    batch = next(pipeline.make_train_iterator(splits, c, batch_size=2, seed=0))
    assert batch["image"].shape == (2, 32, 32, 1) and batch["image"].max() > 0.5


def test_an_all_background_train_split_says_which_scale_and_what_to_try(tmp_path):
    dark = np.full((64, 64), 200, np.uint16)
    for name in "abc":  # stated 16-bit (a tag), so 200 reads as 0.003: every tile is background
        _tiff(tmp_path / f"{name}.tif", dark, (341, 65535))
    c = _config(tmp_path)
    splits = pipeline.prepare_splits(c, None)
    with pytest.raises(readers.EmptySplitError) as info:
        pipeline.make_train_iterator(splits, c, batch_size=2, seed=0)
    message = str(info.value)
    train = splits.train[0].path.rsplit("/", 1)[-1]
    for part in (
        "no clean normal tiles",
        "4 are background",
        "config.data.background.rule='dark_fraction'",
        f"{train}: bit depth 16 (stated by TIFF SMaxSampleValue 65535)",
        "samples 200..200 read as 0.003..0.003",
        "--config.data.normalization=percentile",
        "--config.data.background.threshold",
    ):
        assert part in message, (part, message)
    assert "\n" not in message
