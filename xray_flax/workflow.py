"""The job a `--mode train` run does: train, then evaluate, then predict, for either family.

train, evaluate and predict are siblings (xray_flax/train.py, evaluate.py, predict.py) that
know nothing of each other; this module calls them in sequence, so the programs (`main`,
`table2`, `one_class`) and a notebook run the same job with one call:

    report = workflow.train_and_evaluate(config, workdir)   # None when stopped early

The hidden-art family (config.family == "hidden_art") has its own loop and evaluation
(xray_flax/hidden_art/); `run(config, workdir, mode, ...)` dispatches on the family and the mode,
which is all the command line needs.
"""

from __future__ import annotations

import logging
import os

import jax
import ml_collections

from xray_flax import config_check, errors, evaluate, export, logs, predict, train, workdir_lock
from xray_flax.data import pipeline
from xray_flax.report import tables

log = logging.getLogger(__name__)

MODES = ("train", "evaluate", "predict", "export")
HIDDEN_ART = "hidden_art"


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict | None:
    """Train or fit (resuming if possible), evaluate the best checkpoint on the test split, and
    predict the first config.train.predict_test_scans test scans.

    Returns the test report of `evaluate.evaluate`, or None when training stopped early
    (config.train.halt_after_steps, or a termination request; the same call resumes).
    A config with problems raises one ConfigError listing them, before anything is written;
    then the run's log lines are appended to <workdir>/log.txt too, as `run` does (table2,
    one_class and the Python API come through here).
    """
    config_check.check(config, "train")
    os.makedirs(workdir, exist_ok=True)
    with logs.workdir_log(workdir, enabled=jax.process_index() == 0):
        return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict | None:
    # The workdir exists: both callers create it before opening its log file.
    # Process 0 holds the lock for the whole job, evaluation and prediction included.
    with workdir_lock.WorkdirLock(workdir, enabled=jax.process_index() == 0):
        if not train.train(config, workdir):
            return None
        report = evaluate.evaluate(config, workdir)
        test = report["test"]
        # Metrics of a one-class split are null (evaluate.py); the line shows them as n/a.
        log.info(
            "test ROC-AUC %s | accuracy %s | F1 %s | %s s/patch",
            *(tables.format_number(test.get(k)) for k in ("roc_auc", "accuracy", "f1", "seconds_per_patch")),
        )
        count = config.train.predict_test_scans
        if count and jax.process_count() == 1:
            test_scans = pipeline.prepare_splits(config.data, None).test[:count]
            predict.predict(config, workdir, [record.path for record in test_scans])
        return report


def run(
    config: ml_collections.ConfigDict,
    workdir: str,
    mode: str,
    inputs: list[str] | None = None,
    output_dir: str | None = None,
    export_platforms: list[str] | None = None,
) -> dict | list | None:
    """What `python -m xray_flax.main --mode MODE` does with a resolved config.

    The whole config is checked first (`config_check`), before anything is created or written
    in `workdir`: a config with problems raises one ConfigError listing them all. Then the log
    lines of the run are appended to <workdir>/log.txt too (`logs.workdir_log`).
    """
    if mode not in MODES:
        raise errors.ConfigError(f"--mode={mode!r}; expected one of {', '.join(MODES)}")
    config_check.check(config, mode)
    if mode == "train":
        os.makedirs(workdir, exist_ok=True)
    # The other modes read a workdir that exists; where it does not, they fail on the missing
    # checkpoint and leave no folder behind. Only process 0 writes the file, as it logs progress.
    with logs.workdir_log(workdir, enabled=os.path.isdir(workdir) and jax.process_index() == 0):
        return _run_mode(config, workdir, mode, inputs, output_dir, export_platforms)


def _run_mode(config, workdir, mode, inputs, output_dir, export_platforms) -> dict | list | None:
    if mode == "export":
        # The checkpoint as a jax.export artefact (xray_flax/export.py; it refuses hidden-art runs).
        return export.export(config, workdir, output_dir, export_platforms)
    if config.get("family") == HIDDEN_ART:
        # Imported here: the hidden-art family pulls in jraph and the graph code, which the
        # X-ray detectors never need.
        from xray_flax.hidden_art import workflow as hidden_art  # noqa: PLC0415

        return hidden_art.run(config, workdir, mode, output_dir)
    if mode == "train":
        return _train_and_evaluate(config, workdir)
    if mode == "evaluate":
        return evaluate.evaluate(config, workdir, output_dir)
    if not inputs:
        raise errors.UsageError("--mode predict needs --inputs (scan files, folders or globs)")
    return predict.predict(config, workdir, inputs, output_dir)
