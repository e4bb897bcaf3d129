"""The one-class protocol: a tiny digits run through the shared loop, the TFDS path, its errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from xray_flax import one_class
from xray_flax.data import pipeline


def tiny_protocol_config():
    config = one_class.default_config("pyramid_ae")
    config.model.widths = (4, 8, 16)
    config.model.pyramid_bins = (1, 2)
    config.model.pyramid_reductions = (1, 2)
    config.model.latent_channels = 4
    config.train.num_steps = 20
    config.train.batch_size = 8
    config.train.log_every = 10
    config.eval.batch_size = 32
    return config


@pytest.mark.slow  # two trainings through the shared loop, ~30 s on 2 cores
def test_digits_protocol_on_two_classes_gives_a_table_with_its_mean(tmp_path):
    workdir = str(tmp_path)
    result = one_class.run_protocol(
        "digits", workdir, tiny_protocol_config(), classes=[3, 7], max_train_per_class=20, max_test_per_class=10
    )
    rows = result["rows"]
    assert [r["class"] for r in rows] == [3, 7]
    aurocs = [r["auroc"] for r in rows]
    assert all(0.0 <= a <= 1.0 for a in aurocs)
    assert result["mean_auroc"] == pytest.approx(np.mean(aurocs))
    for r in rows:
        # 20 training images: 9/10 train, 1/10 val; the test set is class c's 10 test images
        # against the other 9 classes' 90, one of which the Folder layout keeps for val.
        assert (r["n_train"], r["n_val_normal"], r["n_val_anomalous"]) == (18, 2, 1)
        assert (r["n_test_normal"], r["n_test_anomalous"]) == (10, 89)
    # The AUROC is the one the shared evaluation wrote for that class's run.
    with open(os.path.join(workdir, "runs", "digits", "class_7", "metrics.json")) as f:
        assert json.load(f)["test"]["roc_auc"] == pytest.approx(rows[1]["auroc"])
    table = open(os.path.join(workdir, "one_class_digits.md")).read()
    assert table == result["table"]
    assert f"| 3 | 3 | {aurocs[0]:.4f} |" in table and f"**{np.mean(aurocs):.4f}**" in table
    assert json.load(open(os.path.join(workdir, "one_class_digits.json")))["rows"] == rows
    # Class 3's anomalies are the other classes' test images, linked, never class 3's own.
    others = os.path.join(workdir, "data", "digits", "others", "3")
    assert sorted(os.listdir(others)) == [str(c) for c in range(10) if c != 3]
    assert all(os.path.islink(os.path.join(others, "0", n)) for n in os.listdir(os.path.join(others, "0")))
    # A second call reuses the finished runs (same config) instead of training again.
    again = one_class.run_protocol(
        "digits", workdir, tiny_protocol_config(), classes=[3, 7], max_train_per_class=20, max_test_per_class=10
    )
    assert again["rows"] == rows


def test_digits_are_upscaled_to_32_pixels_with_a_stratified_test_third():
    data = one_class.load_digits_data()
    assert data.train_images.shape[1:] == (32, 32) and data.train_images.dtype == np.uint8
    assert len(data.train_images) + len(data.test_images) == 1797
    for c in range(10):
        n_test, n_all = np.sum(data.test_labels == c), np.sum(data.train_labels == c) + np.sum(data.test_labels == c)
        assert n_test == round(n_all / 3)
    assert data.train_images.max() > 200  # 0..16 scaled to 0..255


def test_tfds_path_with_mock_data_writes_28_pixel_pngs_that_tile_to_32(tmp_path):
    pytest.importorskip("tensorflow", reason='the TFDS datasets need TensorFlow: pip install -e ".[tensorflow]"')
    tfds = pytest.importorskip("tensorflow_datasets")
    empty = tmp_path / "empty"
    empty.mkdir()
    with tfds.testing.mock_data(num_examples=40):
        data = one_class.load_tfds_data("mnist", data_dir=str(empty))
    assert data.train_images.shape == (40, 28, 28) and data.test_images.shape == (40, 28, 28)
    assert data.train_images.dtype == np.uint8 and set(np.unique(data.train_labels)) <= set(range(10))
    base = one_class.write_folders(data, str(tmp_path / "data"))
    # A class with at least two training images (train and val) and one test image.
    counts = np.bincount(data.train_labels, minlength=10) * (np.bincount(data.test_labels, minlength=10) > 0)
    c = int(np.argmax(counts))
    assert counts[c] >= 2
    config = one_class.class_config(one_class.default_config(), base, c)
    splits = pipeline.prepare_splits(config.data, None)
    assert len(splits.test) == np.sum(data.test_labels == c) + np.sum(data.test_labels != c) - 1
    batch = next(pipeline.iterate_eval_batches(splits, "test", config.data, batch_size=4))
    assert batch["image"].shape == (4, 32, 32, 1)
    # Border 'pad': the 28x28 image sits top-left, zeros beyond it.
    assert np.all(batch["image"][:, 28:] == 0) and np.all(batch["image"][:, :, 28:] == 0)


def test_absent_tfds_data_raise_a_clear_error(tmp_path):
    pytest.importorskip("tensorflow", reason='the TFDS datasets need TensorFlow: pip install -e ".[tensorflow]"')
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(one_class.DatasetNotPreparedError, match=r"tfds build fashion_mnist --data_dir DIR"):
        one_class.load_tfds_data("fashion_mnist", data_dir=str(tmp_path))


# python -m xray_flax.one_class as if TensorFlow were not installed.
PROGRAM_WITHOUT_TENSORFLOW = (
    "from absl import app\n"
    "from xray_flax import one_class\n"
    "one_class.tensorflow_installed = lambda: False\n"
    "one_class._define_flags()\n"
    "app.run(one_class.main)\n"
)


def test_without_tensorflow_the_tfds_datasets_say_which_extra_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(one_class, "tensorflow_installed", lambda: False)
    with pytest.raises(one_class.TensorFlowNeededError, match=r'pip install -e "\.\[tensorflow\]"'):
        one_class.load_tfds_data("mnist", data_dir=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM_WITHOUT_TENSORFLOW, "--dataset=mnist", f"--workdir={tmp_path / 'w'}"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and done.stderr.strip().splitlines() == [
        "error: --dataset mnist is read from TFDS's prepared files through TensorFlow, which the default install "
        'leaves out: install it with `pip install -e ".[tensorflow]"` (or `pip install tensorflow-cpu`), '
        "or run --dataset digits"
    ]


def test_unknown_classes_and_datasets_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        one_class.load_data("cifar10")
    data = one_class.subset(one_class.load_digits_data(), 3, 2)
    with pytest.raises(ValueError, match=r"classes \[12\]"):
        one_class.run_protocol("digits", str(tmp_path), tiny_protocol_config(), classes=[12], data=data)
