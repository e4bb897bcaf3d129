"""Scores of a split from a checkpoint's maps: the library that training, evaluate and predict share.

* `score_split`: anomaly maps and image scores of every tile of a split (bounded memory:
  subsampled pixel maps, a few gallery candidates), stopped on a NaN/Inf map.
* `fit_normalization`: the score normalisation config.eval.normalization asks for, from the
  validation split's raw scores (xray_flax/normalization.py).
* `validation_roc_auc`: the number that ranks checkpoints (per image where the layout gives
  image labels, else per tile).
* `restore_inferencer`: the checkpoint to evaluate as a ready `Inferencer`, with its stored
  normalisation (or one fitted on the validation split).
* `threshold_source`: how the evaluation's threshold was chosen, in words (evaluate's log,
  predict's region threshold).

The training loop validates through it, the evaluate command scores the test split through it
and predict restores its checkpoint through it; none of them imports another's module.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from typing import Any

import ml_collections
import numpy as np

from xray_flax import (
    checkpoint,
    config_rules,
    detectors,
    errors,
    evaluation_config,
    logs,
    metrics,
    normalization,
    progress,
    steps,
)
from xray_flax.data import pipeline
from xray_flax.inference import Inferencer
from xray_flax.normalization import IDENTITY, ScoreNormalization

# Pixel metrics use maps subsampled to at most this side per patch, which bounds the memory
# of a large test split; the pixel AUROC of a smooth map barely changes (docs/evaluation.md).
PIXEL_METRIC_SIDE = 64

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
    top_k = config.eval.get("score_top_k", 1)
    errors.require(config_rules.integer("config.eval.score_top_k", top_k, 1))
    return int(top_k)


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
    # Silent for seconds to minutes otherwise: the first pass of a run compiles the maps.
    with logs.timed(log, f"scoring the {split} split ({total} tiles)", f"scored the {split} split"):
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
                kept = best_of_each_class([kept, candidates] if kept else [candidates], keep_gallery)
            done += len(batch_scores)
            report(done)
    if not columns["label"]:
        raise errors.ConfigError(f"the {split!r} split has no tiles; check config.data (split fractions, patch size)")
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
        gallery_rows(kept, keep_gallery) if kept else {},
    )


def best_of_each_class(parts: list[dict[str, np.ndarray]], rows: int) -> dict[str, np.ndarray]:
    """The `rows` highest-scored anomalous and `rows` highest-scored other tiles of `parts`."""
    arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.argsort(-arrays["score"], kind="stable")
    anomalous = order[arrays["label"][order] == 1][:rows]
    other = order[arrays["label"][order] != 1][:rows]
    chosen = np.concatenate([anomalous, other])
    return {k: v[chosen] for k, v in arrays.items()}


def gallery_rows(candidates: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    """Half the rows for the best-scored anomalous tiles, the rest for the best normal ones."""
    is_anomalous = candidates["label"] == 1
    anomalous = np.flatnonzero(is_anomalous)[: (rows + 1) // 2]
    other = np.flatnonzero(~is_anomalous)[: rows - len(anomalous)]
    chosen = np.concatenate([anomalous, other])
    return {k: v[chosen] for k, v in candidates.items()}


def normalization_is_fitted(detector: detectors.Detector, config: ml_collections.ConfigDict) -> bool:
    """Whether config.eval.normalization asks for a fitted normalisation (else the identity)."""
    mode = config.eval.normalization
    errors.require(config_rules.one_of("config.eval.normalization", mode, evaluation_config.NORMALIZATIONS))
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


def image_level(splits: Any, split: str, scores: SplitScores) -> tuple[np.ndarray, np.ndarray] | None:
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
    images = image_level(splits, split, scores)
    labels, values = images if images is not None else known(scores)
    return metrics.roc_auc(labels, values) if labels.size else math.nan


def threshold_source(result: dict, unit: str = "tiles") -> str:
    """How `metrics.evaluate_scores` chose `result["threshold"]`, in words, from its
    `threshold_rule`: on the validation split, or one of its fallbacks (docs/evaluation.md,
    Thresholds), which must not read as a validated choice."""
    rule = result.get("threshold_rule")
    n_val = result.get("n_val")
    over = f" over its {n_val} labelled {unit}" if n_val is not None else ""
    if rule is None:
        return "as metrics.json gives it (it does not record how it was chosen)"
    if rule.startswith("argmax_"):
        return f"chosen on the validation split (argmax {rule[len('argmax_') :]}{over})"
    if rule == "no_anomalies":
        return (
            f"just above the highest validation score: the validation split had no labelled anomalous {unit} "
            "(rule no_anomalies)"
        )
    if rule == "no_normals":
        return (
            f"the lowest validation score: the validation split had no labelled normal {unit}, every one of its "
            f"{unit} counts as anomalous (rule no_normals)"
        )
    if rule == "fixed_no_validation":
        return (
            f"config.eval.fixed_threshold {result.get('threshold')}: the validation split had no labelled {unit} "
            "(rule fixed_no_validation)"
        )
    return f"rule {rule}"


def region_threshold(configured: float, workdir: str) -> tuple[float, str]:
    """(threshold, where it came from) of the regions predict and export cut: the configured value,
    or the evaluation's in <workdir>/metrics.json (chosen on the validation split, or its fallback
    when that split lacked a class: the source says which), else 0.5."""
    if configured > 0:
        return float(configured), "config.eval.predict.region_threshold"
    path = os.path.join(workdir, "metrics.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            test = json.load(f).get("test", {})
        if test.get("threshold") is not None:
            return float(test["threshold"]), f"{threshold_source(test)}, from {path}"
    return 0.5, "default 0.5 (no metrics.json in the workdir)"
