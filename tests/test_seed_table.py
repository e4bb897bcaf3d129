"""The seed summary of table2: the mean ROC-AUC against scikit-learn, its bootstrap interval
against a plain per-resample loop, and the table's columns."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from xray_flax.report import seed_table


def _data(seeds=3, n0=40, n1=15, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.r_[np.zeros(n0, int), np.ones(n1, int)]
    scores = rng.normal(size=(seeds, n0 + n1)) + labels * np.array([[0.5], [1.0], [1.5]])[:seeds]
    scores[0, :5] = scores[0, -5:]  # ties between classes count a half
    return labels, np.round(scores, 1)


def test_mean_auc_is_the_mean_of_sklearns_aucs():
    labels, scores = _data()
    expected = np.mean([roc_auc_score(labels, row) for row in scores])
    assert seed_table.mean_auc(labels, scores) == pytest.approx(expected, abs=1e-12)


def test_interval_resamples_the_same_tiles_for_every_seed():
    labels, scores = _data()
    interval = seed_table.mean_auc_interval(labels, scores, n_resamples=200, seed=3)
    # The same draws, one resample at a time, with sklearn.
    rng = np.random.default_rng(3)
    normal, anomalous = scores[:, labels == 0], scores[:, labels == 1]
    chunk = max(1, 5_000_000 // (3 * normal.shape[1] * anomalous.shape[1]))
    assert chunk >= 200  # one chunk: the draws below are the function's draws
    i0 = rng.integers(0, normal.shape[1], (200, normal.shape[1]))
    i1 = rng.integers(0, anomalous.shape[1], (200, anomalous.shape[1]))
    means = []
    for a, b in zip(i0, i1):
        resampled_labels = np.r_[np.zeros(a.size), np.ones(b.size)]
        aucs = [roc_auc_score(resampled_labels, np.r_[n[a], m[b]]) for n, m in zip(normal, anomalous)]
        means.append(np.mean(aucs))
    assert interval == pytest.approx([np.quantile(means, 0.025), np.quantile(means, 0.975)], abs=1e-12)
    assert interval[0] < seed_table.mean_auc(labels, scores) < interval[1]


def test_interval_needs_two_tiles_of_each_class():
    assert seed_table.mean_auc_interval(np.array([0, 0, 1]), np.zeros((2, 3))) is None


def test_summary_table_has_mean_sd_interval_and_kind_columns(tmp_path):
    reports = [
        {
            "val": {"roc_auc": 0.8},
            "test": {
                "roc_auc": auc,
                "f1": 0.5,
                "seconds_per_patch": 0.01,
                "per_kind": {
                    "scratch": {"roc_auc": auc - 0.1, "n_anomalous": 7},
                    "nail": {"roc_auc": 0.9, "n_anomalous": 2},
                },
            },
        }
        for auc in (0.70, 0.74)
    ]
    labels, scores = _data(seeds=2)
    workdirs = []
    for s, row in enumerate(scores):
        folder = tmp_path / f"seed_{s}"
        folder.mkdir()
        lines = ["split,image,y,x,label,score,predicted_anomalous"]
        lines += [
            f"test,scan_{i:03d}.png,0,{i % 3},{label},{value},0" for i, (label, value) in enumerate(zip(labels, row))
        ]
        lines += ["val,scan_9.png,0,0,1,0.5,0"]
        (folder / "scores.csv").write_text("\n".join(lines) + "\n")
        workdirs.append(str(folder))
    (tmp_path / "seed_0" / seed_table.RUN_FILE).write_text('{"seconds": 90.0}')
    summary = seed_table.method_summary("m", workdirs, reports)
    expected = seed_table.mean_auc_interval(labels, scores)
    assert summary["test_roc_auc_ci95"] == expected
    assert summary["per_kind"]["scratch"] == {"roc_auc": pytest.approx(0.62), "n_anomalous": 7, "seeds": 2}
    table = seed_table.summary_markdown([summary, {"method": "broken", "error": "ValueError: x"}])
    header, _, row, failed = table.splitlines()[:4]
    assert header.endswith("| nail (2) | scratch (7) |")
    assert f"| 0.720 ± 0.028 [{expected[0]:.3f}, {expected[1]:.3f}] |" in row
    assert "| 90 s |" in row and row.endswith("| 0.900 | 0.620 |")
    assert failed.startswith("| broken — FAILED: ValueError: x | n/a |")
