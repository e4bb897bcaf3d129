"""Logs a person can follow: dated lines, <workdir>/log.txt, a line before and after each silent
wait (simulation, compilation, scoring), and thresholds that say how they were chosen."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xray_flax import errors, logs, metrics, predict, scoring

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATED = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [DIWEC] \S+\] ")


def test_lines_are_dated():
    record = logging.LogRecord("xray_flax.train", logging.INFO, __file__, 1, "step %d", (3,), None)
    line = logs.formatter().format(record)
    assert DATED.match(line) and line.endswith(" I xray_flax.train] step 3"), line


def _file_handlers(path) -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers if getattr(h, "baseFilename", None) == str(path)]


def test_workdir_log_appends_each_run_between_a_start_and_an_end_line(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(logs, "_typed_command", ["/src/xray_flax/main.py", "--workdir", "my run"])
    path = tmp_path / logs.LOG_NAME
    work = logging.getLogger("xray_flax.test_work")
    with caplog.at_level(logging.INFO):
        with logs.workdir_log(str(tmp_path)) as opened:
            assert opened == str(path) and len(_file_handlers(path)) == 1
            work.info("first run")
        assert not _file_handlers(path)  # detached and closed: a process runs many
        with pytest.raises(errors.ConfigError), logs.workdir_log(str(tmp_path)):
            work.info("second run")
            raise errors.ConfigError("config.x=1 must be 2")
        with pytest.raises(KeyboardInterrupt), logs.workdir_log(str(tmp_path)):
            raise KeyboardInterrupt
    lines = path.read_text().splitlines()
    assert all(DATED.match(line) for line in lines), lines
    messages = [line.split("] ", 1)[1] for line in lines]
    assert messages[0].startswith("run started: python -m xray_flax.main --workdir 'my run' (in ")
    assert messages[1] == "first run" and re.fullmatch(r"run ended after \d+\.\ds", messages[2])
    assert messages[3].startswith("run started: ") and messages[4] == "second run"
    assert re.fullmatch(r"run failed after \d+\.\ds: config\.x=1 must be 2", messages[5]), messages[5]
    assert messages[6].startswith("run started: ") and re.fullmatch(r"run interrupted after \d+\.\ds", messages[7])
    assert len(lines) == 8
    # The failure goes to the file only: the command line prints its own `error:` line.
    assert "run failed" not in caplog.text and "run interrupted" not in caplog.text


def test_a_bug_leaves_its_traceback_in_the_log_file(tmp_path):
    with pytest.raises(ZeroDivisionError), logs.workdir_log(str(tmp_path)):
        1 / 0  # noqa: B018
    text = (tmp_path / logs.LOG_NAME).read_text()
    assert "run failed after" in text and "Traceback" in text and "ZeroDivisionError" in text


def test_a_workdir_log_that_cannot_be_opened_is_a_warning_not_a_failure(tmp_path, caplog):
    with caplog.at_level(logging.WARNING), logs.workdir_log(str(tmp_path / "missing")) as opened:
        assert opened is None
    assert "no log file" in caplog.text
    with logs.workdir_log(str(tmp_path), enabled=False) as opened:
        assert opened is None
    assert not os.listdir(tmp_path)


def test_compile_on_first_call_compiles_once_between_two_lines(caplog):
    def toy_step(state, batch):
        return state + jnp.tanh(batch @ batch.T).sum(), batch.mean()

    jitted = jax.jit(toy_step, donate_argnums=(0,))
    step = logs.compile_on_first_call(jitted, "the toy step", logging.getLogger("xray_flax.test_compile"))
    batch = jnp.arange(12.0).reshape(3, 4)
    with caplog.at_level(logging.INFO), jax.log_compiles(True):
        state, _ = step(jnp.zeros(()), batch)
        state, mean = step(state, batch)
    messages = [r.getMessage() for r in caplog.records]
    compiles = [i for i, m in enumerate(messages) if m.startswith("Compiling jit(toy_step)")]
    before = messages.index("compiling the toy step ...")
    (after,) = [i for i, m in enumerate(messages) if re.fullmatch(r"compiled the toy step in \d+\.\ds", m)]
    # Compiled once, between the two lines: the first call found the program compiled.
    assert len(compiles) == 1 and before < compiles[0] < after, messages
    expected = 2 * np.tanh(np.asarray(batch) @ np.asarray(batch).T).sum()
    np.testing.assert_allclose(float(state), expected, rtol=1e-5)
    assert float(mean) == pytest.approx(5.5)


def _region_source(tmp_path, test_report: dict) -> tuple[float, str]:
    (tmp_path / "metrics.json").write_text(json.dumps({"test": test_report}))
    return predict.region_threshold(0.0, str(tmp_path))


def test_the_region_threshold_says_when_it_is_a_fallback(tmp_path):
    # No labelled validation tile: evaluate falls back to config.eval.fixed_threshold.
    fixed = metrics.evaluate_scores([0, 1], [0.2, 0.7], [], [], fixed_threshold=0.5)
    threshold, source = _region_source(tmp_path, fixed)
    assert threshold == 0.5 and "chosen on the validation split" not in source
    assert source.startswith("config.eval.fixed_threshold 0.5: the validation split had no labelled tiles")
    assert "(rule fixed_no_validation)" in source and str(tmp_path / "metrics.json") in source
    # Normal validation tiles only: just above their highest score, not a choice by F1.
    normals_only = metrics.evaluate_scores([0, 1], [0.2, 0.7], [0, 0], [0.1, 0.3])
    threshold, source = _region_source(tmp_path, normals_only)
    assert threshold > 0.3 and "chosen on the validation split" not in source
    assert "no labelled anomalous tiles (rule no_anomalies)" in source
    # Both classes: chosen on the validation split, by the metric evaluate used.
    chosen = metrics.evaluate_scores([0, 1], [0.2, 0.7], [0, 1, 0, 1], [0.1, 0.6, 0.2, 0.8])
    threshold, source = _region_source(tmp_path, chosen)
    assert source.startswith("chosen on the validation split (argmax f1 over its 4 labelled tiles)")
    # evaluate logs the same words for its tile and image thresholds.
    assert scoring.threshold_source(fixed, "images").startswith("config.eval.fixed_threshold 0.5: ")
    assert "no labelled images" in scoring.threshold_source(fixed, "images")


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "xray_flax.main", *args], cwd=REPO, capture_output=True, text=True, timeout=600
    )


def test_a_run_appends_its_stderr_lines_to_the_workdir_log(tmp_path):
    """A tiny training halted after 2 steps (~30 s on 2 cores), then a failing predict and a
    bad config on the same workdir."""
    workdir = tmp_path / "run"
    common = ["--workdir", str(workdir), f"--config.data.simulated.cache_dir={tmp_path / 'simulated'}"]
    result = _cli("--config", "configs/tiny.py", *common, "--config.train.halt_after_steps=2")
    assert result.returncode == 0, result.stderr[-3000:]
    path = workdir / logs.LOG_NAME
    lines = path.read_text().splitlines()
    assert lines and all(DATED.match(line) for line in lines), lines
    assert set(lines) <= set(result.stderr.splitlines())  # the same lines as stderr
    text = "\n".join(lines)
    assert "run started: python -m xray_flax.main --config configs/tiny.py --workdir" in lines[0]
    for expected in (
        r"simulating 5 scans of 256x224 \(easy\) into .*simulated, once: later runs read them there \.\.\.",
        r"simulated 5 scans in \d+\.\ds",
        r"compiling the train step \.\.\.",
        r"compiled the train step in \d+\.\ds",
        r"train: 2/6 steps \(33%\), \d+\.\d\d steps/s, ETA",
        r"run ended after \d+\.\ds",
    ):
        assert re.search(expected, text), expected

    # A run that fails (predict without --inputs) appends its start and its failure to the file.
    failed = _cli("--mode", "predict", *common)
    assert failed.returncode == errors.EXIT_USAGE, failed.stderr[-3000:]
    appended = path.read_text().splitlines()
    assert appended[: len(lines)] == lines and len(appended) == len(lines) + 2
    assert "run started: python -m xray_flax.main --mode predict" in appended[-2]
    assert re.search(r"run failed after \d+\.\ds: --mode predict needs --inputs", appended[-1])
    assert "error: --mode predict needs --inputs" in failed.stderr

    # A config that fails its check leaves the workdir, and so its log, untouched.
    bad = _cli("--mode", "evaluate", *common, "--config.data.patch_size=0")
    assert bad.returncode == errors.EXIT_USAGE and path.read_text().splitlines() == appended
