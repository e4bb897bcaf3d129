"""Fusion of detectors' tile scores, chosen on the validation split only.

    .venv/bin/python benchmarks/score_fusion.py WORKDIR_A WORKDIR_B [...] [--names=A,B] [--out fusion.json]

Every workdir's `scores.csv` (written by evaluation: split, image, tile origin, label, score)
must score the same tiles (e.g. the methods of one `python -m xray_flax.table2` root). Each
method's scores become ranks against its own validation scores (the fraction of validation
tiles scoring below: the scales of a distance, a reconstruction error and a probability then
agree); the fused score is a weighted mean of those ranks. The weights are picked on the
validation split (a grid over the simplex, step 0.1; ties go to the more even weights), then
applied once to the test split. Printed and written: each method's and the fusions' validation
and test ROC-AUC (test with a stratified bootstrap 95 % interval), for the validation-chosen
weights, equal weights, and the single method best on validation (choice, not fusion).
Labels are never used on the test split except to score the result.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os

import numpy as np
from sklearn.metrics import roc_auc_score

from xray_flax import metrics
from xray_flax.report import seed_table, tables

Key = tuple[str, str, int, int]


def read_scores(workdir: str) -> dict[Key, tuple[int, float]]:
    """(split, image, y, x) -> (label, score) of the labelled val/test tiles of `workdir`."""
    return {
        (split, *tile): row for split in ("val", "test") for tile, row in tables.load_scores(workdir, split).items()
    }


def aligned(score_tables: list[dict[Key, tuple[int, float]]], split: str) -> tuple[np.ndarray, np.ndarray]:
    """labels [N], scores [methods, N] of the tiles of `split` every method scored."""
    try:
        return seed_table.align([{k[1:]: v for k, v in t.items() if k[0] == split} for t in score_tables], split)
    except ValueError as error:
        raise SystemExit(str(error)) from None


def ranks_against(reference: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per method: the mid-rank fraction of `reference` (its validation scores) below each score."""
    out = np.empty_like(scores, dtype=np.float64)
    for m, (ref, s) in enumerate(zip(reference, scores)):
        ref = np.sort(ref)
        below = np.searchsorted(ref, s, side="left")
        at_or_below = np.searchsorted(ref, s, side="right")
        out[m] = (below + at_or_below) / (2.0 * len(ref))
    return out


def simplex_grid(n: int, step: float = 0.1) -> list[np.ndarray]:
    """Weight vectors of `n` methods, non-negative, summing to 1, on a grid of `step`."""
    k = round(1 / step)
    return [np.array(c) / k for c in itertools.product(range(k + 1), repeat=n) if sum(c) == k]


def choose_weights(labels: np.ndarray, ranks: np.ndarray) -> tuple[np.ndarray, float]:
    """The grid weights with the best validation ROC-AUC; ties go to the most even weights."""
    best, best_key = None, None
    for w in simplex_grid(len(ranks)):
        auc = roc_auc_score(labels, w @ ranks)
        key = (round(auc, 12), -float(np.abs(w - 1 / len(w)).sum()))
        if best_key is None or key > best_key:
            best, best_key = w, key
    return best, best_key[0]


def test_row(name: str, val_auc: float, labels: np.ndarray, scores: np.ndarray, seed: int = 0) -> dict:
    low, high = metrics.bootstrap_intervals(labels, scores, threshold=0.5, seed=seed)["roc_auc"]
    return {
        "method": name,
        "val_roc_auc": round(float(val_auc), 4),
        "test_roc_auc": round(float(roc_auc_score(labels, scores)), 4),
        "test_interval_95": [round(float(low), 4), round(float(high), 4)],
    }


def fuse(workdirs: list[str], names: list[str]) -> dict:
    score_tables = [read_scores(w) for w in workdirs]
    val_labels, val_scores = aligned(score_tables, "val")
    test_labels, test_scores = aligned(score_tables, "test")
    val_ranks = ranks_against(val_scores, val_scores)
    test_ranks = ranks_against(val_scores, test_scores)
    rows = []
    val_aucs = [roc_auc_score(val_labels, s) for s in val_scores]
    for name, auc, s in zip(names, val_aucs, test_scores):
        rows.append(test_row(name, auc, test_labels, s))
    weights, val_auc = choose_weights(val_labels, val_ranks)
    fused = test_row("fusion, weights chosen on validation", val_auc, test_labels, weights @ test_ranks)
    fused["weights"] = dict(zip(names, (round(float(w), 2) for w in weights)))
    rows.append(fused)
    even = np.full(len(names), 1 / len(names))
    rows.append(
        test_row("fusion, equal weights", roc_auc_score(val_labels, even @ val_ranks), test_labels, even @ test_ranks)
    )
    best = int(np.argmax(val_aucs))
    chosen = test_row(f"choice: best on validation ({names[best]})", val_aucs[best], test_labels, test_scores[best])
    rows.append(chosen)
    return {
        "workdirs": workdirs,
        "val_tiles": [int(len(val_labels)), int(val_labels.sum())],
        "test_tiles": [int(len(test_labels)), int(test_labels.sum())],
        "rows": rows,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdirs", nargs="+")
    parser.add_argument("--names", default="", help="comma-separated, one per workdir (default: folder names)")
    parser.add_argument("--out", help="JSON of the table")
    args = parser.parse_args(argv)
    names = args.names.split(",") if args.names else [os.path.basename(os.path.normpath(w)) for w in args.workdirs]
    if len(names) != len(args.workdirs):
        raise SystemExit(f"--names gives {len(names)} names for {len(args.workdirs)} workdirs")
    result = fuse(args.workdirs, names)
    print(f"val tiles (anomalous): {result['val_tiles']}, test tiles (anomalous): {result['test_tiles']}")
    print("| method | val ROC-AUC | test ROC-AUC [95 %] | weights |\n|---|---|---|---|")
    for row in result["rows"]:
        low, high = row["test_interval_95"]
        weights = ", ".join(f"{k} {v}" for k, v in row.get("weights", {}).items())
        test = f"{row['test_roc_auc']:.4f} [{low:.3f}, {high:.3f}]"
        print(f"| {row['method']} | {row['val_roc_auc']:.4f} | {test} | {weights} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
