"""Evaluation from a checkpoint, for any detector: maps on a split -> metrics, per-tile CSV, reports.

Runs without any training code: it needs a config (the one saved in the workdir by
default), the checkpoint's variables (no optimiser is built or read) and the data.
Thresholds are chosen on the validation split and applied to the test split, as the paper
reports its accuracy, precision, recall and F1. Maps are normalised first with the
normalisation stored beside the best checkpoint (xray_flax/normalization.py); a checkpoint
without one (a `checkpoints/<step>` directory) gets it fitted on the validation split here.

Writes to the output directory:

    metrics.json, metrics.md     test metrics (tile level; image level where image labels exist)
    scores.csv                   every scored tile: split, image, tile origin, label, score, prediction,
                                 anomaly kinds
    heatmaps_test_patches.png    gallery of the best-scored anomalous and normal test tiles
    tensorboard_test/            TensorBoard: the test metrics (test/<metric>) at the checkpoint's
                                 step and the config as hyperparameters (HParams dashboard)

metrics.json records its provenance (git commit, versions, command line, config hash, device,
host, dates: xray_flax/provenance.py).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from xray_flax import files, metrics, parallel, provenance, scoring, summary
from xray_flax.data import kinds, pipeline
from xray_flax.report import gallery, overlay, tables
from xray_flax.scoring import SplitScores, known, score_filter_size, score_split, score_top_k

GALLERY_ROWS = 8
# TensorBoard folder of the test metrics and hyperparameters: a run of its own beside the
# training curves (one event file per training run stays in the workdir itself).
TENSORBOARD_DIR = "tensorboard_test"

log = logging.getLogger(__name__)


def one_class_warning(split: str, labels: np.ndarray, what: str, unit: str = "tiles") -> str | None:
    """Why metrics of `split` are undefined (null in metrics.json), or None when both classes are there.

    `what` says which metrics are null and what replaces them.
    """
    labels = np.asarray(labels)
    n_anomalous, n_normal = int(np.sum(labels == 1)), int(np.sum(labels == 0))
    if n_anomalous and n_normal:
        return None
    if not labels.size:
        why = f"no labelled {unit}"
    elif not n_anomalous:
        why = f"only normal {unit} ({n_normal})"
    else:
        why = f"only anomalous {unit} ({n_anomalous})"
    return f"the {split} split has {why}: {what}"


def evaluate(config: ml_collections.ConfigDict, workdir: str, output_dir: str | None = None) -> dict:
    """Evaluate the best checkpoint of `workdir` on the test split; writes metrics, scores and reports."""
    started = provenance.utc_now()
    output_dir = output_dir or workdir
    mesh = parallel.make_mesh(config.mesh)
    splits = pipeline.prepare_splits(config.data, None)
    detector, infer, meta, path = scoring.restore_inferencer(config, workdir, mesh, config.eval.batch_size, splits)
    log.info("evaluating %s (%s, step %s)", path, detector.name, meta.get("step"))

    val = score_split(infer, splits, "val", config)
    test = score_split(infer, splits, "test", config, keep_gallery=GALLERY_ROWS)
    has_pixel_truth = any(m.any() for m in test.masks)
    result = metrics.evaluate_scores(
        *known(test),
        *known(val),  # without labelled val tiles: config.eval.fixed_threshold
        masks=test.masks if has_pixel_truth else None,
        maps=test.maps if has_pixel_truth else None,
        fixed_threshold=config.eval.fixed_threshold,
        threshold_metric=config.eval.threshold_metric,
        fpr_limit=config.eval.aupro_fpr_limit,
        exact_max_pixels=config.eval.pixel_exact_max_pixels,
        n_bins=config.eval.pixel_histogram_bins,
    )
    log.info("tile threshold %.4f: %s", result["threshold"], scoring.threshold_source(result))
    if not has_pixel_truth:
        result["pixel_metrics"] = "not available: no pixel masks of anomalous test tiles"
    timing = infer.seconds_per_patch(
        test.gallery["image"], config.eval.timing_batches, config.eval.timing_warmup_batches
    )
    result["seconds_per_patch"] = timing.pop("seconds_per_patch")
    report = {
        "method": config.method,
        "detector": detector.name,
        "checkpoint": path,
        "step": meta.get("step"),
        "score_filter_size": score_filter_size(config),
        "score_top_k": score_top_k(config),
        "normalization": infer.normalization.to_json(),
        "patch_size": config.data.patch_size,
        "test": result,
        "val": {
            "roc_auc": _finite_or_none(scoring.validation_roc_auc(splits, "val", val)),
            "n": int(val.labels.size),
        },
        "timing": timing,
    }
    images = scoring.image_level(splits, "test", test)
    val_images = scoring.image_level(splits, "val", val)
    if images is not None:
        report["test_images"] = metrics.evaluate_scores(
            *images,
            *(val_images if val_images is not None else (None, None)),
            fixed_threshold=config.eval.fixed_threshold,
            threshold_metric=config.eval.threshold_metric,
        )
        log.info(
            "image threshold %.4f: %s",
            report["test_images"]["threshold"],
            scoring.threshold_source(report["test_images"], "images"),
        )
    scored = {"val": val, "test": test}
    tile_kinds = {split: split_tile_kinds(splits, split, s, config) for split, s in scored.items()}
    for split, section in (("val", report["val"]), ("test", result)):
        if tile_kinds[split] is not None:
            section["per_kind"] = metrics.per_kind_roc_auc(
                scored[split].labels, scored[split].scores, tile_kinds[split]
            )
            log_per_kind(split, section["per_kind"], int(np.sum(scored[split].labels == 0)))
    warnings = one_class_warnings(
        known(val)[0], known(test)[0], result["threshold_rule"], "tiles", ranks_checkpoints=val_images is None
    )
    if images is not None:
        val_image_labels = val_images[0] if val_images is not None else np.zeros(0, np.int64)
        warnings += one_class_warnings(
            val_image_labels, images[0], report["test_images"]["threshold_rule"], "images", val_images is not None
        )
    for warning in warnings if jax.process_index() == 0 else ():
        log.warning("%s", warning)
    if warnings:
        report["warnings"] = warnings
    report["provenance"] = provenance.collect(config, started)
    if jax.process_index() == 0:
        write_reports(report, test, output_dir, val)
        write_scores_csv(os.path.join(output_dir, "scores.csv"), splits, scored, result["threshold"], tile_kinds)
        write_tensorboard(report, config, os.path.join(output_dir, TENSORBOARD_DIR))
    return report


def split_tile_kinds(splits: Any, split: str, scores: SplitScores, config) -> list[tuple[str, ...]] | None:
    """The anomaly kinds of each scored tile of `split` (xray_flax/data/kinds.py), or None
    where the layout does not carry kinds."""
    return kinds.tile_kinds(
        splits.get(split),
        config.data.source,
        scores.scan_index,
        scores.ys,
        scores.xs,
        scores.labels,
        int(config.data.patch_size),
    )


def log_per_kind(split: str, per_kind: dict, n_normal: int) -> None:
    """One log line per anomaly kind: its tile ROC-AUC against the normal tiles."""
    for kind, entry in per_kind.items():
        auc = entry["roc_auc"]
        log.info(
            "%s tiles of kind %s: ROC-AUC %s (%d anomalous tiles holding it against %d normal tiles)",
            split,
            kind,
            "n/a" if auc is None else f"{auc:.4f}",
            entry["n_anomalous"],
            n_normal,
        )


def test_scalars(report: dict) -> dict[str, float]:
    """The finite numeric test metrics of `report` as TensorBoard scalars: test/<metric>, and
    test_images/<metric> where the layout gives image labels."""
    scalars = {}
    for section in ("test", "test_images"):
        for key, value in (report.get(section) or {}).items():
            if isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and math.isfinite(value):
                scalars[f"{section}/{key}"] = float(value)
    return scalars


def hyperparameters(config: ml_collections.ConfigDict) -> dict[str, bool | int | float | str]:
    """The config flattened to dotted keys with the values TensorBoard's HParams take (others as text)."""
    flat: dict[str, bool | int | float | str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}{key}.", item)
        else:
            flat[prefix[:-1]] = value if isinstance(value, (bool, int, float, str)) else str(value)

    walk("", config.to_dict())
    return flat


