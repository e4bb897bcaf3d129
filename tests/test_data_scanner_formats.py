"""What scanners and their programs write: compressed TIFFs (LZW, Deflate, PackBits, ...),
16-bit colour PNGs without TensorFlow. Every check compares with an independent reference:
the array that was written, or tifffile's own whole-image decode for lossy codecs."""

import subprocess
import sys

import imagecodecs
import numpy as np
import pytest
import tifffile

from xray_flax.data import readers


def _raw16(h=300, w=260, seed=1):
    return np.random.default_rng(seed).integers(0, 65536, (h, w), dtype=np.uint16)


def _expected(full, y, x, h, w):
    """The window of `full` [H, W, C] at (y, x), zero outside (what read_raw_region returns)."""
    out = np.zeros((h, w, full.shape[-1]), full.dtype)
    ys, xs = slice(max(y, 0), min(y + h, full.shape[0])), slice(max(x, 0), min(x + w, full.shape[1]))
    out[ys.start - y : ys.stop - y, xs.start - x : xs.stop - x] = full[ys, xs]
    return out


WINDOWS = [(0, 0, 300, 260), (-7, 250, 40, 30), (290, -5, 20, 20), (63, 64, 65, 1), (100, 37, 128, 128)]


@pytest.mark.parametrize("compression", ["lzw", "deflate", "packbits", "zstd", "lzma"])
@pytest.mark.parametrize("layout", ["strips", "tiles"])
def test_compressed_16bit_tiff_reads_equal_to_the_written_values(tmp_path, compression, layout):
    raw = _raw16()
    path = str(tmp_path / "s.tif")
    segments = dict(rowsperstrip=37) if layout == "strips" else dict(tile=(64, 48))
    # Photoshop and ImageJ write LZW with horizontal differencing (predictor 2).
    predictor = compression in ("lzw", "deflate")
    tifffile.imwrite(path, raw, compression=compression, predictor=predictor, **segments)
    r = readers.open_scan(path)
    assert (r.height, r.width, r.bit_depth) == (300, 260, 16)
    for y, x, h, w in WINDOWS:
        expect = _expected(raw[..., None], y, x, h, w)
        np.testing.assert_array_equal(r.read_raw_region(y, x, h, w), expect)
        np.testing.assert_array_equal(r.read_region(y, x, h, w), expect.astype(np.float32) * np.float32(1 / 65535))
    r.close()


def test_region_reads_of_a_tiled_lzw_tiff_decode_only_the_touched_tiles(tmp_path):
    raw = _raw16(1024, 1024, seed=2)
    path = str(tmp_path / "big.tif")
    tifffile.imwrite(path, raw, tile=(256, 256), compression="lzw", predictor=True, bigtiff=True)
    r = readers.open_scan(path)
    patch = r.read_raw_region(300, 520, 128, 128)  # inside tile row 1, tile column 2
    assert r.segments_read == 1
    np.testing.assert_array_equal(patch[..., 0], raw[300:428, 520:648])
    np.testing.assert_array_equal(r.read_raw_region(200, 200, 128, 128)[..., 0], raw[200:328, 200:328])
    assert r.segments_read == 1 + 4  # straddles 4 tiles


def test_rgb_lzw_and_jpeg_tiffs(tmp_path):
    rgb = np.random.default_rng(3).integers(0, 256, (96, 80, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "lzw.tif", rgb, photometric="rgb", compression="lzw", tile=(32, 32))
    r = readers.open_scan(tmp_path / "lzw.tif", channels=3)
    np.testing.assert_array_equal(r.read_raw_region(0, 0, 96, 80), rgb)
    # JPEG is lossy: the reference is tifffile's own decode of the whole image.
    tifffile.imwrite(tmp_path / "jpeg.tif", rgb, photometric="rgb", compression="jpeg", tile=(32, 32))
    reference = tifffile.imread(tmp_path / "jpeg.tif")
    r = readers.open_scan(tmp_path / "jpeg.tif", channels=3)
    np.testing.assert_array_equal(r.read_raw_region(0, 0, 96, 80), reference)
    np.testing.assert_array_equal(r.read_raw_region(40, 33, 30, 20), reference[40:70, 33:53])


def test_a_compression_without_any_decoder_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "private.tif"
    tifffile.imwrite(path, np.zeros((64, 64), np.uint8), tile=(32, 32))
    with tifffile.TiffFile(path) as t:
        offset = t.pages[0].tags["Compression"].valueoffset
    data = bytearray(path.read_bytes())
    data[offset : offset + 2] = (60000).to_bytes(2, "little")  # a private code nobody decodes
    path.write_bytes(bytes(data))
    for fn in (readers.open_scan, readers.read_header):
        with pytest.raises(readers.UnsupportedImageError) as info:
            fn(path)
        assert str(path) in str(info.value) and "no decoder for TIFF compression" in str(info.value)


def test_16bit_colour_png_is_read_at_full_depth_without_tensorflow(tmp_path):
    rng = np.random.default_rng(4)
    rgb = rng.integers(0, 65536, (40, 30, 3), dtype=np.uint16)
    rgba = rng.integers(0, 65536, (40, 30, 4), dtype=np.uint16)
    (tmp_path / "rgb.png").write_bytes(imagecodecs.png_encode(rgb))
    (tmp_path / "rgba.png").write_bytes(imagecodecs.png_encode(rgba))
    # A fresh interpreter: importing and using the readers must not import TensorFlow.
    script = f"""
import sys
import numpy as np
from xray_flax.data import readers
rgb = readers.open_scan({str(tmp_path / "rgb.png")!r}, channels=3)
rgba = readers.open_scan({str(tmp_path / "rgba.png")!r}, channels=3)
np.save({str(tmp_path / "rgb.npy")!r}, rgb.read_raw_region(0, 0, 40, 30))
np.save({str(tmp_path / "rgba.npy")!r}, rgba.read_raw_region(0, 0, 40, 30))
assert rgb.bit_depth == 16 and "tensorflow" not in sys.modules, sorted(sys.modules)
"""
    subprocess.run([sys.executable, "-c", script], check=True)
    np.testing.assert_array_equal(np.load(tmp_path / "rgb.npy"), rgb)
    np.testing.assert_array_equal(np.load(tmp_path / "rgba.npy"), rgba)  # alpha kept in the raw samples
