"""The Python API (xray_flax/api.py): docs/api.md's example runs as written, arrays are read as
the scan readers read files."""

from __future__ import annotations

import json
import os
import re
import types

import numpy as np
import pytest
from PIL import Image

from configs import tiny
from xray_flax import api, normalization, predict, scoring, workdir_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def docs_example() -> str:
    with open(os.path.join(REPO, "docs", "api.md"), encoding="utf-8") as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    assert blocks, "docs/api.md has no ```python block"
    return blocks[0]


def test_the_docs_example_runs_as_written(tmp_path, monkeypatch):
    """The notebook of docs/api.md, run in a fresh folder: train, load, score arrays, predict a file."""
    real = tiny.get_config

    def get_config(detector=None):
        config = real(detector)
        config.data.simulated.cache_dir = str(tmp_path.parent / "simulated")  # shared by tests of a session
        return config

    monkeypatch.setattr(tiny, "get_config", get_config)
    monkeypatch.chdir(tmp_path)
    os.makedirs("scans")
    painting = (np.random.default_rng(1).random((90, 120)) * 65535).astype(np.uint16)
    Image.fromarray(painting).save("scans/painting.png")

    namespace: dict = {}
    exec(compile(docs_example(), "docs/api.md", "exec"), namespace)  # noqa: S102 - our own documentation

    model, out, whole, scan = namespace["model"], namespace["out"], namespace["whole"], namespace["scan"]
    assert out["map"].shape == (4, 32, 32) and out["score"].shape == (4,)
    assert whole["map"].shape == (1, 100, 140) and whole["score"].shape == (1,)
    assert scan.map.shape == (90, 120)
    assert os.path.isfile(os.path.join(scan.output_dir, "report.html"))
    # Training from Python logs to the workdir's file as the command line does.
    log_text = open(os.path.join("runs", "highpass", "log.txt"), encoding="utf-8").read()
    assert "run started:" in log_text and "run ended after" in log_text
    # The same tile given as uint16, as float in [0, 1] and alone as [H, W] scores the same.
    tiles = namespace["tiles"]
    as_float = model.score(tiles.astype(np.float32) / 65535)
    alone = model.score(tiles[0, ..., 0])
    np.testing.assert_allclose(as_float["map"], out["map"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(alone["score"], out["score"][:1], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("shape", "count", "image_shape"),
    [
        ((32, 40), 1, (32, 40)),
        ((32, 40, 3), 1, (32, 40, 3)),
        ((5, 32, 40), 5, (32, 40)),
        ((2, 32, 40, 1), 2, (32, 40, 1)),
    ],
)
def test_array_shapes(shape, count, image_shape):
    images = api.as_image_list(np.zeros(shape, np.float32))
    assert len(images) == count and images[0].shape == image_shape


def test_arrays_are_scaled_as_the_readers_scale_files():
    grey8 = np.full((4, 4), 255, np.uint8)
    np.testing.assert_allclose(api.read_array(grey8, 1), 1.0)
    grey16 = np.full((4, 4), 65535 // 5, np.uint16)
    np.testing.assert_allclose(api.read_array(grey16, 1), 0.2, atol=1e-5)
    rgb = np.zeros((4, 4, 3), np.float32)
    rgb[..., 1] = 1.0
    np.testing.assert_allclose(api.read_array(rgb, 1)[..., 0], 0.587, atol=1e-6)  # luminance, as readers
    assert api.read_array(np.ones((4, 4), np.float32), 3).shape == (4, 4, 3)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        api.read_array(np.full((4, 4), 200.0), 1)
    with pytest.raises(ValueError, match="uint8, uint16"):
        api.read_array(np.zeros((4, 4), np.int32), 1)


def test_predict_file_draws_the_overlay_predict_draws(tmp_path, monkeypatch):
    """From a workdir, predict_file passes predict_scan the normal level evaluate saved (the
    overlay's colour starts there), as --mode predict does: the same overlay PNG."""
    config = tiny.get_config("highpass")
    workdir = tmp_path / "run"
    workdir.mkdir()
    heatmap = {"normal_level": 0.2, "normal_level_quantile": 0.999, "normal_level_tiles": 3}
    (workdir / "metrics.json").write_text(json.dumps({"heatmap": heatmap}))
    # A NumPy stand-in for the restored model: its map is 1 - tile.
    infer = types.SimpleNamespace(
        batch_size=4,
        anomaly_maps=lambda tiles: 1.0 - tiles[..., 0],
        normalization=normalization.IDENTITY,
    )
    restored = (types.SimpleNamespace(name="stub"), infer, {"step": 1}, str(workdir / "best" / "1"))
    monkeypatch.setattr(workdir_config, "load", lambda _: config)
    monkeypatch.setattr(scoring, "restore_inferencer", lambda *args: restored)
    monkeypatch.setattr(predict, "restore_inferencer", lambda *args: restored)
    pixels = np.full((90, 120), 0.7, np.float32)
    pixels[30:50, 40:70] = 0.45  # scored 0.55: coloured from the normal level 0.2 on, not only above 0.5
    scan = str(tmp_path / "painting.png")
    Image.fromarray(np.round(pixels * 65535).astype(np.uint16)).save(scan)

    result = api.load(str(workdir)).predict_file(scan, str(tmp_path / "api"))
    predict.predict(config, str(workdir), [scan], str(tmp_path / "cli"))
    from_api = np.asarray(Image.open(tmp_path / "api" / "overlay.png"))
    np.testing.assert_array_equal(from_api, np.asarray(Image.open(tmp_path / "cli" / "painting" / "overlay.png")))
    assert "normal level 0.2 (the 99.9th percentile" in (tmp_path / "api" / "report.html").read_text()
    assert result.regions and result.threshold == 0.5
