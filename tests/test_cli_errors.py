"""Errors the user can fix print one line, overrides work without --config, and splits with
one class only give null metrics instead of a crash."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags
from PIL import Image

from configs import tiny
from xray_flax import checkpoint, errors, evaluate, metrics, train, workdir_config, workdir_lock, workflow
from xray_flax import main as cli_main
from xray_flax.data import readers
from xray_flax.report import tables

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _png(path, rng, size=64):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray((rng.random((size, size)) * 200 + 20).astype(np.uint8)).save(path)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _fit(config, workdir) -> list[str]:
    """train_and_evaluate in-process (the high-pass reference fits in seconds); the warnings logged."""
    records = _Records()
    logging.getLogger().addHandler(records)
    try:
        workflow.train_and_evaluate(config, str(workdir))
    finally:
        logging.getLogger().removeHandler(records)
    return records.messages


@pytest.fixture(scope="module")
def normal_only_run(tmp_path_factory):
    """`data.source=folder` with its default layout: one folder of normal images only."""
    base = tmp_path_factory.mktemp("folder_normals")
    rng = np.random.default_rng(0)
    for i in range(8):
        _png(str(base / "normals" / f"n{i}.png"), rng)
    config = tiny.get_config("highpass")
    config.data.source = "folder"
    config.data.root = str(base / "normals")
    workdir = base / "run"
    return workdir, _fit(config, workdir)


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "xray_flax.main", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# ------------------------------------------------------------------------------------------
# One-class splits.


def test_folder_source_of_normal_images_gives_null_metrics_with_warnings(normal_only_run):
    workdir, warnings = normal_only_run
    report = json.loads((workdir / "metrics.json").read_text())  # strict JSON, no NaN
    test = report["test"]
    assert test["roc_auc"] is None and test["average_precision"] is None
    assert report["val"]["roc_auc"] is None
    assert test["n_normal"] == test["n"] > 0 and test["n_anomalous"] == 0
    # The documented fallback: just above the highest normal validation score.
    assert test["threshold_rule"] == "no_anomalies" and math.isfinite(test["threshold"])
    assert any("validation split has only normal tiles" in w and "no_anomalies" in w for w in warnings)
    assert any("test split has only normal tiles" in w and "ROC-AUC" in w for w in warnings)
    assert report["warnings"] and all(w in warnings for w in report["warnings"])
    md = (workdir / "metrics.md").read_text()
    assert "| tiny highpass (tests) | n/a |" in md and "| validation ROC-AUC | n/a |" in md
    assert "validation split has only normal tiles" in md
    # The job went on to predict a test scan.
    assert len(json.loads((workdir / "predictions" / "predictions.json").read_text())) == 1


def test_all_anomalous_validation_split_evaluates_on_raw_maps(tmp_path):
    """MVTec without test/good: val and test hold anomalous tiles only, so the score
    normalisation (fitted on normal val tiles) cannot be fitted: raw maps, a warning."""
    rng = np.random.default_rng(1)
    root = tmp_path / "bottle"
    for i in range(4):
        _png(str(root / f"train/good/{i:03d}.png"), rng)
        _png(str(root / f"test/crack/{i:03d}.png"), rng)
        os.makedirs(root / "ground_truth/crack", exist_ok=True)
        Image.fromarray(np.full((64, 64), 255, np.uint8)).save(root / f"ground_truth/crack/{i:03d}_mask.png")
    config = tiny.get_config("highpass")
    config.data.source = "mvtec"
    config.data.root = str(root)
    config.train.predict_test_scans = 0
    warnings = _fit(config, tmp_path / "run")
    report = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert report["normalization"]["rule"] == "identity"
    assert any("validation split has no normal tiles" in w and "config.eval.normalization" in w for w in warnings)
    test = report["test"]
    assert test["threshold_rule"] == "no_normals" and test["roc_auc"] is None and report["val"]["roc_auc"] is None
    assert test["n_anomalous"] == test["n"] > 0
    assert any("validation split has only anomalous" in w for w in warnings)


def test_metrics_without_labelled_samples_are_null_not_an_error():
    report = metrics.evaluate_scores([], [], [0, 0, 1], [0.1, 0.2, 0.9])
    assert report["n"] == 0 and report["roc_auc"] is None and report["accuracy"] is None
    assert report["threshold_rule"] == "argmax_f1" and report["fixed_threshold"]["f1"] is None
    json.dumps(report, allow_nan=False)
    # A validation split without labelled tiles: the fixed threshold, not a crash.
    report = metrics.evaluate_scores([0, 1], [0.2, 0.7], [], [], fixed_threshold=0.5)
    assert report["threshold_rule"] == "fixed_no_validation" and report["threshold"] == 0.5
    val, test = evaluate.one_class_warnings([], [], "fixed_no_validation")
    assert val.startswith("the validation split has no labelled tiles") and "config.eval.fixed_threshold" in val
    assert test.startswith("the test split has no labelled tiles") and "every tile-level test metric is null" in test
    assert evaluate.one_class_warnings([0, 1], [0, 1], "argmax_f1") == []


def test_json_ready_turns_every_nan_into_null_and_names_it(caplog):
    report = {"test": {"roc_auc": 0.5, "seconds_per_patch": float("nan")}, "rows": [1.0, np.float32("inf")]}
    with caplog.at_level(logging.WARNING):
        ready = evaluate.json_ready(report)
    assert ready == {"test": {"roc_auc": 0.5, "seconds_per_patch": None}, "rows": [1.0, None]}
    json.dumps(ready, allow_nan=False)
    assert "metrics.test.seconds_per_patch is nan" in caplog.text and "metrics.rows[1] is inf" in caplog.text


def test_metrics_markdown_shows_null_values_as_na_with_the_reasons():
    test = {"roc_auc": None, "accuracy": 1.0, "confusion_matrix": None, "threshold": 0.5}
    md = tables.metrics_markdown({"method": "m", "test": test, "val": {"roc_auc": None}, "warnings": ["why"]})
    assert "| m | n/a | 1.0000 |" in md and "| confusion matrix [[tn, fp], [fn, tp]] | n/a |" in md
    assert md.endswith("Notes:\n\n- why\n")


# ------------------------------------------------------------------------------------------
# --config.X overrides on evaluate/predict without --config.


def _parse(argv: list[str], monkeypatch):
    """The config `main.parse_flags` would hand to evaluate, on private FlagValues."""
    values = flags.FlagValues()
    config = config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True)
    flags.DEFINE_string("workdir", None, "", flag_values=values)
    flags.DEFINE_string("mode", "train", "", flag_values=values)
    argv = workdir_config.with_workdir_config(argv)
    monkeypatch.setattr(sys, "argv", argv)  # config_flags reads the overrides there
    values(argv)
    return config.value


def test_overrides_apply_to_the_saved_config_with_its_types(tmp_path, monkeypatch):
    config = tiny.get_config("highpass")
    (tmp_path / "config.json").write_text(config.to_json_best_effort())
    loaded = _parse(
        [
            "prog",
            "--workdir",
            str(tmp_path),
            "--mode=predict",
            "--config.eval.batch_size=4",
            "--config.eval.fixed_threshold=1",
            "--config.data.split_fractions=(0.5, 0.25, 0.25)",
            "--config.train.halt_after_steps=3",  # a typed None (placeholder) in the config files
            "--config.data.simulated.n_scans=2",
            "--config.eval.normalization=none",
        ],
        monkeypatch,
    )
    assert loaded.eval.batch_size == 4 and isinstance(loaded.eval.batch_size, int)
    assert loaded.eval.fixed_threshold == 1.0 and isinstance(loaded.eval.fixed_threshold, float)
    assert loaded.data.split_fractions == (0.5, 0.25, 0.25)
    assert loaded.train.halt_after_steps == 3 and loaded.data.simulated.n_scans == 2
    assert loaded.eval.normalization == "none" and loaded.detector == "highpass"
    # Untouched values come from the workdir, tuples stay tuples.
    assert loaded.data.patch_size == 32 and loaded.data.stride == 32
    assert isinstance(_parse(["prog", f"--workdir={tmp_path}", "--mode", "evaluate"], monkeypatch).mesh, object)
    with pytest.raises(flags.IllegalFlagValueError, match="batch_size=4.5"):
        _parse(["prog", "--workdir", str(tmp_path), "--mode=evaluate", "--config.eval.batch_size=4.5"], monkeypatch)


def test_the_argv_rewrite_only_touches_evaluate_and_predict_without_config(tmp_path):
    (tmp_path / "config.json").write_text(tiny.get_config("highpass").to_json_best_effort())
    wd = str(tmp_path)
    for argv in (
        ["p", "--workdir", wd],  # train (the default) needs --config
        ["p", "--workdir", wd, "--mode", "train", "--config.a=1"],
        ["p", "--config", "configs/tiny.py", "--workdir", wd, "--mode", "evaluate"],
        ["p", "--config=configs/tiny.py", "--workdir", wd, "--mode=predict"],
        ["p", "--mode", "evaluate"],  # absl reports the missing --workdir
    ):
        assert workdir_config.with_workdir_config(argv) == argv
    rewritten = workdir_config.with_workdir_config(["p", "-workdir", wd, "-mode=evaluate", "--config.x=1"])
    assert rewritten[1] == f"--config={workdir_config.__file__}:{wd}" and rewritten[2:] == [
        "-workdir",
        wd,
        "-mode=evaluate",
        "--config.x=1",
    ]
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'missing'}/config.json not found"):
        workdir_config.with_workdir_config(["p", "--workdir", str(tmp_path / "missing"), "--mode", "evaluate"])
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(errors.ConfigError, match="config.json is not valid JSON"):
        workdir_config.load(wd)


# ------------------------------------------------------------------------------------------
# One-line errors, exit status, Ctrl-C (in-process: main() with a failing body).


@pytest.fixture
def cli(monkeypatch):
    def run(error: BaseException, debug: bool = False):
        def fail(argv):
            raise error

        monkeypatch.setattr(cli_main, "_main", fail)
        flags.FLAGS["debug"].value = debug
        try:
            with pytest.raises(SystemExit) as exit_info:
                cli_main.main(["prog"])
        finally:
            flags.FLAGS["debug"].value = False
        return exit_info.value.code

    return cli_main, run


@pytest.mark.parametrize(
    "error, status",
    [
        (readers.UnreadableImageError("/data/a.png", "is not an image"), 1),
        (checkpoint.CheckpointError("no checkpoint in /w"), 1),
        (train.TrainingDivergedError("non-finite loss; the last good checkpoint is step 3 in /w"), 1),
        (errors.ConfigError("config.eval.normalization='x'; expected 'auto'"), 2),
        (errors.UsageError("--mode predict needs --inputs (scan files, folders or globs)"), 2),
        (FileNotFoundError("/w/config.json not found"), 1),
    ],
)
def test_errors_the_user_can_fix_print_one_line(cli, capsys, error, status):
    _, run = cli
    assert run(error) == status
    err = capsys.readouterr().err
    assert err == f"error: {errors.one_line(error)}\n", err


def test_debug_adds_the_traceback_and_ctrl_c_exits_130(cli, capsys):
    cli_main, run = cli
    assert run(checkpoint.CheckpointError("no checkpoint in /w"), debug=True) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.endswith("error: no checkpoint in /w\n")
    assert run(KeyboardInterrupt()) == 130
    assert capsys.readouterr().err == "interrupted; rerun the same command to resume\n"


def test_unexpected_errors_keep_their_traceback(cli):
    cli_main, _ = cli
    assert cli_main.exit_status(RuntimeError("a bug")) is None
    assert cli_main.exit_status(ValueError("operands could not be broadcast")) is None
    # A config error is a ConfigError raised where the value is checked: a plain ValueError
    # is not recognised by its wording, so a check that forgot the class shows up as a bug.
    assert cli_main.exit_status(ValueError("config.train.num_steps must be >= 1, got 0")) is None
    assert cli_main.exit_status(KeyError("x")) is None
    assert cli_main.exit_status(workdir_lock.WorkdirLockedError("/w is in use")) == 1


# ------------------------------------------------------------------------------------------
# Through the command line (a few runs: each starts Python and JAX).


def test_cli_missing_checkpoint_is_one_line_and_debug_shows_the_traceback(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text(tiny.get_config("highpass").to_json_best_effort())
    result = run_cli("--workdir", str(workdir), "--mode", "evaluate")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = _error_lines(result.stderr)
    assert len(lines) == 1 and f"no checkpoint in {workdir}" in lines[0]
    assert result.stderr.rstrip().endswith(lines[0])
    result = run_cli("--workdir", str(workdir), "--mode", "evaluate", "--debug")
    assert result.returncode == 1 and "Traceback" in result.stderr and "CheckpointError" in result.stderr
    assert result.stderr.rstrip().splitlines()[-1] == lines[0]


def test_cli_unknown_override_key_is_one_line(tmp_path):
    result = run_cli("--config", "configs/tiny.py", "--workdir", str(tmp_path), "--config.train.nosuchkey=3")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: config.train.nosuchkey is not a key of the config (--config.train.nosuchkey=3): "
        "check its spelling and section"
    ]


def test_cli_overrides_on_evaluate_without_config_take_effect(normal_only_run, tmp_path):
    workdir, _ = normal_only_run
    out = tmp_path / "eval"
    result = run_cli(
        "--workdir",
        str(workdir),
        "--mode",
        "evaluate",
        "--config.eval.batch_size=4",
        "--config.eval.timing_batches=2",
        "--output_dir",
        str(out),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    timing = json.loads((out / "metrics.json").read_text())["timing"]
    assert timing["batch_size"] == 4 and timing["timed_batches"] == 2


def test_a_knob_added_after_training_gets_its_default_and_can_be_overridden(tmp_path, monkeypatch):
    # A workdir trained before eval.score_top_k existed: its config.json lacks the key.
    saved = json.loads(tiny.get_config("highpass").to_json_best_effort())
    del saved["eval"]["score_top_k"]
    del saved["train"]["halt_after_steps"]  # a typed None (placeholder) in the config files
    (tmp_path / "config.json").write_text(json.dumps(saved))
    loaded = _parse(["prog", "--workdir", str(tmp_path), "--mode=evaluate"], monkeypatch)
    assert loaded.eval.score_top_k == 1  # the default, which is the old behaviour (the max)
    assert loaded.train.halt_after_steps is None
    loaded = _parse(
        [
            "prog",
            "--workdir",
            str(tmp_path),
            "--mode=evaluate",
            "--config.eval.score_top_k=8",
            "--config.train.halt_after_steps=3",
        ],
        monkeypatch,
    )
    assert loaded.eval.score_top_k == 8 and loaded.train.halt_after_steps == 3
    with pytest.raises(AttributeError, match='Did you mean "score_top_k"'):  # a misspelt key is still refused
        _parse(["prog", "--workdir", str(tmp_path), "--mode=evaluate", "--config.eval.score_topk=8"], monkeypatch)