def write_tensorboard(report: dict, config: ml_collections.ConfigDict, logdir: str) -> None:
    """The test metrics at the checkpoint's step and the config as hyperparameters, through the
    metric-writer interface (`write_scalars`, `write_hparams` where the writer has it)."""
    writer = summary.EventFileWriter(logdir)
    try:
        writer.write_scalars(int(report.get("step") or 0), test_scalars(report))
        if hasattr(writer, "write_hparams"):
            writer.write_hparams(hyperparameters(config))
    finally:
        writer.close()


# How each fallback of metrics.select_threshold_with_rule picks the test threshold.
_THRESHOLD_FALLBACKS = {
    "no_anomalies": "the threshold is just above its highest score (rule no_anomalies)",
    "no_normals": "the threshold is its lowest score (rule no_normals)",
    "fixed_no_validation": "the threshold is config.eval.fixed_threshold (rule fixed_no_validation)",
}


def one_class_warnings(
    val_labels, test_labels, threshold_rule: str, unit: str = "tiles", ranks_checkpoints: bool = True
) -> list[str]:
    """Warnings for a validation or test split that lacks a class, whose metrics are null.

    The test threshold then falls back as `threshold_rule` says (docs/evaluation.md,
    Thresholds). `ranks_checkpoints`: these validation labels give the validation ROC-AUC
    (`validation_roc_auc`), null too, so training kept the newest checkpoint as the best.
    A test split without both classes has no ROC-AUC nor average precision.
    """
    fallback = _THRESHOLD_FALLBACKS.get(threshold_rule, f"the threshold rule is {threshold_rule}")
    if ranks_checkpoints:
        fallback = f"its ROC-AUC is null (training keeps the newest checkpoint as the best) and {fallback}"
    val = one_class_warning("validation", val_labels, fallback, unit)
    if np.asarray(test_labels).size:
        consequence = f"{unit[:-1]}-level ROC-AUC and average precision are null"
    else:
        consequence = (
            f"every {unit[:-1]}-level test metric is null (label them: masks, a labels CSV or the folder layout)"
        )
    test = one_class_warning("test", test_labels, consequence, unit)
    return [w for w in (val, test) if w is not None]


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def json_ready(value: Any, where: str = "metrics") -> Any:
    """`value` with every non-finite float replaced by None (strict JSON), each one logged.

    evaluate_scores already returns strict JSON; this is the last line of defence, so a
    metric that comes out nan somewhere else gives `null` and a warning, never a crash
    after training.
    """
    if isinstance(value, dict):
        return {k: json_ready(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            log.warning("%s is %s: written as null", where, value)
            return None
        return float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_scores_csv(
    path: str,
    splits: Any,
    scored: dict[str, SplitScores],
    threshold: float,
    tile_kinds: dict[str, list[tuple[str, ...]] | None] | None = None,
) -> None:
    """One row per scored tile: split, image, tile origin, label (-1 unknown), score, prediction,
    kind (the tile's anomaly kinds joined by '+'; empty for normal and unknown tiles and where
    kinds are unknown). `kind` comes last so that readers by column name or position still work."""
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["split", "image", "y", "x", "label", "score", "predicted_anomalous", "kind"])
    for split, s in scored.items():
        paths = [r.path for r in splits.get(split)]
        split_kinds = (tile_kinds or {}).get(split)
        for i in range(s.labels.size):
            score = float(s.scores[i])
            writer.writerow(
                [
                    split,
                    paths[s.scan_index[i]],
                    int(s.ys[i]),
                    int(s.xs[i]),
                    int(s.labels[i]),
                    repr(score),
                    int(score >= threshold),
                    "+".join(split_kinds[i]) if split_kinds is not None else "",
                ]
            )
    files.write_text_atomic(path, text.getvalue())


def write_reports(report: dict, test: SplitScores, output_dir: str, val: SplitScores | None = None) -> None:
    os.makedirs(output_dir, exist_ok=True)
    # What the validation normal tiles' maps reach: predict's overlays are transparent below it.
    report = json_ready({**report, **overlay.normal_level_record(val.maps, val.masks)} if val is not None else report)
    files.write_text_atomic(os.path.join(output_dir, "metrics.json"), json.dumps(report, indent=2, allow_nan=False))
    files.write_text_atomic(os.path.join(output_dir, "metrics.md"), tables.metrics_markdown(report))
    g = test.gallery
    gallery.write_patch_gallery(
        os.path.join(output_dir, "heatmaps_test_patches.png"),
        g["image"],
        g.get("reconstruction"),
        g["map"],
        g["mask"],
        max_rows=len(g["image"]),
        scores=g["score"],
        labels=g["label"],
        threshold=report["test"].get("threshold"),
        normal_level=(report.get("heatmap") or {}).get("normal_level"),
    )
    log.info("wrote metrics.json, metrics.md, scores.csv and heatmaps_test_patches.png to %s", output_dir)
