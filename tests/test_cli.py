"""End to end through the command line, for every registered detector: train (or fit) ->
evaluate -> predict on its tiny config (`configs/tiny.py:<name>`). A detector added to the
registry is covered here without touching this file.

In CI, the training run (which also evaluates the best checkpoint and predicts a test scan in
that process) runs for the paper's model and the fit-kind detectors (`CI_TRAINED`, a list kept
by hand: a new fit-kind detector trains with `-m slow` until it is added there); the
gradient-trained baselines with pretrained backbones (45-110 s each on 2 cores) train with
`-m slow`, their train steps being tested in their own files. The separate evaluate / predict /
evaluate-any-checkpoint processes run in CI for one detector of each kind (`CI_DETECTORS`) and
for the others with `-m slow`: that code is shared and never branches on the detector, and
each subprocess costs several seconds of start-up and compilation on 2 cores."""

from __future__ import annotations

import csv
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from PIL import Image

from configs import tiny
from xray_flax import detectors

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args, timeout=900):
    result = subprocess.run(
        [sys.executable, "-m", "xray_flax.main", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stderr[-5000:]
    return result


CI_DETECTORS = ("draem", "patchcore")  # the paper's model (gradient kind) and a memory bank (fit kind)
# The paper's model and the fit-kind detectors (a few seconds to fit on the tiny config).
CI_TRAINED = ("draem", "highpass", "padim", "patch_nn", "patchcore")
_TRAINED: dict[str, tuple[str, subprocess.CompletedProcess]] = {}


def _train_once(name: str, tmp_path_factory) -> tuple[str, subprocess.CompletedProcess]:
    if name not in _TRAINED:
        workdir = str(tmp_path_factory.mktemp(f"cli_{name}") / "run")
        cache = str(tmp_path_factory.getbasetemp() / "simulated")
        result = run_cli(
            "--config", f"configs/tiny.py:{name}", "--workdir", workdir, f"--config.data.simulated.cache_dir={cache}"
        )
        _TRAINED[name] = workdir, result
    return _TRAINED[name]


def _slow_unless_in(ci_names: tuple[str, ...]) -> list:
    """Every registered detector as a fixture parameter, marked slow unless CI runs it."""
    return [pytest.param(n, marks=() if n in ci_names else pytest.mark.slow) for n in detectors.names()]


@pytest.fixture(scope="module", params=_slow_unless_in(CI_TRAINED))
def trained(request, tmp_path_factory):
    """Every detector, trained through the command line."""
    return _train_once(request.param, tmp_path_factory)


@pytest.fixture(scope="module", params=_slow_unless_in(CI_DETECTORS))
def trained_any(request, tmp_path_factory):
    """The same runs, for the tests of the separate evaluate/predict processes."""
    return _train_once(request.param, tmp_path_factory)


def _detector_of(workdir: str):
    config = json.load(open(os.path.join(workdir, "config.json")))
    return config["detector"], detectors.module(config["detector"])


def test_train_writes_checkpoints_logs_metrics_and_heatmaps(trained):
    workdir, result = trained
    for name in ("config.json", "splits.json", "metrics.json", "metrics.md", "scores.csv", "heatmaps_test_patches.png"):
        assert os.path.isfile(os.path.join(workdir, name)), name
    assert glob.glob(os.path.join(workdir, "events.out.tfevents.*"))
    assert os.listdir(os.path.join(workdir, "best"))
    report = json.load(open(os.path.join(workdir, "metrics.json")))
    test = report["test"]
    for key in ("roc_auc", "accuracy", "precision", "recall", "f1", "seconds_per_patch"):
        assert isinstance(test[key], float), key
    assert 0 <= test["roc_auc"] <= 1 and test["seconds_per_patch"] > 0
    assert test["n_anomalous"] > 0 and test["n_normal"] > 0
    assert "ROC-AUC" in open(os.path.join(workdir, "metrics.md")).read()
    assert "/s" in result.stderr and "ETA" in result.stderr  # progress lines
    # Every scored tile of val and test is listed, with the prediction at the chosen threshold.
    with open(os.path.join(workdir, "scores.csv")) as f:
        rows = list(csv.DictReader(f))
    test_rows = [r for r in rows if r["split"] == "test"]
    assert len(test_rows) == test["n"] and {r["split"] for r in rows} == {"val", "test"}
    predicted = sum(int(r["predicted_anomalous"]) for r in test_rows if r["label"] in ("0", "1"))
    assert predicted == test["tp"] + test["fp"]
    assert all(float(r["score"]) >= test["threshold"] for r in test_rows if r["predicted_anomalous"] == "1")
    # The job ends with a whole-scan prediction of a test scan.
    scans = json.load(open(os.path.join(workdir, "predictions", "predictions.json")))
    assert len(scans) == 1 and os.path.isfile(scans[0]["report"])
    with Image.open(os.path.join(workdir, "heatmaps_test_patches.png")) as im:
        assert im.size[0] > 100 and im.size[1] > 100


def test_evaluate_reproduces_metrics_from_the_checkpoint_alone(trained_any, tmp_path):
    workdir, _ = trained_any
    run_cli("--workdir", workdir, "--mode", "evaluate", "--output_dir", str(tmp_path))
    original = json.load(open(os.path.join(workdir, "metrics.json")))["test"]
    again = json.load(open(tmp_path / "metrics.json"))["test"]
    for key in original:
        if key != "seconds_per_patch":
            assert again[key] == original[key], key


def test_predict_writes_map_overlay_regions_and_report_for_a_16bit_scan(trained_any, tmp_path):
    workdir, _ = trained_any
    config = json.load(open(os.path.join(workdir, "config.json")))
    rng = np.random.default_rng(0)
    scan = (rng.random((150, 230)) * 20000 + 20000).astype(np.uint16)
    scan[60:80, 100:130] = 65535  # a bright foreign object
    path = str(tmp_path / "scan16.tif")
    tifffile.imwrite(path, scan)
    out = tmp_path / "pred"
    run_cli("--workdir", workdir, "--mode", "predict", "--inputs", path, "--output_dir", str(out))
    scan_dir = out / "scan16"
    anomaly_map = tifffile.imread(scan_dir / "anomaly_map.tif")
    assert anomaly_map.shape == (150, 230) and anomaly_map.dtype == np.float32
    assert np.isfinite(anomaly_map).all()
    name, _ = _detector_of(workdir)
    if name == "draem":  # softmax probabilities: no normalisation, so still in [0, 1]
        assert 0 <= anomaly_map.min() and anomaly_map.max() <= 1
    for name in ("overlay.png", "regions.json", "regions.csv", "report.html"):
        assert (scan_dir / name).is_file(), name
    assert config["data"]["patch_size"] == 32


def test_predict_on_a_missing_file_names_it(tmp_path):
    """Inputs are checked before any checkpoint is read, the same for every detector: one run."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text(tiny.get_config("highpass").to_json_best_effort())
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "xray_flax.main",
            "--workdir",
            str(workdir),
            "--mode",
            "predict",
            "--inputs",
            str(tmp_path / "nope.png"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "nope.png does not exist" in result.stderr


def test_evaluate_any_saved_checkpoint(trained_any, tmp_path):
    workdir, _ = trained_any
    name, _ = _detector_of(workdir)
    cache = json.load(open(os.path.join(workdir, "config.json")))["data"]["simulated"]["cache_dir"]
    # A latest checkpoint (gradient detectors: no normalisation stored, fitted on val now) or
    # the fitted one.
    steps = {f: [int(d) for d in os.listdir(os.path.join(workdir, f)) if d.isdigit()] for f in ("checkpoints", "best")}
    folder = "checkpoints" if steps["checkpoints"] else "best"
    step = min(steps[folder])
    step_dir = os.path.join(workdir, folder, str(step))
    run_cli(
        "--config",
        f"configs/tiny.py:{name}",
        "--workdir",
        workdir,
        "--mode",
        "evaluate",
        "--output_dir",
        str(tmp_path),
        f"--config.data.simulated.cache_dir={cache}",
        f"--config.eval.checkpoint={step_dir}",
    )
    report = json.load(open(tmp_path / "metrics.json"))
    assert report["step"] == step and report["checkpoint"].endswith(os.path.join(folder, str(step)))
