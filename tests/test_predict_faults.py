"""predict's outputs under faults: a full disk, NaN maps, constant maps, killed runs.

Every case calls `predict.predict_scan` in-process with a NumPy stand-in for the jitted
model (an object with `batch_size` and `anomaly_maps`), so no checkpoint or compile is
needed; the disk faults are injected by monkeypatching the allocation and the writers.
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import tifffile
from PIL import Image

from configs import tiny
from xray_flax import checkpoint, files, predict
from xray_flax.data import readers
from xray_flax.report import html, overlay, regions, stitch

CHECKPOINT = "/runs/x/best/12"
OUTPUTS = {"anomaly_map.tif", "regions.json", "regions.csv", "overlay.png", "report.html"}


def model(fn=lambda tiles: 1.0 - tiles[..., 0], batch_size=4):
    return types.SimpleNamespace(batch_size=batch_size, anomaly_maps=fn)


@pytest.fixture(scope="module")
def config():
    config = tiny.get_config("highpass")
    config.eval.predict.min_region_area = 4
    return config


@pytest.fixture
def scan(tmp_path):
    """A 16-bit 300 x 270 scan (both sides >= 256, so the map TIFF is tiled) with a bright spot."""
    rng = np.random.default_rng(0)
    pixels = (rng.random((300, 270)) * 20000 + 20000).astype(np.uint16)
    pixels[100:130, 50:90] = 65535
    path = str(tmp_path / "scan.tif")
    tifffile.imwrite(path, pixels)
    return path


def run(config, scan, out_dir, fn=None):
    infer = model() if fn is None else model(fn)
    return predict.predict_scan(infer, scan, str(out_dir), config, 0.5, {"checkpoint": CHECKPOINT})


def snapshot(folder):
    """{relative path: bytes} of every file under `folder`."""
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, folder)] = f.read()
    return found


def test_map_is_zlib_tiled_tiff_equal_to_the_stitched_map_and_no_scratch_remains(config, scan, tmp_path):
    out = tmp_path / "pred" / "scan"
    summary = run(config, scan, out)
    assert set(os.listdir(out)) == OUTPUTS  # no staging folder, no scratch, no temporaries
    with tifffile.TiffFile(out / "anomaly_map.tif") as tif:
        page = tif.pages[0]
        assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE  # what tifffile calls zlib
        assert page.is_tiled and page.tilewidth == 256
        written = page.asarray()
    stride = config.data.patch_size // 2  # overlap 0.5
    expected = stitch.stitch_anomaly_map(
        readers.open_scan(scan, config.data.channels, config.data.normalization),
        model().anomaly_maps,
        config.data.patch_size,
        stride,
        4,
    )
    assert written.dtype == np.float32
    np.testing.assert_array_equal(written, expected)
    assert summary["anomaly_map"] == str(out / "anomaly_map.tif")
    assert summary["max_score"] == float(expected.max()) and "warnings" not in summary
    # 1 - tile is smooth: compression must actually shrink it.
    assert os.path.getsize(out / "anomaly_map.tif") < expected.nbytes


def test_npy_map_reads_back_equal_and_its_space_is_reserved(config, scan, tmp_path, monkeypatch):
    reserved = []
    real = os.posix_fallocate
    monkeypatch.setattr(os, "posix_fallocate", lambda fd, off, n: (reserved.append(n), real(fd, off, n))[1])
    config = config.copy_and_resolve_references()
    config.eval.predict.map_format = "npy"
    out = tmp_path / "scan"
    run(config, scan, out)
    assert set(os.listdir(out)) == OUTPUTS - {"anomaly_map.tif"} | {"anomaly_map.npy"}
    written = np.load(out / "anomaly_map.npy")
    assert written.shape == (300, 270) and written.dtype == np.float32
    # The whole data part (plus the .npy header) was allocated before stitching.
    assert reserved and reserved[0] >= 300 * 270 * 4


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _partial_then_enospc(target):
    """Writes part of `target`, then finds the disk full (as a real full disk would)."""
    with open(target, "wb") as f:
        f.write(b"partial")
    raise OSError(errno.ENOSPC, "No space left on device")


def _open_that_fills_the_disk(path, mode="r", *args, **kwargs):
    f = open(path, mode, *args, **kwargs)
    if "w" in mode:
        real_write = f.write

        def write(data):
            real_write(data[: len(data) // 2])
            f.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

        f.write = write
    return f


FULL_DISK_AT = {
    # posix_fallocate of the scratch map: a SIGBUS on a full disk turned into an error up front.
    "reserve": lambda mp: mp.setattr(os, "posix_fallocate", _enospc),
    # Free space for scratch + compressed map, checked before stitching.
    "free space": lambda mp: mp.setattr(files, "free_bytes", lambda directory: 1 << 20),
    "map tiff": lambda mp: mp.setattr(tifffile, "imwrite", lambda target, *a, **k: _partial_then_enospc(target)),
    "overlay png": lambda mp: mp.setattr(Image.Image, "save", lambda self, fp, *a, **k: _partial_then_enospc(fp)),
    "regions": lambda mp: mp.setattr(regions, "open", _open_that_fills_the_disk, raising=False),
    "html": lambda mp: mp.setattr(html, "open", _open_that_fills_the_disk, raising=False),
}


@pytest.mark.parametrize("where", FULL_DISK_AT)
def test_full_disk_is_one_line_error_naming_the_path_and_leaves_nothing_partial(
    config, scan, tmp_path, monkeypatch, where
):
    pred = tmp_path / "pred"
    run(config, scan, pred / "earlier")  # an earlier scan's complete results
    out = pred / "scan"
    out.mkdir()
    (out / "anomaly_map.tif").write_bytes(b"a previous run's map")  # must survive as it was
    before = snapshot(pred)
    FULL_DISK_AT[where](monkeypatch)
    with pytest.raises(files.DiskSpaceError) as caught:
        run(config, scan, out)
    message = str(caught.value)
    assert "\n" not in message and "not enough disk space" in message
    assert str(out) in message, message
    assert ".partial" not in message and ".tmp" not in message  # the name the user asked for
    if where in ("reserve", "free space"):
        assert "needs" in message and "free" in message
    assert caught.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert snapshot(pred) == before  # nothing new, nothing partial, nothing removed


def test_nan_tile_map_names_scan_and_checkpoint_and_writes_nothing(config, scan, tmp_path):
    def corrupt(tiles):
        maps = 1.0 - tiles[..., 0]
        maps[1, 3, 5] = np.nan
        return maps

    out = tmp_path / "scan"
    with pytest.raises(checkpoint.CheckpointError) as caught:
        run(config, scan, out, corrupt)
    message = str(caught.value)
    assert scan in message and CHECKPOINT in message and "NaN" in message and "\n" not in message
    assert os.listdir(out) == []


def test_nan_pixels_in_the_scan_are_a_data_error_naming_it(config, scan, tmp_path, monkeypatch):
    pixels = np.full((64, 70, 1), 0.5, np.float32)
    pixels[40, 60] = np.inf
    monkeypatch.setattr(readers, "open_scan", lambda *a, **k: readers.ArrayScanReader(pixels))
    out = tmp_path / "scan"
    with pytest.raises(readers.DataError) as caught:
        run(config, scan, out, lambda tiles: tiles[..., 0])
    assert caught.value.path == scan and "NaN or infinite pixels" in str(caught.value)
    assert os.listdir(out) == []


def test_stitch_stops_at_the_first_non_finite_tile_and_on_overflow():
    reader = readers.ArrayScanReader(np.zeros((40, 40), np.float32))

    def nan_at_second_tile(tiles):
        maps = np.zeros(tiles.shape[:3], np.float32)
        maps[1, 3, 5] = -np.inf
        return maps

    with pytest.raises(stitch.NonFiniteMapError) as caught:
        stitch.stitch_anomaly_map(reader, nan_at_second_tile, 16, 8, batch_size=3)
    # Named by the tile's origin, as soon as its batch comes back (not when its rows are final).
    assert (caught.value.y, caught.value.x, caught.value.input_finite) == (0, 8, True)
    # Finite tiles whose blended sum overflows float32 are caught when rows are finalised.
    huge = lambda tiles: np.full(tiles.shape[:3], 3e38, np.float32)  # noqa: E731
    with np.errstate(over="ignore"), pytest.raises(stitch.NonFiniteMapError) as caught:
        stitch.stitch_anomaly_map(reader, huge, 16, 4, batch_size=3, window="flat")
    assert caught.value.input_finite


def test_constant_map_warns_in_log_summary_and_report(config, scan, tmp_path, caplog):
    out = tmp_path / "scan"
    with caplog.at_level(logging.WARNING, logger="xray_flax.predict"):
        summary = run(config, scan, out, lambda tiles: np.zeros(tiles.shape[:3], np.float32))
    assert "constant" in caplog.text and CHECKPOINT in caplog.text
    assert "constant" in summary["warnings"][0]
    assert "anomaly map is constant" in (out / "report.html").read_text()
    assert set(os.listdir(out)) == OUTPUTS  # suspicious but legit: still written


def test_staging_folders_of_dead_runs_are_removed_live_ones_kept(config, scan, tmp_path):
    out = tmp_path / "scan"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_dir = out / f".partial.{int(dead.stdout)}"
    live_dir = out / f".partial.{os.getppid()}"  # the test runner's parent: alive
    for folder in (dead_dir, live_dir):
        folder.mkdir(parents=True)
        (folder / "anomaly_map.scratch.f32").write_bytes(b"\0" * 64)
    run(config, scan, out)
    assert not dead_dir.exists() and live_dir.exists()


def test_atomic_output_keeps_the_old_file_on_a_full_disk(tmp_path):
    path = tmp_path / "predictions.json"
    path.write_text("old")
    with pytest.raises(files.DiskSpaceError) as caught:
        with files.atomic_output(path, "the prediction summary") as tmp:
            with open(tmp, "w") as f:
                f.write("new, half")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert str(path) in str(caught.value) and "prediction summary" in str(caught.value)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["predictions.json"]
    # Other errors pass through unchanged, and are cleaned up the same way.
    with pytest.raises(KeyError):
        with files.atomic_output(path) as tmp:
            open(tmp, "w").close()
            raise KeyError("x")
    assert os.listdir(tmp_path) == ["predictions.json"]


def test_write_anomaly_map_from_a_memmap_and_unknown_suffix(tmp_path):
    data = np.memmap(tmp_path / "m.f32", np.float32, "w+", shape=(300, 260))
    data[:] = np.linspace(0, 1, data.size, dtype=np.float32).reshape(data.shape)
    overlay.write_anomaly_map(tmp_path / "a.tif", data)
    np.testing.assert_array_equal(overlay.read_anomaly_map(tmp_path / "a.tif"), data)
    with pytest.raises(ValueError, match="use .tif"):
        overlay.write_anomaly_map(tmp_path / "a.png", data)
    assert sorted(os.listdir(tmp_path)) == ["a.tif", "m.f32"]
