"""TensorBoard summaries without TensorFlow (xray_flax/summary.py) and the progress lines'
trigger (xray_flax/progress.py): what TensorBoard reads back, and what the loops import."""

from __future__ import annotations

import glob
import io
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing import event_file_loader, plugin_event_accumulator
from tensorboard.compat.proto import summary_pb2
from tensorboard.compat.tensorflow_stub import pywrap_tensorflow
from tensorboard.plugins.hparams import plugin_data_pb2

from xray_flax import progress, summary
from xray_flax.report import plots


def test_record_checksums_are_tensorflows():
    rng = np.random.default_rng(0)
    for n in (0, 1, 7, 8, 1000):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert summary.masked_crc32c(data) == pywrap_tensorflow.masked_crc32c(data)


def test_pixels_are_converted_as_tensorflow_converts_them():
    floats = np.array([-0.5, 0.0, 1 / 255, 0.5, 254.5 / 255.5, 0.9999, 1.0, 3.0], np.float32)
    # tf.image.convert_image_dtype(x, tf.uint8, saturate=True): clip, * 255.5, truncate.
    np.testing.assert_array_equal(summary.to_uint8(floats), [0, 0, 1, 127, 254, 255, 255, 255])
    np.testing.assert_array_equal(summary.to_uint8(np.array([-3, 7, 300])), [0, 7, 255])
    np.testing.assert_array_equal(summary.to_uint8(np.array([True, False])), [255, 0])


def test_scalars_and_images_read_back_as_tensorboard_reads_them(tmp_path):
    writer = summary.create_writer(str(tmp_path))
    writer.write_scalars(2, {"loss": np.float32(0.25), "val_roc_auc": 0.75})
    writer.write_scalars(4, {"val_roc_auc": 0.875})
    grey = np.linspace(0, 1, 2 * 6 * 5, dtype=np.float32).reshape(2, 6, 5, 1)
    rgb = np.random.default_rng(1).random((6, 5, 3)).astype(np.float32)
    writer.write_images(4, {"input": grey, "map": rgb})
    writer.flush()

    assert plots.logged_scalars(tmp_path, "val_roc_auc") == {2: 0.75, 4: 0.875}
    assert plots.logged_scalars(tmp_path, "loss") == {2: 0.25}
    accumulator = plugin_event_accumulator.EventAccumulator(str(tmp_path))
    accumulator.Reload()
    assert sorted(accumulator.Tags()["tensors"]) == ["input", "loss", "map", "val_roc_auc"]
    for tag, plugin, data_class in (
        ("loss", "scalars", summary_pb2.DATA_CLASS_SCALAR),
        ("input", "images", summary_pb2.DATA_CLASS_BLOB_SEQUENCE),
    ):
        metadata = accumulator.SummaryMetadata(tag)
        assert (metadata.plugin_data.plugin_name, metadata.data_class) == (plugin, data_class)
    for tag, images in (("input", grey), ("map", rgb[None])):
        (event,) = accumulator.Tensors(tag)
        width, height, *pngs = event.tensor_proto.string_val
        assert (int(width), int(height), event.step) == (5, 6, 4)
        decoded = np.stack([np.asarray(Image.open(io.BytesIO(png))) for png in pngs])
        np.testing.assert_array_equal(decoded, summary.to_uint8(images).reshape(decoded.shape))


def test_one_event_file_per_writer_and_none_for_other_processes(tmp_path, caplog):
    first, second = summary.create_writer(str(tmp_path)), summary.create_writer(str(tmp_path))
    first.flush(), second.flush()
    files = sorted(glob.glob(str(tmp_path / "events.out.tfevents.*")))
    assert len(files) == 2 and all(f.endswith(".v2") for f in files)
    events = list(event_file_loader.EventFileLoader(files[0]).Load())
    assert [e.file_version for e in events] == ["brain.Event:2"]

    other = tmp_path / "other"
    with caplog.at_level(logging.INFO, logger="xray_flax.summary"):
        writer = summary.create_writer(str(other), just_logging=True)
        writer.write_scalars(3, {"loss": 0.5})
        writer.write_images(3, {"input": np.zeros((1, 4, 4, 1))})
        writer.flush()
    assert not other.exists() and "[3] loss=0.5" in caplog.text


