"""--mode export (xray_flax/export.py): the exported StableHLO gives the checkpoint's maps and
scores at any batch size, and loads with jax and numpy alone (xray_flax/exported.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from configs import tiny
from xray_flax import api, export, exported, workflow
from xray_flax.report import regions

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """trained(detector) -> a tiny workdir of it, trained once for this module."""
    root = tmp_path_factory.mktemp("trained")
    workdirs: dict[str, str] = {}

    def get(detector: str) -> str:
        if detector not in workdirs:
            config = tiny.get_config(detector)
            config.data.simulated.cache_dir = str(root.parent / "simulated")  # shared by tests of a session
            config.train.predict_test_scans = 0
            config.train.image_summary_every = 0
            workdirs[detector] = str(root / detector)
            workflow.train_and_evaluate(config, workdirs[detector])
        return workdirs[detector]

    return get


def tiles(n: int) -> np.ndarray:
    return np.random.default_rng(n).random((n, 32, 32, 1), dtype=np.float32)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "xray_flax.main", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("detector", ["highpass", "padim"])
def test_exported_maps_equal_the_checkpoints(tmp_path, trained, detector):
    workdir = trained(detector)
    out = str(tmp_path / "export")
    if detector == "highpass":  # the command line, with the workdir's own config
        done = cli("--mode=export", f"--workdir={workdir}", f"--output_dir={out}", "--export_platforms=cuda")
        assert done.returncode == 0, done.stderr
    else:
        workflow.run(tiny.get_config(detector), workdir, "export", output_dir=out)
    with open(os.path.join(out, exported.MANIFEST), encoding="utf-8") as f:
        manifest = json.load(f)
    assert manifest["detector"] == detector and manifest["patch_size"] == 32 and manifest["channels"] == 1
    assert manifest["input"]["shape"] == ["batch", 32, 32, 1]
    assert [a["platforms"] for a in manifest["artefacts"]] == (
        [["cpu"], ["cuda"]] if detector == "highpass" else [["cpu"], ["cuda", "tpu"]]
    )
    assert manifest["provenance"]["config_sha256"] and manifest["versions"]["jax"] and manifest["normalization"]
    assert manifest["platforms"] == (["cpu", "cuda"] if detector == "highpass" else ["cpu", "cuda", "tpu"])

    checkpoint = api.load(workdir)
    model = exported.load(out)
    assert model.threshold == pytest.approx(checkpoint.threshold)
    for n in (1, 3):  # a symbolic batch size
        want, got = checkpoint.score(tiles(n)), model(tiles(n))
        np.testing.assert_allclose(got["map"], want["map"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got["score"], want["score"], rtol=1e-5, atol=1e-5)
    # Through the API, whole images are stitched as from the workdir.
    painting = np.random.default_rng(7).random((50, 70), dtype=np.float32)
    np.testing.assert_allclose(api.load(out).score(painting)["map"], checkpoint.score(painting)["map"], atol=1e-5)


def test_an_export_loads_without_the_training_code(tmp_path, trained):
    workdir = trained("highpass")
    out = str(tmp_path / "export")
    export.export(tiny.get_config("highpass"), workdir, out, platforms=[])
    np.save(tmp_path / "tiles.npy", tiles(2))
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        import xray_flax
        from xray_flax import exported
        tiles = np.load({str(tmp_path / "tiles.npy")!r})
        maps = exported.load({out!r})(tiles)["map"]
        via_api = xray_flax.load({out!r}).score(tiles)["map"]
        assert np.array_equal(maps, via_api)
        np.save({str(tmp_path / "maps.npy")!r}, maps)
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("flax", "optax", "orbax", "tensorflow")
                       or m.startswith(("xray_flax.detectors", "xray_flax.train", "xray_flax.scoring")))
        print("heavy:", heavy)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=str(tmp_path), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "heavy: []" in done.stdout
    want = api.load(workdir).score(tiles(2))["map"]
    np.testing.assert_allclose(np.load(tmp_path / "maps.npy"), want, rtol=1e-5, atol=1e-5)


def test_an_export_cuts_regions_inside_the_painting_as_predict_does(tmp_path, trained):
    """The manifest carries the background rule: an export's predict_file finds the regions the
    workdir's finds (inside the painting), not the frame the film margin makes of an unmasked map."""
    workdir = trained("highpass")
    out = str(tmp_path / "export")
    manifest = export.export(tiny.get_config("highpass"), workdir, out, platforms=[])
    assert manifest["background"] == tiny.get_config("highpass").data.background.to_dict()
    rng = np.random.default_rng(3)
    scan = np.zeros((160, 200), np.float32)  # a dark film margin around the painting
    scan[20:140, 24:176] = 0.5 + 0.05 * rng.standard_normal((120, 152))
    scan[60:70, 24:40] = 1.0  # a defect touching the painting's left edge
    path = str(tmp_path / "scan.png")
    Image.fromarray((np.clip(scan, 0, 1) * 65535).astype(np.uint16)).save(path)
    from_workdir = api.load(workdir).predict_file(path, str(tmp_path / "predicted"))
    from_export = api.load(out).predict_file(path)
    boxes = [[(r["x0"], r["y0"], r["x1"], r["y1"]) for r in p.regions] for p in (from_workdir, from_export)]
    assert boxes[0] == boxes[1] and len(boxes[1]) == 1
    x0, y0, x1, y1 = boxes[1][0]
    assert 24 <= x0 and x1 <= 45 and 55 <= y0 and y1 <= 75  # the defect, not the frame
    unmasked = regions.find_regions(from_export.map, from_export.threshold, 64)
    assert any(r.x0 < 24 and r.x1 > 176 for r in unmasked)  # what the margin gives without the mask


def test_unknown_platforms_are_a_usage_error():
    assert export.resolve_platforms(["cpu", "CUDA", "cuda"]) == [["cpu"], ["cuda"]]
    assert export.resolve_platforms([]) == [["cpu"]]
    with pytest.raises(export.errors.UsageError, match="gpu"):
        export.resolve_platforms(["gpu"])
