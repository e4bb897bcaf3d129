"""Whole-scan stitching: coverage, seams, borders, batching, streaming output."""

from __future__ import annotations

import importlib.util
import pathlib

import numpy as np
import pytest

from xray_flax.data import tiling
from xray_flax.data.readers import ArrayScanReader
from xray_flax.report import stitch


class CountingFn:
    """anomaly_fn recording batch shapes; returns channel 0 of each tile (identity-like)."""

    def __init__(self, transform=lambda tiles: tiles[..., 0]):
        self.shapes = []
        self.transform = transform

    def __call__(self, tiles):
        self.shapes.append(tiles.shape)
        return self.transform(tiles)


@pytest.mark.parametrize("window", stitch.WINDOWS)
@pytest.mark.parametrize("height,width", [(100, 77), (33, 50), (20, 12), (64, 64)])
def test_constant_map_is_constant_everywhere(window, height, width):
    reader = ArrayScanReader(np.zeros((height, width), np.float32))
    fn = CountingFn(lambda tiles: np.full(tiles.shape[:3], 0.7, np.float32))
    out = stitch.stitch_anomaly_map(reader, fn, patch_size=32, stride=12, batch_size=5, window=window)
    assert out.shape == (height, width) and out.dtype == np.float32
    np.testing.assert_allclose(out, 0.7, rtol=1e-6)


@pytest.mark.parametrize("window", ["hann", "triangle"])
def test_identity_fn_reconstructs_the_image(window):
    yy, xx = np.mgrid[0:150, 0:91].astype(np.float32)
    image = np.stack([np.sin(yy / 9.0) * np.cos(xx / 13.0), xx / 91.0], axis=-1).astype(np.float32)
    fn = CountingFn()
    out = stitch.stitch_anomaly_map(ArrayScanReader(image), fn, 40, 15, batch_size=4, window=window)
    np.testing.assert_allclose(out, image[..., 0], atol=1e-5)
    # Exactly batch_size tiles per call, channels passed through.
    assert set(fn.shapes) == {(4, 40, 40, 2)}


def test_blending_hides_seams_between_disagreeing_tiles():
    # Each tile reports its own origin-dependent constant: a flat window leaves steps at
    # tile edges; the Hann window turns them into a smooth ramp.
    image = np.zeros((64, 200), np.float32)
    reader = ArrayScanReader(image)

    def per_tile_constant(tiles):
        per_tile_constant.calls += 1
        values = np.arange(len(tiles)) + per_tile_constant.calls * len(tiles)
        return np.broadcast_to(values[:, None, None] % 2, tiles.shape[:3]).astype(np.float32)

    def max_step(window):
        per_tile_constant.calls = 0
        out = stitch.stitch_anomaly_map(reader, per_tile_constant, 64, 16, batch_size=1, window=window)
        return np.abs(np.diff(out[32])).max()

    assert max_step("flat") > 0.2
    assert max_step("hann") < 0.1


def _origins(length, patch, stride):
    # The grid stitch_anomaly_map uses.
    return tiling.tile_starts(length, patch, stride, "shift").tolist()


def test_tiles_cover_every_pixel_and_stay_inside():
    for length, patch, stride in [(100, 32, 12), (32, 32, 8), (31, 32, 8), (1000, 256, 256), (257, 256, 128)]:
        origins = _origins(length, patch, stride)
        covered = np.zeros(length, bool)
        for o in origins:
            covered[o : o + patch] = True
        assert covered.all(), (length, patch, stride)
        assert origins == sorted(set(origins))
        assert origins[-1] + patch >= length
        if length >= patch:
            assert origins[-1] + patch == length
        assert max(np.diff(origins), default=0) <= stride
    with pytest.raises(ValueError, match="gaps"):
        stitch.stitch_anomaly_map(ArrayScanReader(np.zeros((100, 100))), lambda t: t[..., 0], 10, 11, 1)


