"""Image-level datasets (no pixel masks) train and evaluate through the shared loop.

MVTec AD's layout without ground_truth/ and anomalib's Folder layout give image labels only:
the test metrics are image metrics, pixel metrics are reported as not available, and where an
image spans several tiles the image score is the max over its tiles (`test_images`).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from configs import tiny
from xray_flax import workflow


def _texture(rng, size: int, defect: bool) -> np.ndarray:
    """Smooth grey texture; a defect is a small sharp-edged bright square (local contrast)."""
    image = 0.5 + 0.05 * rng.standard_normal((size, size))
    image = np.clip(image, 0, 1)
    if defect:
        y, x = rng.integers(4, size - 12, 2)
        image[y : y + 6, x : x + 6] = 1.0
    return (image * 255).astype(np.uint8)


def _write(folder, rng, n: int, size: int, defect: bool) -> None:
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        Image.fromarray(_texture(rng, size, defect)).save(os.path.join(folder, f"{i:03d}.png"))


def _config(tmp_path, patch: int):
    config = tiny.get_config("highpass")
    config.data.patch_size = config.data.stride = patch
    config.data.background.rule = "none"
    config.train.predict_test_scans = 0
    config.train.batch_size = 8
    return config


def test_mvtec_without_ground_truth_gives_image_metrics(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "category"
    _write(root / "train" / "good", rng, 12, 64, False)
    _write(root / "test" / "good", rng, 10, 64, False)
    _write(root / "test" / "spot", rng, 10, 64, True)  # no ground_truth/spot/: image labels only
    config = _config(tmp_path, 32)
    config.data.source, config.data.root = "mvtec", str(root)
    report = workflow.train_and_evaluate(config, str(tmp_path / "run"))
    # 64-px images in 32-px tiles: the defect's tile is unknown, so tiles of defect images
    # are not labelled; per image (max over its 4 tiles) the spots are found.
    images = report["test_images"]
    assert images["n_anomalous"] > 0 and images["n_normal"] > 0
    assert images["roc_auc"] > 0.9
    assert report["test"]["pixel_metrics"].startswith("not available")
    assert "pixel_auroc" not in report["test"]
    saved = json.load(open(tmp_path / "run" / "metrics.json"))
    assert saved["test_images"]["roc_auc"] == images["roc_auc"]


def test_folder_layout_with_normal_and_abnormal_dirs_trains_and_evaluates(tmp_path):
    rng = np.random.default_rng(1)
    _write(tmp_path / "good", rng, 30, 32, False)
    _write(tmp_path / "bad", rng, 16, 32, True)
    config = _config(tmp_path, 32)
    config.data.source = "folder"
    config.data.root = str(tmp_path)
    config.data.folder.normal_dir = "good"
    config.data.folder.abnormal_dir = "bad"
    report = workflow.train_and_evaluate(config, str(tmp_path / "run"))
    test = report["test"]  # one tile per image: tile metrics are the image metrics
    assert "test_images" not in report
    assert test["n_anomalous"] > 0 and test["n_normal"] > 0
    assert test["roc_auc"] > 0.9
    assert "not available" in test["pixel_metrics"]
    rows = open(tmp_path / "run" / "scores.csv").read().splitlines()
    assert len(rows) == 1 + report["val"]["n"] + test["n"]
    assert any("/bad/" in r for r in rows)


@pytest.mark.parametrize("source", ["mvtec", "folder"])
def test_missing_folders_name_the_path(tmp_path, source):
    config = _config(tmp_path, 32)
    config.data.source, config.data.root = source, str(tmp_path / "nowhere")
    if source == "folder":
        config.data.folder.normal_dir = "good"
    with pytest.raises(Exception, match="nowhere"):
        workflow.train_and_evaluate(config, str(tmp_path / "run"))
