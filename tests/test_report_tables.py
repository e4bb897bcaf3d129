"""Table-2 Markdown from metrics.json, and the compare CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from xray_flax import compare, metrics, summary
from xray_flax.report import tables


def write_run(path, method, seed):
    rng = np.random.default_rng(seed)
    labels = (rng.random(60) < 0.4).astype(int)
    scores = rng.random(60) + 0.5 * labels
    test = metrics.evaluate_scores(labels, scores, labels[:30], scores[:30])
    test["seconds_per_patch"] = 0.0123456
    path.mkdir(parents=True, exist_ok=True)
    (path / "metrics.json").write_text(json.dumps({"method": method, "test": test}))
    return test


def parse_table(text):
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    return header, rows


def test_table2_row_has_the_papers_columns_and_values(tmp_path):
    test = write_run(tmp_path / "a", "proposed", 0)
    header, rows = parse_table(tables.table2_markdown([("Proposed (ours)", test)]))
    assert header == list(tables.TABLE2_COLUMNS)
    assert rows[0][0] == "Proposed (ours)"
    values = [float(v) for v in rows[0][1:]]
    expected = [test[k] for k in ("roc_auc", "accuracy", "f1", "precision", "recall")] + [0.0123456]
    np.testing.assert_allclose(values, expected, atol=5e-5)
    assert rows[0][-1] == "0.0123"


def test_missing_values_and_paper_rows():
    text = tables.table2_markdown([("x", {"roc_auc": None, "f1": 0.5})], include_paper=True)
    header, rows = parse_table(text)
    assert rows[0] == ["x", "n/a", "n/a", "0.5000", "n/a", "n/a", "n/a"]
    proposed = [r for r in rows if r[0] == "Proposed (paper)"][0]
    assert proposed[1:] == ["0.8755", "0.8399", "0.7869", "0.8383", "0.7413", "0.0824"]
    assert len(rows) == 1 + 7 and "not comparable" in text


def test_metrics_markdown_summarises_a_report(tmp_path):
    labels = np.array([0, 1, 0, 1, 1, 0])
    scores = np.array([0.1, 0.9, 0.4, 0.6, 0.3, 0.2])
    masks = np.zeros((2, 8, 8))
    masks[1, 2:4, 2:4] = 1
    maps = masks * 0.8 + 0.1
    test = metrics.evaluate_scores(labels, scores, labels, scores, masks=masks, maps=maps)
    test["seconds_per_patch"] = 0.01
    text = tables.metrics_markdown({"method": "draem", "test": test, "step": 100})
    assert text.startswith("# Evaluation: draem")
    assert "| draem | 0.8889 |" in text
    assert "pixel AUROC | 1.0000" in text and "threshold rule | argmax_f1" in text
    assert str(test["confusion_matrix"]) in text


def test_compare_cli_reads_workdirs(tmp_path, capsys):
    write_run(tmp_path / "run1", "proposed", 1)
    write_run(tmp_path / "run2", "proposed", 2)
    write_run(tmp_path / "run3", "draem", 3)
    out = tmp_path / "out" / "table.md"
    code = compare.main([str(tmp_path / d) for d in ("run1", "run2", "run3")] + ["--out", str(out), "--paper"])
    assert code == 0
    printed = capsys.readouterr().out
    assert out.read_text() == printed
    _, rows = parse_table(printed)
    assert [r[0] for r in rows[:3]] == ["proposed (run1)", "proposed (run2)", "draem"]
    assert rows[3][0] == "CFA (paper)"
    assert compare.main([str(tmp_path / "run3"), "--names", "DRAEM-jax"]) == 0
    assert parse_table(capsys.readouterr().out)[1][0][0] == "DRAEM-jax"


def test_compare_errors_name_the_workdir(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert compare.main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "empty" / "metrics.json") in err and "not found" in err
    assert compare.main([str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metrics.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.*metrics.json is not valid JSON"):
        tables.load_metrics(tmp_path / "bad")
    write_run(tmp_path / "ok", "m", 0)
    assert compare.main([str(tmp_path / "ok"), "--names=a,b"]) == 2
    assert "2 names for 1 workdirs" in capsys.readouterr().err


def test_compare_runs_as_a_module(tmp_path):
    write_run(tmp_path / "run", "proposed", 0)
    done = subprocess.run(
        [sys.executable, "-m", "xray_flax.compare", str(tmp_path / "run")], capture_output=True, text=True, check=True
    )
    assert done.stdout.startswith("| Method | ROC-AUC | Acc | F1 | Precision | Recall | s/patch |")


def test_compare_summarises_the_seeds_of_a_setting_and_plots_their_learning_curves(tmp_path, capsys):
    tests = {}
    for name, seed in (("a0", 0), ("a1", 1), ("b0", 2)):
        tests[name] = write_run(tmp_path / name, "m", seed)
        writer = summary.create_writer(str(tmp_path / name))
        for step in (100, 200, 300):
            writer.write_scalars(step, {"val_roc_auc": 0.5 + step / 1000 + seed / 100})
        writer.close()
    svg = tmp_path / "curves.svg"
    workdirs = [str(tmp_path / n) for n in ("a0", "a1", "b0")]
    assert compare.main(workdirs + ["--names=A,A,B", "--curves", str(svg)]) == 0
    printed = capsys.readouterr().out
    auc = [tests["a0"]["roc_auc"], tests["a1"]["roc_auc"]]
    assert f"| A | 2 | {np.mean(auc):.4f} ± {np.std(auc, ddof=1):.4f} |" in printed
    assert f"| B | 1 | {tests['b0']['roc_auc']:.4f} ± 0.0000 |" in printed
    low, high = tests["b0"]["roc_auc_ci95"]
    assert low <= tests["b0"]["roc_auc"] <= high and f"{low:.4f} - {high:.4f}" in printed
    text = svg.read_text()
    assert text.count("<polyline") == 3 and text.count(">A</text>") == 1 and text.count(">B</text>") == 1
    fitted = tmp_path / "fitted"
    write_run(fitted, "m", 3)
    assert compare.main([str(fitted), "--curves", str(tmp_path / "none.svg")]) == 2
    assert "no validation ROC-AUC" in capsys.readouterr().err
