"""The Table 2 command: same data for every method, our rows beside the paper's, one ROC figure,
and a rerun that does not retrain a finished method."""

from __future__ import annotations

import contextlib
import json
import os
import re

import ml_collections
import pytest

from xray_flax import table2

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("table2"))
    cache = str(tmp_path_factory.getbasetemp() / "simulated")
    with contextlib.chdir(REPO):
        results = table2.run(
            root,
            "configs/tiny.py",
            ["configs/tiny.py:highpass", "configs/highpass.py"],
            overrides=[f"data.simulated.cache_dir={cache!r}"],
        )
    summary = open(os.path.join(root, "summary.md")).read()  # before a test below reruns in root
    return root, results, cache, summary


def test_every_method_gets_the_data_section_of_the_data_config(table):
    root, results, _, _ = table
    configs = [json.load(open(os.path.join(r["workdir"], "config.json"))) for r in results]
    assert configs[0]["data"] == configs[1]["data"]
    assert configs[1]["data"]["patch_size"] == 32  # configs/highpass.py alone would use 64-px tiles
    assert [c["eval"]["score_filter_size"] for c in configs] == [1, 1]  # each keeps its own image score


def test_table_roc_figure_and_json(table):
    root, results, _, _ = table
    text = open(os.path.join(root, "table2.md")).read()
    assert text.splitlines()[0].startswith("| Method | ROC-AUC | Acc | F1 | Precision | Recall | s/patch |")
    for result in results:
        auroc = result["test"]["roc_auc"]
        assert f"{auroc:.4f}" in text
    svg = open(os.path.join(root, "roc.svg")).read()
    assert svg.count("<polyline") == 2
    assert json.load(open(os.path.join(root, "table2.json")))[0]["method"] == results[0]["method"]


def test_paper_row_is_printed_beside_ours():
    results = [{"method": "ours", "paper_row": "FastFlow", "test": {"roc_auc": 0.5}}]
    lines = table2.table_markdown(results).splitlines()
    assert lines[2].startswith("| ours | 0.5000")
    assert lines[3].startswith("| FastFlow (paper) | 0.7853 | 0.7153 | 0.6567 | 0.6324 | 0.6831 | 0.0425 |")


def test_rerun_does_not_retrain_and_a_changed_config_is_refused(table, caplog):
    root, results, cache, _ = table
    metrics = os.path.join(results[0]["workdir"], "metrics.json")
    before = os.stat(metrics).st_mtime_ns
    with contextlib.chdir(REPO):
        with caplog.at_level("INFO", logger="xray_flax.table2"):
            table2.run(root, "configs/tiny.py", ["configs/tiny.py:highpass"], [f"data.simulated.cache_dir={cache!r}"])
        assert os.stat(metrics).st_mtime_ns == before
        assert "finished already" in caplog.text
        changed = table2.run(
            root,
            "configs/tiny.py",
            ["configs/tiny.py:highpass"],
            [f"data.simulated.cache_dir={cache!r}", "model.window=7"],
        )
    assert re.search(r"different config", changed[0]["error"])
    assert "FAILED" in open(os.path.join(root, "table2.md")).read()


def test_bad_override_is_a_clear_error():
    config = table2.load_config_file(os.path.join(REPO, "configs/tiny.py") + ":highpass")
    with pytest.raises(ValueError, match="no field 'train.num_stepz'"):
        table2.apply_override(config, "train.num_stepz=3")
    table2.apply_override(config, "train.num_steps=3")
    assert config.train.num_steps == 3


def test_summary_is_written_without_seeds(table):
    _, results, _, summary = table
    assert summary.splitlines()[0].startswith("| Method | seeds | val ROC-AUC | test ROC-AUC [95 %] |")
    assert f"{results[0]['test']['roc_auc']:.3f}" in summary


def test_seeds_run_each_method_per_seed_and_summarise_the_mean(tmp_path, table):
    _, _, cache, _ = table
    root = str(tmp_path / "seeds")
    with contextlib.chdir(REPO):
        results = table2.run(
            root,
            "configs/tiny.py",
            ["configs/tiny.py:highpass"],
            overrides=[f"data.simulated.cache_dir={cache!r}"],
            seeds=[3, 4],
        )
    assert [r["seed"] for r in results] == [3, 4]
    assert [r["workdir"] for r in results] == [os.path.join(root, f"seed_{s}", "tiny_highpass") for s in (3, 4)]
    assert [json.load(open(os.path.join(r["workdir"], "config.json")))["seed"] for r in results] == [3, 4]
    assert os.path.exists(os.path.join(root, "seed_3", "table2.md"))
    summary = json.load(open(os.path.join(root, "summary.json")))
    assert summary[0]["seeds"] == 2 and len(summary[0]["test_roc_auc_ci95"]) == 2
    assert summary[0]["test_roc_auc"] == [r["test"]["roc_auc"] for r in results]
    assert json.load(open(os.path.join(results[0]["workdir"], "table2_run.json")))["seconds"] > 0
    with pytest.raises(table2.errors.UsageError, match="distinct"):
        table2.run(root, "configs/tiny.py", ["configs/tiny.py:highpass"], seeds=[1, 1])


def test_a_knob_added_after_a_run_at_its_default_keeps_the_run_finished(table):
    root, results, _, _ = table
    workdir = results[1]["workdir"]  # configs/highpass.py
    config = json.load(open(os.path.join(workdir, "config.json")))
    old = {**config, "train": {k: v for k, v in config["train"].items() if k != "labelled_anomalies"}}
    current = table2.config_base.get_base_config("highpass")
    current.update(ml_collections.ConfigDict(config))
    assert (
        table2._without_new_defaults(
            table2._comparable(current), old, table2._comparable(table2.config_base.get_base_config("highpass"))
        )
        == old
    )
    current.train.labelled_anomalies = 3  # not the default: a different run
    assert table2._without_new_defaults(table2._comparable(current), old, {}) != old