def test_every_tile_visited_once_and_progress_reported():
    reader = ArrayScanReader(np.zeros((70, 45), np.float32))
    seen = []

    def record(tiles):
        seen.append(tiles.copy())
        return tiles[..., 0]

    progress = []
    stitch.stitch_anomaly_map(reader, record, 20, 10, batch_size=4, progress=lambda d, t: progress.append((d, t)))
    n_tiles = len(_origins(70, 20, 10)) * len(_origins(45, 20, 10))
    assert progress[-1] == (n_tiles, n_tiles)
    assert len(seen) == -(-n_tiles // 4)
    # Padding tiles of the last batch are zero.
    padding = len(seen) * 4 - n_tiles
    if padding:
        assert not seen[-1][-padding:].any()


def test_writes_into_a_memmap(tmp_path):
    image = np.random.default_rng(0).random((90, 70)).astype(np.float32)
    out = np.lib.format.open_memmap(tmp_path / "map.npy", mode="w+", dtype=np.float32, shape=(90, 70))
    result = stitch.stitch_anomaly_map(ArrayScanReader(image), lambda t: t[..., 0], 32, 16, 3, out=out)
    assert result is out
    out.flush()
    np.testing.assert_allclose(np.load(tmp_path / "map.npy"), image, atol=1e-5)


def test_bad_anomaly_fn_output_is_reported():
    reader = ArrayScanReader(np.zeros((40, 40), np.float32))
    with pytest.raises(ValueError, match="anomaly_fn must return"):
        stitch.stitch_anomaly_map(reader, lambda t: t[:, :10, :10, 0], 32, 16, 2)


def test_blend_window_is_positive_and_symmetric():
    for name in stitch.WINDOWS:
        w = stitch.blend_window(name, 17)
        assert w.min() > 0 and np.allclose(w, w[::-1, ::-1]) and np.allclose(w, w.T)
    with pytest.raises(ValueError, match="unknown blend window"):
        stitch.blend_window("cosine", 8)


@pytest.mark.parametrize("height,width,stride", [(90, 70, 10), (45, 130, 32), (20, 25, 7)])
def test_streaming_equals_full_canvas_blend(height, width, stride):
    # Tile maps that differ from tile to tile (unlike the identity), so a band flushed too
    # early or blended with the wrong weights would differ from the full-canvas reference.
    patch = 32
    rng = np.random.default_rng(height)
    image = rng.random((height, width)).astype(np.float32)

    def tile_dependent(tiles):
        return tiles[..., 0] * 2.0 + tiles[..., 0].mean(axis=(1, 2), keepdims=True)

    got = stitch.stitch_anomaly_map(ArrayScanReader(image), tile_dependent, patch, stride, 3)
    weights = stitch.blend_window("hann", patch).astype(np.float64)
    reader = ArrayScanReader(image)
    rows, cols = _origins(height, patch, stride), _origins(width, patch, stride)
    canvas = np.zeros((rows[-1] + patch, cols[-1] + patch))
    total = np.zeros_like(canvas)
    for y in rows:
        for x in cols:
            tile = reader.read_region(y, x, patch, patch)[None]
            canvas[y : y + patch, x : x + patch] += tile_dependent(tile)[0] * weights
            total[y : y + patch, x : x + patch] += weights
    expected = (canvas / total)[:height, :width]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_memory_benchmark_runs_at_small_scale(tmp_path):
    # The real run (5000 x 3000, docs/evaluation.md) takes ~10 s; this proves the script
    # works end to end: TIFF writer, lazy reader, jitted anomaly_fn, exact map, reports.
    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_predict_memory.py"
    spec = importlib.util.spec_from_file_location("bench_predict_memory", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(
        [
            "--height",
            "300",
            "--width",
            "200",
            "--patch",
            "64",
            "--stride",
            "32",
            "--batch",
            "4",
            "--workdir",
            str(tmp_path),
        ]
    )
    assert (result["height"], result["width"]) == (300, 200)
    assert result["max_abs_map_error"] < 1e-5
    assert 0 < result["peak_rss_mib_end"] < 2048
    assert (tmp_path / "report.html").exists() and (tmp_path / "map.tif").exists()
