"""Provenance in every result (xray_flax/provenance.py): metrics.json, report.html, TensorBoard's
test metrics and hyperparameters, and `compare` showing where runs came from and how their
configs differ."""

from __future__ import annotations

import glob
import json
import os

import ml_collections

from configs import tiny
from xray_flax import compare, evaluate, provenance, workflow
from xray_flax.report import plots

FIELDS = (
    "git_commit",
    "git_dirty",
    "versions",
    "command",
    "config_sha256",
    "device_kind",
    "device_count",
    "host",
    "started_utc",
    "written_utc",
)


def test_collect_never_fails_and_hashes_configs_canonically(tmp_path):
    record = provenance.collect(ml_collections.ConfigDict({"a": 1, "b": (1, 2)}), started="2026-01-01T00:00:00Z")
    assert set(FIELDS) <= set(record)
    assert set(provenance.PACKAGES) == set(record["versions"]) and record["versions"]["jax"]
    assert record["written_utc"].endswith("Z") and record["device_count"] >= 1
    json.dumps(record, allow_nan=False)  # strict JSON
    assert provenance.config_hash({"b": [1, 2], "a": 1}) == provenance.config_hash({"a": 1, "b": (1, 2)})
    assert provenance.config_hash({"a": 1}) != provenance.config_hash({"a": 2})
    # Not a git checkout (an installed copy): None, not an error.
    assert provenance.git_state(str(tmp_path / "xray_flax")) == (None, None)


def run(tmp_path, name: str, **eval_overrides) -> str:
    config = tiny.get_config("highpass")
    config.data.simulated.cache_dir = str(tmp_path.parent / "simulated")  # shared by tests of a session
    config.train.predict_test_scans = 1 if name == "a" else 0
    config.train.image_summary_every = 0
    for key, value in eval_overrides.items():
        config.eval[key] = value
    workdir = str(tmp_path / name)
    workflow.train_and_evaluate(config, workdir)
    return workdir


def test_results_record_provenance_and_compare_shows_config_differences(tmp_path, capsys):
    a, b = run(tmp_path, "a"), run(tmp_path, "b", score_top_k=3)

    with open(os.path.join(a, "metrics.json"), encoding="utf-8") as f:
        record = json.load(f)["provenance"]
    assert set(FIELDS) <= set(record)
    assert record["config_sha256"] == provenance.config_hash(json.load(open(os.path.join(a, "config.json"))))
    # The predict report of the test scan carries it too.
    (report,) = glob.glob(os.path.join(a, "predictions", "*", "report.html"))
    with open(report, encoding="utf-8") as f:
        page = f.read()
    assert record["config_sha256"] in page and "jax " in page

    # TensorBoard: test metrics at the checkpoint's step, and the config as hyperparameters.
    logdir = os.path.join(a, evaluate.TENSORBOARD_DIR)
    assert plots.logged_scalars(logdir, "test/roc_auc")
    assert plots.logged_scalars(logdir, "test/f1")
    events = b"".join(open(p, "rb").read() for p in glob.glob(os.path.join(logdir, "events.out.tfevents.*")))
    assert b"_hparams_/session_start_info" in events and b"eval.score_top_k" in events
    assert len(glob.glob(os.path.join(a, "events.out.tfevents.*"))) == 1  # the training run's own file

    assert compare.main([a, b, "--names=A,B"]) == 0
    out = capsys.readouterr().out
    assert "Config keys that differ" in out
    assert "| eval.score_top_k | 1 | 3 |" in out
    assert "| train.predict_test_scans | 1 | 0 |" in out
    assert (record["git_commit"] or "n/a")[:12] in out
