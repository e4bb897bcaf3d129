"""Readers: bit depths, modes, region reads of large TIFFs, normalisation, errors."""

import numpy as np
import pytest
import tifffile
from PIL import Image

from xray_flax.data import readers


def _ramp16(h=64, w=80):
    # Consecutive 16-bit codes: any 8-bit quantisation would merge 256 of them. Above 2^14, so
    # the data are 16-bit (lower maxima are read as 12- or 14-bit: test_data_bit_depth.py).
    return (np.arange(h * w, dtype=np.uint32).reshape(h, w) + 20000).astype(np.uint16)


def test_png16_keeps_every_code(tmp_path):
    raw = _ramp16()
    Image.fromarray(raw).save(tmp_path / "a.png")
    r = readers.open_scan(tmp_path / "a.png")
    assert (r.height, r.width, r.channels, r.bit_depth) == (64, 80, 1, 16)
    region = r.read_region(0, 0, 64, 80)
    assert region.dtype == np.float32 and region.shape == (64, 80, 1)
    np.testing.assert_array_equal(np.round(region[..., 0] * 65535).astype(np.uint16), raw)
    assert len(np.unique(region)) == raw.size  # 5120 distinct values, not <= 256


def test_png16_rgb_kept_at_full_depth(tmp_path):
    tf = pytest.importorskip("tensorflow")
    raw = np.stack([_ramp16(), _ramp16()[::-1], _ramp16()[:, ::-1]], -1)
    tf.io.write_file(str(tmp_path / "rgb.png"), tf.io.encode_png(tf.constant(raw)))
    r = readers.open_scan(tmp_path / "rgb.png", channels=3)
    assert r.bit_depth == 16
    np.testing.assert_array_equal(np.round(r.read_region(0, 0, 64, 80) * 65535).astype(np.uint16), raw)


