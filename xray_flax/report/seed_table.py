"""The comparison table of methods run over several seeds on the same data (table2 --seeds).

One row per method: validation ROC-AUC, test ROC-AUC as the mean over seeds with its spread and
a bootstrap interval of that mean, F1 at the validation threshold, pixel AUROC, AUPRO, run time,
s/patch, then one column per anomaly kind (the tile ROC-AUC of the normal test tiles against
the anomalous tiles holding that kind, `metrics["test"]["per_kind"]`, averaged over seeds).

The interval of the seed mean resamples the TEST TILES, the same indices for every seed (all
seeds score the same tiles), normal and anomalous tiles separately as `metrics.
bootstrap_intervals` does for one run: it says how much the mean would move on another draw of
tiles like these. The spread over seeds (sample standard deviation) says how much training
noise moves one run; the two answer different questions and both are shown.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np

from xray_flax import metrics
from xray_flax.report import tables

RUN_FILE = "table2_run.json"  # wall seconds of the train-and-evaluate call that made the run


def mean_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mean over rows of `scores` [seeds, tiles] of each row's ROC-AUC against `labels` [tiles]."""
    return float(np.mean(metrics.auc_of_samples(scores[:, labels == 0], scores[:, labels == 1])))


def mean_auc_interval(
    labels: np.ndarray, scores: np.ndarray, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> list[float] | None:
    """Percentile bootstrap interval of `mean_auc`: the tiles are resampled (the same draw for
    every seed), normal and anomalous separately so each resample keeps the class counts.
    None where a class has fewer than two tiles."""
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    normal, anomalous = scores[:, labels == 0], scores[:, labels == 1]
    if normal.shape[1] < 2 or anomalous.shape[1] < 2:
        return None
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    # A few resamples at a time. The chunk size fixes the order of the draws, so it stays the
    # one the published intervals were drawn with (docs/results.md).
    chunk = max(1, 5_000_000 // (scores.shape[0] * normal.shape[1] * anomalous.shape[1]))
    for start in range(0, n_resamples, chunk):
        count = min(chunk, n_resamples - start)
        i0 = rng.integers(0, normal.shape[1], (count, normal.shape[1]))
        i1 = rng.integers(0, anomalous.shape[1], (count, anomalous.shape[1]))
        # [count, seeds, n] resamples -> AUC per (resample, seed) -> mean over seeds.
        resampled_normal = np.moveaxis(normal[:, i0], 0, 1)
        resampled_anomalous = np.moveaxis(anomalous[:, i1], 0, 1)
        means[start : start + count] = metrics.auc_of_samples(resampled_normal, resampled_anomalous).mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    return [float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail))]


def align(score_tables: Sequence[dict], split: str) -> tuple[np.ndarray, np.ndarray]:
    """labels [tiles], scores [runs, tiles] of the tiles every run scored, from one
    {tile: (label, score)} table per run (`tables.load_scores`), in sorted tile order.
    ValueError when no tile is common or the runs disagree on a tile's label (not the same
    data); `split` only names the tiles in the message."""
    keys = sorted(set.intersection(*(set(t) for t in score_tables)))
    if not keys:
        raise ValueError(f"no {split} tile is scored by every workdir: are they runs on the same data?")
    labels = np.array([score_tables[0][k][0] for k in keys])
    if any(t[k][0] != score_tables[0][k][0] for t in score_tables[1:] for k in keys):
        raise ValueError(f"the workdirs disagree on a {split} tile's label: not the same data")
    return labels, np.array([[t[k][1] for k in keys] for t in score_tables])


