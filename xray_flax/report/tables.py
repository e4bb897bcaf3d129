"""Markdown tables of metrics.json in the columns of the paper's Table 2.

metrics.json (written by evaluate.py): ``{"method": str, "test": {...}, ...}`` where
``test`` is `metrics.evaluate_scores` output plus ``"seconds_per_patch"``. Acc, F1,
Precision and Recall are the values at the threshold chosen on the validation split.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Sequence

TABLE2_COLUMNS = ("Method", "ROC-AUC", "Acc", "F1", "Precision", "Recall", "s/patch")
# Keys of the "test" dict behind each numeric column.
_TABLE2_KEYS = ("roc_auc", "accuracy", "f1", "precision", "recall", "seconds_per_patch")

# Mezina, Burget, Kotrly 2025, Table 2 (their Ghent Altarpiece patches, their GPU):
# method, ROC-AUC, Acc, F1, Precision, Recall, s/patch.
PAPER_TABLE2 = (
    ("CFA", 0.7951, 0.7422, 0.6784, 0.6748, 0.6821, 0.0991),
    ("CS-Flow", 0.7021, 0.6126, 0.6370, 0.5084, 0.8525, 0.1213),
    ("DRAEM", 0.9024, 0.8192, 0.7773, 0.7636, 0.7914, 0.1402),
    ("FastFlow", 0.7853, 0.7153, 0.6567, 0.6324, 0.6831, 0.0425),
    ("STFPM", 0.4273, 0.4125, 0.5608, 0.3994, 0.9409, 0.1180),
    ("Reverse Distillation", 0.6746, 0.4935, 0.6076, 0.4396, 0.9836, 0.1594),
    ("Proposed", 0.8755, 0.8399, 0.7869, 0.8383, 0.7413, 0.0824),
)
PAPER_NOTE = (
    "Rows marked (paper) are the published Table 2 of Mezina et al. 2025, measured on the "
    "authors' data and GPU; they are not comparable number for number with runs on other data."
)

MISSING = "n/a"


def format_number(value, digits: int = 4) -> str:
    if value is None or isinstance(value, bool):
        return MISSING
    try:
        return f"{float(value):.{digits}f}"
    except (TypeError, ValueError):
        return MISSING


def _cell(text: str) -> str:
    # A '|' would split the Markdown cell.
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def table2_row(method: str, test: dict) -> list[str]:
    """One Table-2 row from a metrics.json "test" dict (missing values -> 'n/a')."""
    return [method] + [format_number(test.get(key)) for key in _TABLE2_KEYS]


def paper_rows() -> list[list[str]]:
    return [[f"{name} (paper)"] + [format_number(v) for v in values] for name, *values in PAPER_TABLE2]


def table2_markdown(entries: Sequence[tuple[str, dict]], include_paper: bool = False) -> str:
    """Table 2 for (method name, "test" dict) entries, optionally with the paper's rows."""
    rows = [table2_row(name, test) for name, test in entries]
    if include_paper:
        rows += paper_rows()
    text = markdown_table(TABLE2_COLUMNS, rows)
    if include_paper:
        text += "\n" + PAPER_NOTE + "\n"
    return text


def load_metrics(workdir: str | os.PathLike) -> dict:
    """WORKDIR/metrics.json, checked for the keys the tables need."""
    path = os.path.join(workdir, "metrics.json")
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"workdir {os.fspath(workdir)!r} does not exist")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} not found: run `python -m xray_flax.main --mode evaluate --workdir {os.fspath(workdir)}` first"
        )
    try:
        with open(path, encoding="utf-8") as f:
            report = json.load(f)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(report, dict) or not isinstance(report.get("test"), dict):
        raise ValueError(f"{path} has no 'test' section (expected the output of evaluate.py)")
    return report


def load_scores(workdir: str | os.PathLike, split: str) -> dict[tuple[str, int, int], tuple[int, float]]:
    """{(image, y, x): (label, score)} of the labelled tiles (label 0 or 1) of `split` in
    WORKDIR/scores.csv, as evaluate.py writes it; unknown tiles (-1) are left out."""
    rows = {}
    with open(os.path.join(workdir, "scores.csv"), newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            label = int(row["label"])
            if row["split"] == split and label >= 0:
                rows[(row["image"], int(row["y"]), int(row["x"]))] = (label, float(row["score"]))
    return rows


def interval_text(interval) -> str:
    """[low, high] -> '0.6512 - 0.7830'; n/a when absent (older reports, one class only)."""
    if not isinstance(interval, (list, tuple)) or len(interval) != 2 or None in interval:
        return MISSING
    return f"{format_number(interval[0], 4)} - {format_number(interval[1], 4)}"


def metrics_markdown(report: dict) -> str:
    """Markdown summary of one metrics.json: Table-2 row, threshold, fixed-threshold
    metrics, confusion matrices and pixel metrics when present; null values read "n/a",
    and the report's warnings (why they are null) follow as notes."""
    test = report.get("test", {})
    method = str(report.get("method", "model"))
    parts = [f"# Evaluation: {method}\n", table2_markdown([(method, test)])]
    details = [
        ("test patches", test.get("n"), 0),
        ("anomalous / normal", f"{test.get('n_anomalous', MISSING)} / {test.get('n_normal', MISSING)}", None),
        ("ROC-AUC 95 % interval (stratified bootstrap)", interval_text(test.get("roc_auc_ci95")), None),
        ("F1 95 % interval (stratified bootstrap)", interval_text(test.get("f1_ci95")), None),
        ("average precision", test.get("average_precision"), 4),
        ("validation ROC-AUC", (report.get("val") or {}).get("roc_auc"), 4),
        ("threshold (chosen on val)", test.get("threshold"), 6),
        ("threshold rule", test.get("threshold_rule", MISSING), None),
        ("confusion matrix [[tn, fp], [fn, tp]]", test.get("confusion_matrix", MISSING), None),
    ]
    fixed = test.get("fixed_threshold")
    if isinstance(fixed, dict):
        details += [
            (
                f"at fixed threshold {format_number(fixed.get('threshold'), 2)}: acc / F1 / precision / recall",
                " / ".join(format_number(fixed.get(k)) for k in ("accuracy", "f1", "precision", "recall")),
                None,
            ),
            ("confusion matrix at fixed threshold", fixed.get("confusion_matrix", MISSING), None),
        ]
    if "pixel_auroc" in test:
        details += [
            ("pixel AUROC", test.get("pixel_auroc"), 4),
            ("pixel AUROC error bound", test.get("pixel_auroc_error_bound"), 6),
            (f"AUPRO (FPR <= {test.get('aupro_fpr_limit', 0.3)})", test.get("aupro"), 4),
        ]
    for key in ("checkpoint", "step", "patch_size", "score_filter_size", "score_top_k"):
        if key in report:
            details.append((key.replace("_", " "), report[key], None))
    rows = []
    for name, value, digits in details:
        text = MISSING if value is None else str(value)
        rows.append([name, format_number(value, digits) if digits is not None else text])
    parts.append("\n" + markdown_table(("quantity", "value"), rows))
    # Why some values are n/a (a split without both classes, evaluate.one_class_warnings).
    notes = report.get("warnings") or []
    if notes:
        parts.append("\nNotes:\n\n" + "".join(f"- {note}\n" for note in notes))
    return "".join(parts)