def test_png8_rgb_to_gray_and_gray_to_rgb(tmp_path):
    rgb = np.zeros((10, 12, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 255, 100, 0
    Image.fromarray(rgb).save(tmp_path / "c.png")
    g = readers.open_scan(tmp_path / "c.png", channels=1).read_region(0, 0, 10, 12)
    assert g.shape == (10, 12, 1)
    np.testing.assert_allclose(g, (0.299 * 255 + 0.587 * 100) / 255, rtol=1e-5)
    m = readers.open_scan(tmp_path / "c.png", channels=1, rgb_to_gray="mean").read_region(0, 0, 2, 2)
    np.testing.assert_allclose(m, 355 / 3 / 255, rtol=1e-5)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "g.png")
    three = readers.open_scan(tmp_path / "g.png", channels=3).read_region(0, 0, 10, 12)
    assert three.shape == (10, 12, 3) and np.all(three == 1.0)


@pytest.mark.parametrize("kind", ["tiled_zlib", "strips", "contiguous", "bigtiff_rgb", "planar"])
def test_tiff_regions_equal_the_array(tmp_path, kind):
    rng = np.random.default_rng(1)
    rgb = kind in ("bigtiff_rgb", "planar")
    raw = rng.integers(0, 65536, (300, 260, 3) if rgb else (300, 260), dtype=np.uint16)
    path = str(tmp_path / "s.tif")
    if kind == "tiled_zlib":
        tifffile.imwrite(path, raw, tile=(64, 64), compression="zlib")
    elif kind == "strips":
        tifffile.imwrite(path, raw, rowsperstrip=37, compression="zlib")
    elif kind == "contiguous":
        tifffile.imwrite(path, raw)
    elif kind == "bigtiff_rgb":
        tifffile.imwrite(path, raw, tile=(32, 48), bigtiff=True, photometric="rgb")
    else:
        tifffile.imwrite(path, np.moveaxis(raw, -1, 0), planarconfig="separate", photometric="rgb", rowsperstrip=50)
    r = readers.open_scan(path, channels=3 if rgb else 1)
    full = raw if rgb else raw[..., None]
    for y, x, h, w in [(0, 0, 300, 260), (-7, 250, 40, 30), (290, -5, 20, 20), (63, 64, 65, 1)]:
        expect = np.zeros((h, w, full.shape[-1]), np.uint16)
        ys, xs = slice(max(y, 0), min(y + h, 300)), slice(max(x, 0), min(x + w, 260))
        expect[ys.start - y : ys.stop - y, xs.start - x : xs.stop - x] = full[ys, xs]
        np.testing.assert_array_equal(r.read_raw_region(y, x, h, w), expect)
        np.testing.assert_array_equal(r.read_region(y, x, h, w), expect.astype(np.float32) * np.float32(1 / 65535))


def test_tiled_tiff_region_reads_only_touched_tiles(tmp_path):
    raw = np.random.default_rng(0).integers(0, 65536, (2048, 2048), dtype=np.uint16)
    path = str(tmp_path / "big.tif")
    tifffile.imwrite(path, raw, tile=(256, 256), compression="zlib", bigtiff=True)
    # The first reader of a scan decides its bit depth from up to 64 windows (once per
    # process); every later reader of it decodes only what its regions touch.
    first = readers.open_scan(path)
    first.read_region(0, 0, 8, 8)
    assert first.segments_read <= 64 + 1 and first.bit_depth == 16
    r = readers.open_scan(path)
    patch = r.read_region(300, 520, 128, 128)  # inside tile row 1, tile column 2
    assert r.segments_read == 1
    np.testing.assert_array_equal(np.round(patch[..., 0] * 65535), raw[300:428, 520:648])
    r.read_region(200, 200, 128, 128)  # straddles 4 tiles
    assert r.segments_read == 1 + 4


def test_miniswhite_tiff_is_inverted(tmp_path):
    raw = _ramp16(8, 8)
    tifffile.imwrite(tmp_path / "w.tif", raw, photometric="miniswhite")
    v = readers.open_scan(tmp_path / "w.tif").read_region(0, 0, 8, 8)[..., 0]
    np.testing.assert_array_equal(v, (65535 - raw).astype(np.float32) * np.float32(1 / 65535))


def test_percentile_normalisation(tmp_path):
    raw = np.linspace(1000, 5000, 100 * 100).reshape(100, 100).astype(np.uint16)
    Image.fromarray(raw).save(tmp_path / "p.png")
    r = readers.open_scan(tmp_path / "p.png", normalization="percentile", percentiles=(10, 90))
    v = r.read_region(0, 0, 100, 100)[..., 0]
    lo, hi = np.percentile(raw, (10, 90))
    np.testing.assert_allclose(v, np.clip((raw - lo) / (hi - lo), 0, 1), atol=1e-6)
    assert r.read_region(-4, -4, 8, 8)[:4].max() == 0.0  # padding stays zero


# ------------------------------------------------------------------------------------------
# Bad inputs: each raises its own DataError subclass naming the file.


def _raises(exc, path, fn):
    with pytest.raises(exc) as info:
        fn()
    assert str(path) in str(info.value) and isinstance(info.value, readers.DataError)


def test_missing_and_non_image_files(tmp_path):
    _raises(readers.UnreadableImageError, tmp_path / "nope.png", lambda: readers.open_scan(tmp_path / "nope.png"))
    (tmp_path / "text.png").write_text("not an image")
    _raises(readers.UnreadableImageError, tmp_path / "text.png", lambda: readers.open_scan(tmp_path / "text.png"))
    (tmp_path / "text.tif").write_text("not an image")
    _raises(readers.UnreadableImageError, tmp_path / "text.tif", lambda: readers.open_scan(tmp_path / "text.tif"))


def test_truncated_png_and_tiff(tmp_path):
    raw = np.random.default_rng(0).integers(0, 65536, (200, 200), dtype=np.uint16)
    Image.fromarray(raw).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    _raises(readers.UnreadableImageError, tmp_path / "cut.png", lambda: readers.open_scan(tmp_path / "cut.png"))
    tifffile.imwrite(tmp_path / "full.tif", raw, tile=(64, 64))
    data = (tmp_path / "full.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) - 5000])
    _raises(readers.UnreadableImageError, tmp_path / "cut.tif", lambda: readers.open_scan(tmp_path / "cut.tif"))


def test_unsupported_depths_and_modes(tmp_path):
    # Float radiographs are read (test_data_bit_depth.py); float colour is not.
    tifffile.imwrite(tmp_path / "f32.tif", np.zeros((8, 8, 3), np.float32), photometric="rgb")
    _raises(readers.UnsupportedImageError, tmp_path / "f32.tif", lambda: readers.open_scan(tmp_path / "f32.tif"))
    tifffile.imwrite(tmp_path / "u32.tif", np.zeros((8, 8), np.uint32))
    _raises(readers.UnsupportedImageError, tmp_path / "u32.tif", lambda: readers.open_scan(tmp_path / "u32.tif"))
    Image.new("CMYK", (8, 8)).save(tmp_path / "cmyk.tiff")  # 4 x 8-bit, but not RGBA
    _raises(readers.UnsupportedImageError, tmp_path / "cmyk.tiff", lambda: readers.open_scan(tmp_path / "cmyk.tiff"))
    Image.new("I", (8, 8)).save(tmp_path / "i32.tif")
    _raises(readers.UnsupportedImageError, tmp_path / "i32.tif", lambda: readers.open_scan(tmp_path / "i32.tif"))


def test_mask_of_the_wrong_size(tmp_path):
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(tmp_path / "m.png")
    assert readers.read_mask(tmp_path / "m.png", (10, 12)).shape == (10, 12)
    _raises(readers.MaskShapeError, tmp_path / "m.png", lambda: readers.read_mask(tmp_path / "m.png", (12, 10)))


def test_array_reader_returns_values_as_stored_or_normalised():
    # Without a bit depth: float values as stored (negative, above 1, any channel count).
    values = np.random.default_rng(0).normal(size=(5, 7, 2))
    r = readers.ArrayScanReader(values)
    assert (r.height, r.width, r.channels, r.bit_depth) == (5, 7, 2, None)
    region = r.read_region(-1, 3, 4, 6)
    assert region.dtype == np.float32 and region.shape == (4, 6, 2)
    np.testing.assert_array_equal(region[1:, :4], values[:3, 3:].astype(np.float32))
    assert not region[0].any() and not region[:, 4:].any()  # zeros outside the image
    with pytest.raises(ValueError, match="as stored"):
        readers.ArrayScanReader(values, channels=1)
    # With one: integer samples normalised and converted like a decoded PNG.
    raw = _ramp16(4, 6)
    n = readers.ArrayScanReader(raw, 16, channels=3, normalization="bit_depth")
    assert n.shape == (4, 6, 3)
    np.testing.assert_array_equal(
        n.read_region(0, 0, 4, 6), np.repeat(readers.normalize(raw[..., None], 0, 65535), 3, -1)
    )