def aligned_test_scores(workdirs: Sequence[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """`align` of the runs' test tiles; None when a run has no scores.csv or they are not
    runs on the same data."""
    try:
        return align([tables.load_scores(w, "test") for w in workdirs], "test")
    except (OSError, KeyError, ValueError):
        return None


def run_seconds(workdir: str) -> float | None:
    try:
        with open(os.path.join(workdir, RUN_FILE), encoding="utf-8") as f:
            return float(json.load(f)["seconds"])
    except (OSError, KeyError, TypeError, ValueError):
        return None


def _values(reports: Sequence[dict], split: str, key: str) -> list[float]:
    out = []
    for report in reports:
        value = (report.get(split) or {}).get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append(float(value))
    return out


def mean_sd_text(values: Sequence[float], digits: int = 3) -> str:
    """'0.748' for one value, '0.748 ± 0.012' (sample sd) for several, n/a for none."""
    if not values:
        return tables.MISSING
    if len(values) == 1:
        return tables.format_number(values[0], digits)
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def method_summary(method: str, workdirs: Sequence[str], reports: Sequence[dict]) -> dict:
    """The numbers of one method's row from its runs (one per seed) and their metrics.json."""
    summary = {"method": method, "seeds": len(reports), "workdirs": list(workdirs)}
    for split, key, name in (
        ("val", "roc_auc", "val_roc_auc"),
        ("test", "roc_auc", "test_roc_auc"),
        ("test", "f1", "test_f1"),
        ("test", "pixel_auroc", "pixel_auroc"),
        ("test", "aupro", "aupro"),
        ("test", "seconds_per_patch", "seconds_per_patch"),
    ):
        summary[name] = _values(reports, split, key)
    seconds = [s for s in (run_seconds(w) for w in workdirs) if s is not None]
    summary["run_seconds"] = seconds
    if len(reports) == 1:
        test = reports[0].get("test") or {}
        summary["test_roc_auc_ci95"] = test.get("roc_auc_ci95")
        summary["test_f1_ci95"] = test.get("f1_ci95")
    else:
        aligned = aligned_test_scores(workdirs)
        summary["test_roc_auc_ci95"] = None if aligned is None else mean_auc_interval(*aligned)
        summary["test_f1_ci95"] = None
    kinds: dict[str, list[tuple[float, int]]] = {}
    for report in reports:
        for kind, values in ((report.get("test") or {}).get("per_kind") or {}).items():
            if isinstance(values, dict) and isinstance(values.get("roc_auc"), (int, float)):
                kinds.setdefault(kind, []).append((float(values["roc_auc"]), int(values.get("n_anomalous", 0))))
    summary["per_kind"] = {
        kind: {"roc_auc": float(np.mean([v for v, _ in pairs])), "n_anomalous": pairs[0][1], "seeds": len(pairs)}
        for kind, pairs in sorted(kinds.items())
    }
    return summary


def _duration_text(seconds: Sequence[float]) -> str:
    if not seconds:
        return tables.MISSING
    mean = float(np.mean(seconds))
    return f"{mean:.0f} s" if mean < 120 else f"{mean / 60:.1f} min"


def _with_interval(values: Sequence[float], interval) -> str:
    text = mean_sd_text(values)
    if isinstance(interval, (list, tuple)) and len(interval) == 2 and None not in interval:
        text += f" [{interval[0]:.3f}, {interval[1]:.3f}]"
    return text


def summary_markdown(summaries: Sequence[dict]) -> str:
    """The comparison table; kinds are the union over methods, each headed with its tile count."""
    counts: dict[str, int] = {}
    for summary in summaries:
        for kind, values in summary.get("per_kind", {}).items():
            counts.setdefault(kind, values["n_anomalous"])
    kinds = sorted(counts)
    header = [
        "Method",
        "seeds",
        "val ROC-AUC",
        "test ROC-AUC [95 %]",
        "F1",
        "pixel AUROC",
        "AUPRO",
        "train + eval",
        "s/patch",
    ] + [f"{kind} ({counts[kind]})" for kind in kinds]
    rows = []
    for s in summaries:
        if s.get("error"):
            rows.append([f"{s['method']} — FAILED: {s['error']}"] + [tables.MISSING] * (len(header) - 1))
            continue
        row = [
            s["method"],
            str(s["seeds"]),
            mean_sd_text(s["val_roc_auc"]),
            _with_interval(s["test_roc_auc"], s.get("test_roc_auc_ci95")),
            _with_interval(s["test_f1"], s.get("test_f1_ci95")),
            mean_sd_text(s["pixel_auroc"]),
            mean_sd_text(s["aupro"]),
            _duration_text(s["run_seconds"]),
            mean_sd_text(s["seconds_per_patch"], 4),
        ]
        row += [tables.format_number(s["per_kind"].get(k, {}).get("roc_auc"), 3) for k in kinds]
        rows.append(row)
    note = (
        "\nTest ROC-AUC: mean ± sample sd over seeds; brackets: 95 % stratified bootstrap interval "
        "(of the seed mean when several seeds, the test tiles resampled jointly). F1 at the "
        "threshold chosen on validation. Kind columns: tile ROC-AUC of the normal test tiles "
        "against the anomalous tiles holding that kind (their count in the heading), mean over "
        "seeds. train + eval: wall time of the run as table2 made it (n/a for runs made elsewhere).\n"
    )
    return tables.markdown_table(header, rows) + note
