"""Evaluation from a checkpoint: anomaly maps on a split -> metrics.json, tables, galleries.

Runs without any training code: it needs a config (the one saved in the workdir by
default), the checkpoint, and the data. Thresholds are chosen on the validation split and
applied to the test split, as the paper reports its accuracy, precision, recall and F1.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from xray_flax import checkpoint, evaluation_config, metrics, parallel, steps
from xray_flax.data import pipeline
from xray_flax.inference import Inferencer, state_variables
from xray_flax.models import registry
from xray_flax.report import gallery, tables

# Pixel metrics use maps subsampled to at most this side per patch, which bounds the memory
# of a large test split; the pixel AUROC of a smooth map barely changes (docs/evaluation.md).
PIXEL_METRIC_SIDE = 64

log = logging.getLogger(__name__)


@dataclasses.dataclass
class SplitScores:
    labels: np.ndarray  # [n] int, 1 = anomalous
    scores: np.ndarray  # [n] image scores
    maps: list[np.ndarray]  # subsampled anomaly maps of patches with known masks
    masks: list[np.ndarray]  # matching subsampled ground-truth masks
    gallery: dict[str, np.ndarray]  # a few patches for the figure


def score_split(
    infer: Inferencer, splits: Any, split: str, config: ml_collections.ConfigDict, keep_gallery: int = 0
) -> SplitScores:
    """Anomaly maps and image scores of every tile of a split, in a deterministic order.

    Memory stays bounded on large splits: pixel maps are subsampled, and only the
    candidates of the gallery (the best-scored anomalous and normal tiles) are kept.
    """
    total = pipeline.count_tiles(splits, split, config.data)
    labels, scores, maps, masks = [], [], [], []
    kept: dict[str, np.ndarray] = {}
    done, next_report, start = 0, 0.25, time.perf_counter()
    for batch in pipeline.iterate_eval_batches(splits, split, config.data, batch_size=infer.batch_size):
        batch_maps, batch_scores, recon = infer(batch["image"])
        labels.append(batch["label"])
        scores.append(batch_scores)
        step = max(1, batch_maps.shape[1] // PIXEL_METRIC_SIDE)
        for i in range(len(batch_scores)):
            if batch["label"][i] >= 0 and (batch["mask"][i].any() or batch["label"][i] == 0):
                maps.append(batch_maps[i, ::step, ::step])
                masks.append(batch["mask"][i, ::step, ::step, 0] > 0.5)
        if keep_gallery:
            candidates = {
                "image": batch["image"],
                "reconstruction": recon,
                "map": batch_maps,
                "mask": batch["mask"][..., 0],
                "label": batch["label"],
                "score": batch_scores,
            }
            kept = _best_of_each_class([kept, candidates] if kept else [candidates], keep_gallery)
        done += len(batch_scores)
        if total and done / total >= next_report and done < total:
            next_report += 0.25
            log.info(
                "%s split: %d/%d tiles scored (%.0f tiles/s)", split, done, total, done / (time.perf_counter() - start)
            )
    if not labels:
        raise ValueError(f"the {split!r} split has no tiles; check config.data (split fractions, patch size)")
    return SplitScores(
        np.concatenate(labels), np.concatenate(scores), maps, masks, _gallery_rows(kept, keep_gallery) if kept else {}
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


def restore_model(config: ml_collections.ConfigDict, workdir: str, mesh) -> tuple[Any, dict, dict, str]:
    """(model, variables, checkpoint meta, checkpoint path) of the best checkpoint in workdir."""
    model = registry.build_model(config.model, config.data.channels)
    tx = steps.make_optimizer(config.optim, config.train.num_steps)
    abstract = steps.abstract_state(model, tx, config.data.patch_size, config.data.channels, parallel.replicated(mesh))
    state, meta, path = checkpoint.restore_for_inference(workdir, abstract, config.eval.get("checkpoint", ""))
    return model, state_variables(state), meta, path


def evaluate(config: ml_collections.ConfigDict, workdir: str, output_dir: str | None = None) -> dict:
    """Evaluate the best checkpoint of `workdir` on the test split; writes metrics.json and reports."""
    output_dir = output_dir or workdir
    mesh = parallel.make_mesh(config.mesh)
    model, variables, meta, path = restore_model(config, workdir, mesh)
    log.info("evaluating %s (step %s)", path, meta.get("step"))
    splits = pipeline.prepare_splits(config.data, None)
    filter_size = evaluation_config.resolve_score_filter_size(config.eval.score_filter_size, config.data.patch_size)
    infer = Inferencer(model, variables, mesh, config.eval.batch_size, filter_size)

    val = score_split(infer, splits, "val", config)
    test = score_split(infer, splits, "test", config, keep_gallery=8)
    result = metrics.evaluate_scores(
        test.labels,
        test.scores,
        val.labels,
        val.scores,
        masks=test.masks or None,
        maps=test.maps or None,
        fixed_threshold=config.eval.fixed_threshold,
        threshold_metric=config.eval.threshold_metric,
        fpr_limit=config.eval.aupro_fpr_limit,
        exact_max_pixels=config.eval.pixel_exact_max_pixels,
        n_bins=config.eval.pixel_histogram_bins,
    )
    timing = infer.seconds_per_patch(
        test.gallery["image"], config.eval.timing_batches, config.eval.timing_warmup_batches
    )
    result["seconds_per_patch"] = timing.pop("seconds_per_patch")
    report = {
        "method": config.method,
        "checkpoint": path,
        "step": meta.get("step"),
        "score_filter_size": filter_size,
        "patch_size": config.data.patch_size,
        "test": result,
        "val": {"roc_auc": metrics.roc_auc(val.labels, val.scores), "n": int(val.labels.size)},
        "timing": timing,
    }
    if jax.process_index() == 0:
        write_reports(report, test, output_dir)
    return report


def write_reports(report: dict, test: SplitScores, output_dir: str) -> None:
    os.makedirs(output_dir, exist_ok=True)
    _write_atomic(os.path.join(output_dir, "metrics.json"), json.dumps(report, indent=2, allow_nan=False))
    _write_atomic(os.path.join(output_dir, "metrics.md"), tables.metrics_markdown(report))
    g = test.gallery
    gallery.write_patch_gallery(
        os.path.join(output_dir, "heatmaps_test_patches.png"),
        g["image"],
        g["reconstruction"],
        g["map"],
        g["mask"],
        max_rows=len(g["image"]),
    )
    log.info("wrote metrics.json, metrics.md and heatmaps_test_patches.png to %s", output_dir)


def _write_atomic(path: str, text: str) -> None:
    """Write-then-rename, so a crash or a full disk never leaves a truncated result file."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
