"""Evaluation from a checkpoint, for any detector: maps on a split -> metrics, per-tile CSV, reports.

Runs without any training code: it needs a config (the one saved in the workdir by
default), the checkpoint's variables (no optimiser is built or read) and the data.
Thresholds are chosen on the validation split and applied to the test split, as the paper
reports its accuracy, precision, recall and F1. Maps are normalised first with the
normalisation stored beside the best checkpoint (xray_flax/normalization.py); a checkpoint
without one (a `checkpoints/<step>` directory) gets it fitted on the validation split here.

Writes to the output directory:

    metrics.json, metrics.md     test metrics (tile level; image level where image labels exist)
    scores.csv                   every scored tile: split, image, tile origin, label, score, prediction
    heatmaps_test_patches.png    gallery of the best-scored anomalous and normal test tiles
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from xray_flax import (
    checkpoint,
    detectors,
    errors,
    evaluation_config,
    files,
    metrics,
    normalization,
    parallel,
    progress,
    steps,
)
from xray_flax.data import pipeline
from xray_flax.inference import Inferencer
from xray_flax.normalization import IDENTITY, ScoreNormalization
from xray_flax.report import gallery, tables

# Pixel metrics use maps subsampled to at most this side per patch, which bounds the memory
# of a large test split; the pixel AUROC of a smooth map barely changes (docs/evaluation.md).
PIXEL_METRIC_SIDE = 64
GALLERY_ROWS = 8

log = logging.getLogger(__name__)


@dataclasses.dataclass
class SplitScores:
    labels: np.ndarray  # [n] int, 1 = anomalous, 0 = normal, -1 = unknown
    scores: np.ndarray  # [n] image scores
    scan_index: np.ndarray  # [n] index of each tile's image in the split's records
    ys: np.ndarray  # [n] tile origins
    xs: np.ndarray
    maps: list[np.ndarray]  # subsampled anomaly maps of tiles whose pixel truth is known
    masks: list[np.ndarray]  # matching subsampled ground-truth masks
    normal_medians: np.ndarray  # [n normal tiles] median of each normal tile's map
    gallery: dict[str, np.ndarray]  # a few tiles for the figure


def score_filter_size(config: ml_collections.ConfigDict) -> int:
    return evaluation_config.resolve_score_filter_size(config.eval.score_filter_size, config.data.patch_size)


def score_top_k(config: ml_collections.ConfigDict) -> int:
    top_k = int(config.eval.get("score_top_k", 1))
    if top_k < 1:
        raise ValueError(f"eval.score_top_k must be a positive int (1 = the max of the map), got {top_k}")
    return top_k


class NonFiniteScoresError(errors.UserError):
    """The detector gave NaN or infinite anomaly maps or scores for finite input tiles."""


def _check_finite(batch: dict, batch_maps: np.ndarray, batch_scores: np.ndarray, splits: Any, split: str) -> None:
    """A NaN/Inf map or score must stop the evaluation: sorted into ROC curves and
    thresholds it would give plausible-looking wrong metrics."""
    finite = np.isfinite(batch_scores) & np.isfinite(batch_maps.reshape(len(batch_maps), -1)).all(axis=1)
    if finite.all():
        return
    i = int(np.argmin(finite))
    scan = splits.get(split)[int(batch["scan_index"][i])].path
    where = f"tile y={int(batch['y'][i])} x={int(batch['x'][i])} of {scan} ({split} split)"
    if not np.isfinite(batch["image"][i]).all():
        raise NonFiniteScoresError(f"non-finite input pixels in {where}: check that image")
    raise NonFiniteScoresError(
        f"the detector's anomaly map is NaN/Inf for finite input, {where}: the parameters in use are damaged "
        "or the training diverged; evaluate another checkpoint (--config.eval.checkpoint) or retrain"
    )


def score_split(
    infer: Inferencer, splits: Any, split: str, config: ml_collections.ConfigDict, keep_gallery: int = 0
) -> SplitScores:
    """Anomaly maps and image scores of every tile of a split, in a deterministic order.

    Memory stays bounded on large splits: pixel maps are subsampled, and only the
    candidates of the gallery (the best-scored anomalous and normal tiles) are kept.
    """
    total = pipeline.count_tiles(splits, split, config.data)
    columns: dict[str, list] = {"label": [], "score": [], "scan_index": [], "y": [], "x": []}
    maps, masks, medians = [], [], []
    kept: dict[str, np.ndarray] = {}
    report = progress.ReportProgress(f"{split} split", total, unit="tiles", every_secs=10.0)
    report(0)
    done = 0
    for batch in pipeline.iterate_eval_batches(splits, split, config.data, batch_size=infer.batch_size):
        out = infer(batch["image"])
        batch_maps, batch_scores = out["map"], out["score"]
        _check_finite(batch, batch_maps, batch_scores, splits, split)
        for key, value in (("label", batch["label"]), ("score", batch_scores)):
            columns[key].append(value)
        for key in ("scan_index", "y", "x"):
            columns[key].append(batch[key])
        step = max(1, batch_maps.shape[1] // PIXEL_METRIC_SIDE)
        for i in range(len(batch_scores)):
            label = batch["label"][i]
            if label == 0:
                medians.append(float(np.median(batch_maps[i, ::step, ::step])))
            if label >= 0 and (batch["mask"][i].any() or label == 0):
                maps.append(batch_maps[i, ::step, ::step])
                masks.append(batch["mask"][i, ::step, ::step, 0] > 0.5)
        if keep_gallery:
            candidates = {
                "image": batch["image"],
                "map": batch_maps,
                "mask": batch["mask"][..., 0],
                "label": batch["label"],
                "score": batch_scores,
            }
            if "reconstruction" in out:
                candidates["reconstruction"] = out["reconstruction"]
            kept = _best_of_each_class([kept, candidates] if kept else [candidates], keep_gallery)
        done += len(batch_scores)
        report(done)
    if not columns["label"]:
        raise ValueError(f"the {split!r} split has no tiles; check config.data (split fractions, patch size)")
    c = {k: np.concatenate(v) for k, v in columns.items()}
    return SplitScores(
        c["label"],
        c["score"],
        c["scan_index"],
        c["y"],
        c["x"],
        maps,
        masks,
        np.asarray(medians, np.float64),
        _gallery_rows(kept, keep_gallery) if kept else {},
    )


def _best_of_each_class(parts: list[dict[str, np.ndarray]], rows: int) -> dict[str, np.ndarray]:
    """The `rows` highest-scored anomalous and `rows` highest-scored other tiles of `parts`."""
    arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.argsort(-arrays["score"], kind="stable")
    anomalous = order[arrays["label"][order] == 1][:rows]
    other = order[arrays["label"][order] != 1][:rows]
    chosen = np.concatenate([anomalous, other])
    return {k: v[chosen] for k, v in arrays.items()}


def _gallery_rows(candidates: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    """Half the rows for the best-scored anomalous tiles, the rest for the best normal ones."""
    is_anomalous = candidates["label"] == 1
    anomalous = np.flatnonzero(is_anomalous)[: (rows + 1) // 2]
    other = np.flatnonzero(~is_anomalous)[: rows - len(anomalous)]
    chosen = np.concatenate([anomalous, other])
    return {k: v[chosen] for k, v in candidates.items()}


def normalization_is_fitted(detector: detectors.Detector, config: ml_collections.ConfigDict) -> bool:
    """Whether config.eval.normalization asks for a fitted normalisation (else the identity)."""
    mode = config.eval.normalization
    if mode not in ("auto", "none", normalization.NORMAL_QUANTILE_RULE):
        raise ValueError(f"config.eval.normalization={mode!r}; expected 'auto', 'none' or 'normal_quantile'")
    return not (mode == "none" or (mode == "auto" and detector.bounded_map))


def fit_normalization(
    detector: detectors.Detector, config: ml_collections.ConfigDict, raw_val: SplitScores
) -> ScoreNormalization:
    """The score normalisation config.eval.normalization asks for, from raw validation scores."""
    if not normalization_is_fitted(detector, config):
        return IDENTITY
    normal = raw_val.labels == 0
    if not normal.any():
        # An all-anomalous (or unlabelled) validation split: nothing to fit on. Raw maps keep
        # every metric, threshold and ranking defined (all are computed on the same scale),
        # only the fixed threshold and colour scales lose their meaning.
        log.warning(
            "the validation split has no normal tiles (%d tiles, %d anomalous): the score normalisation "
            "(config.eval.normalization=%r) cannot be fitted and maps stay raw; give val normal images "
            "(config.data.split_fractions) for normalised maps",
            raw_val.labels.size,
            int(np.sum(raw_val.labels == 1)),
            config.eval.normalization,
        )
        return IDENTITY
    return normalization.fit(raw_val.normal_medians, raw_val.scores[normal], config.eval.normalization_quantile)


def restore_inferencer(config: ml_collections.ConfigDict, workdir: str, mesh, batch_size: int, splits: Any = None):
    """(detector, Inferencer, checkpoint meta, checkpoint path) of the checkpoint to evaluate.

    The normalisation is the one stored with the checkpoint; a checkpoint without one (a
    `checkpoints/<step>` directory) gets it fitted on the validation split of `splits`
    (prepared from config.data when not given) now, unless it is the identity anyway.
    """
    detector = detectors.build(config)
    abstract = steps.replicated_abstract(
        detector.abstract_variables(config.data.patch_size, config.data.channels), mesh
    )
    variables, meta, path = checkpoint.restore_for_inference(workdir, abstract, config.eval.get("checkpoint", ""))
    infer = Inferencer(detector, variables, mesh, batch_size, score_filter_size(config), IDENTITY, score_top_k(config))
    stored = meta.get("normalization")
    if stored:
        norm = ScoreNormalization.from_json(stored)
    elif not normalization_is_fitted(detector, config):
        norm = IDENTITY
    else:
        splits = splits if splits is not None else pipeline.prepare_splits(config.data, None)
        norm = fit_normalization(detector, config, score_split(infer, splits, "val", config))
        log.info("score normalisation fitted on the validation split: %s", norm)
    infer.set_variables(variables, norm)
    return detector, infer, meta, path


def _image_level(splits: Any, split: str, scores: SplitScores) -> tuple[np.ndarray, np.ndarray] | None:
    """(labels, scores) per image — the max over its tiles — for images whose label the layout
    gives (MVTec, Folder); None when the split has no such images."""
    records = splits.get(split)
    labels = np.asarray([getattr(r, "image_label", None) for r in records], dtype=object)
    known = np.flatnonzero([label is not None for label in labels])
    if known.size == 0 or known.size == len(records) and np.bincount(scores.scan_index).max() == 1:
        # No image labels, or one tile per image: the tile metrics are the image metrics.
        return None
    best = np.full(len(records), -np.inf)
    np.maximum.at(best, scores.scan_index, scores.scores)
    known = known[np.isfinite(best[known])]
    if known.size == 0:
        return None  # no labelled image has a scored tile
    return labels[known].astype(np.int64), best[known]


def known(scores: SplitScores) -> tuple[np.ndarray, np.ndarray]:
    """(labels, scores) of the tiles whose label is known (not -1)."""
    keep = scores.labels >= 0
    return scores.labels[keep], scores.scores[keep]


def validation_roc_auc(splits: Any, split: str, scores: SplitScores) -> float:
    """ROC-AUC that ranks checkpoints: per image where the layout gives image labels and
    images span several tiles (which tile holds the defect is unknown), else per tile.
    ``nan`` when a class is missing (or no tile is labelled)."""
    images = _image_level(splits, split, scores)
    labels, values = images if images is not None else known(scores)
    return metrics.roc_auc(labels, values) if labels.size else math.nan


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
    output_dir = output_dir or workdir
    mesh = parallel.make_mesh(config.mesh)
    splits = pipeline.prepare_splits(config.data, None)
    detector, infer, meta, path = restore_inferencer(config, workdir, mesh, config.eval.batch_size, splits)
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
            "roc_auc": _finite_or_none(validation_roc_auc(splits, "val", val)),
            "n": int(val.labels.size),
        },
        "timing": timing,
    }
    images = _image_level(splits, "test", test)
    val_images = _image_level(splits, "val", val)
    if images is not None:
        report["test_images"] = metrics.evaluate_scores(
            *images,
            *(val_images if val_images is not None else (None, None)),
            fixed_threshold=config.eval.fixed_threshold,
            threshold_metric=config.eval.threshold_metric,
        )
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
    if jax.process_index() == 0:
        write_reports(report, test, output_dir)
        write_scores_csv(
            os.path.join(output_dir, "scores.csv"), splits, {"val": val, "test": test}, result["threshold"]
        )
    return report


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


def write_scores_csv(path: str, splits: Any, scored: dict[str, SplitScores], threshold: float) -> None:
    """One row per scored tile: split, image, tile origin, label (-1 unknown), score, prediction."""
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["split", "image", "y", "x", "label", "score", "predicted_anomalous"])
    for split, s in scored.items():
        paths = [r.path for r in splits.get(split)]
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
                ]
            )
    files.write_text_atomic(path, text.getvalue())


def write_reports(report: dict, test: SplitScores, output_dir: str) -> None:
    os.makedirs(output_dir, exist_ok=True)
    report = json_ready(report)
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
    )
    log.info("wrote metrics.json, metrics.md, scores.csv and heatmaps_test_patches.png to %s", output_dir)
