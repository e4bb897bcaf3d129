"""benchmarks/score_fusion.py: ranks against validation, the weight grid, and fusion chosen on
validation alone, against scikit-learn's ROC-AUC and NumPy."""

from __future__ import annotations

import csv
import os
import sys

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import score_fusion  # noqa: E402


def _write_scores(workdir, rows):
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "scores.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["split", "image", "y", "x", "label", "score", "predicted_anomalous"])
        writer.writerows(rows)


def test_ranks_against_validation_are_mid_rank_fractions():
    reference = np.array([[1.0, 2.0, 2.0, 4.0]])
    scores = np.array([[0.0, 2.0, 3.0, 5.0]])
    # below / ties counted half: 0 -> 0, 2 -> (1 + 3) / 8, 3 -> 3/4, 5 -> 1
    np.testing.assert_allclose(score_fusion.ranks_against(reference, scores), [[0.0, 0.5, 0.75, 1.0]])


def test_simplex_grid_covers_the_simplex():
    grid = score_fusion.simplex_grid(3)
    assert len(grid) == 66  # C(10 + 2, 2)
    assert all(abs(w.sum() - 1) < 1e-12 and (w >= 0).all() for w in grid)


def test_fusion_choice_uses_validation_only_and_matches_sklearn(tmp_path):
    rng = np.random.default_rng(0)
    rows_a, rows_b = [], []
    for split in ("val", "test"):
        labels = np.r_[np.zeros(60, int), np.ones(20, int)]
        # A is informative on both splits; B only on validation: validation picks A's weight up.
        a = labels + rng.normal(0, 0.7, labels.size)
        b = (labels if split == "val" else 0) * 0.3 + rng.normal(0, 1.0, labels.size)
        for i, (label, sa, sb) in enumerate(zip(labels, a, b)):
            rows_a.append([split, f"img{i % 4}.png", i, 0, label, sa, 0])
            rows_b.append([split, f"img{i % 4}.png", i, 0, label, sb, 0])
    rows_a.append(["test", "unlabelled.png", 0, 0, -1, 9.0, 1])  # label -1: never scored
    _write_scores(tmp_path / "a", rows_a)
    _write_scores(tmp_path / "b", rows_b)
    result = score_fusion.fuse([str(tmp_path / "a"), str(tmp_path / "b")], ["a", "b"])
    rows = {r["method"]: r for r in result["rows"]}
    test_labels = np.array([r[4] for r in rows_a if r[0] == "test" and r[4] >= 0])
    test_a = np.array([r[5] for r in rows_a if r[0] == "test" and r[4] >= 0])
    assert rows["a"]["test_roc_auc"] == pytest.approx(roc_auc_score(test_labels, test_a), abs=1e-4)
    assert result["test_tiles"] == [80, 20]
    fused = rows["fusion, weights chosen on validation"]
    w = fused["weights"]
    assert w["a"] + w["b"] == pytest.approx(1.0)
    # The chosen weights are the validation argmax over the grid, recomputed here.
    tables = [score_fusion.read_scores(str(tmp_path / n)) for n in ("a", "b")]
    val_labels, val_scores = score_fusion.aligned(tables, "val")
    ranks = score_fusion.ranks_against(val_scores, val_scores)
    best = max(roc_auc_score(val_labels, g @ ranks) for g in score_fusion.simplex_grid(2))
    assert fused["val_roc_auc"] == pytest.approx(best, abs=1e-4)
    assert "choice: best on validation (a)" in rows or "choice: best on validation (b)" in rows


def test_workdirs_on_different_data_are_refused(tmp_path):
    _write_scores(tmp_path / "a", [["val", "x.png", 0, 0, 0, 0.1, 0], ["val", "x.png", 1, 0, 1, 0.9, 1]])
    _write_scores(tmp_path / "b", [["val", "x.png", 0, 0, 1, 0.1, 0], ["val", "x.png", 1, 0, 1, 0.9, 1]])
    tables = [score_fusion.read_scores(str(tmp_path / n)) for n in ("a", "b")]
    with pytest.raises(SystemExit, match="disagree"):
        score_fusion.aligned(tables, "val")