def test_a_wrong_image_shape_raises_at_the_call_and_a_failed_write_is_a_warning(tmp_path, caplog):
    writer = summary.create_writer(str(tmp_path / "w"))
    with pytest.raises(ValueError, match="'input': shape \\(4, 4\\)"):
        writer.write_images(1, {"input": np.zeros((4, 4))})
    writer.flush()
    os.remove(writer.path)
    os.makedirs(writer.path)  # the file cannot be appended to any more
    with caplog.at_level(logging.WARNING, logger="xray_flax.summary"):
        writer.write_scalars(2, {"loss": 1.0})
        writer.flush()
    assert "TensorBoard summaries not written to" in caplog.text


def test_hyperparameters_for_the_hparams_dashboard(tmp_path):
    writer = summary.create_writer(str(tmp_path))
    writer.write_hparams({"train.num_steps": 400, "detector": "draem", "eval.normalise": True, "lr": 1e-3})
    writer.close()
    accumulator = plugin_event_accumulator.EventAccumulator(str(tmp_path))
    accumulator.Reload()
    content = accumulator.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    assert start.hparams["train.num_steps"].number_value == 400 and start.hparams["detector"].string_value == "draem"
    assert start.hparams["eval.normalise"].bool_value and start.hparams["lr"].number_value == 1e-3


def test_a_run_imports_no_tensorflow():
    code = (
        "import sys, xray_flax.main, xray_flax.workflow, xray_flax.hidden_art.workflow\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'clu')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_progress_reports_every_n_steps_on_the_last_step_and_never_at_the_start(caplog):
    writer = summary.LoggingWriter()
    report = progress.ReportProgress("train", 10, every_steps=4, every_secs=None, writer=writer)
    with caplog.at_level(logging.INFO):
        reported = [report(step, t=float(step)) for step in range(0, 11)]
    assert [s for s, r in enumerate(reported) if r] == [4, 8, 10]
    assert "train: 4/10 steps (40%), 1.00 steps/s, ETA 0m06s" in caplog.text
    assert "[10] steps_per_sec=1" in caplog.text
    with pytest.raises(ValueError, match="must be called after every step"):
        report(12)


def test_the_first_rate_and_eta_leave_out_the_first_step_which_compiles(caplog):
    """The first step after the start takes 30 s (compiling), the others 1 s each: the first
    line's rate is the steady one, 1 step/s, not 4 steps in 33 s."""
    report = progress.ReportProgress("train", 10, every_steps=4, every_secs=None)
    with caplog.at_level(logging.INFO):
        for step, t in [(0, 0.0), (1, 30.0), (2, 31.0), (3, 32.0), (4, 33.0)]:
            report(step, t=t)
    assert "train: 4/10 steps (40%), 1.00 steps/s, ETA 0m06s" in caplog.text, caplog.text
    # Resumed at step 4: the first step after that start is left out the same way.
    resumed = progress.ReportProgress("train", 10, every_steps=2, every_secs=None)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        for step, t in [(4, 0.0), (5, 20.0), (6, 20.5)]:
            resumed(step, t=t)
    assert "train: 6/10 steps (60%), 2.00 steps/s, ETA 0m02s" in caplog.text, caplog.text


def test_a_line_at_the_first_step_gives_its_time_and_no_rate(caplog):
    writer = summary.LoggingWriter()
    report = progress.ReportProgress("train", 10, every_steps=1, every_secs=None, writer=writer)
    with caplog.at_level(logging.INFO):
        assert [report(step, t=t) for step, t in [(0, 0.0), (1, 30.0), (2, 30.5)]] == [False, True, True]
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == (
        "train: 1/10 steps (10%) in 30.0s (the first, which may include compiling): rate and ETA from the next line"
    )
    assert "train: 2/10 steps (20%), 2.00 steps/s, ETA 0m04s" in lines
    assert "[1] steps_per_sec" not in caplog.text and "[2] steps_per_sec=2" in caplog.text


def test_progress_reports_after_every_secs_and_on_given_steps():
    report = progress.ReportProgress("fit", 100, unit="tiles", every_secs=10.0, on_steps=[7])
    calls = [(0, 0.0), (3, 5.0), (5, 10.5), (6, 12.0), (7, 13.0), (50, 30.0), (100, 31.0)]
    assert [report(step, t=t) for step, t in calls] == [False, False, True, False, True, True, True]
