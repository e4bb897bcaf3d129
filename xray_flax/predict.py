"""Whole-painting inference: scans of any size in, anomaly maps and reports out.

For every scan: overlapping tiles are read band by band, scored in fixed-size batches by
the jitted model, and blended back with a smooth window (report.stitch). The map is written
straight into a memory-mapped file, so memory stays bounded by a band of tiles however
large the scan. Per scan, in <output_dir>/<scan name>/:

    anomaly_map.tif | .npy   float32 normalised map (0.5 = the fixed cut), full resolution
    overlay.png              heatmap over the X-ray at a viewable size, with a colour bar
    regions.json, .csv       connected regions above the threshold, highest score first
    report.html              self-contained report: overlay with opacity slider, region table
"""

from __future__ import annotations

import glob
import json
import logging
import os
import time

import jax
import ml_collections
import numpy as np
import tifffile

from xray_flax import evaluation_config, files, parallel, progress
from xray_flax.data import readers
from xray_flax.evaluate import restore_inferencer
from xray_flax.inference import Inferencer
from xray_flax.report import html, overlay, regions, stitch

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".tif", ".tiff")


def expand_inputs(inputs: list[str], mask_suffix: str = "_mask") -> list[str]:
    """Scan paths from files, folders and glob patterns; masks (<name>_mask.*) are skipped."""
    paths: list[str] = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(os.path.join(item, f) for f in os.listdir(item))
        elif any(ch in item for ch in "*?["):
            found = sorted(glob.glob(item))
        elif os.path.exists(item):
            found = [item]
        else:
            raise FileNotFoundError(f"--inputs: {item} does not exist")
        scans = [
            p
            for p in found
            if p.lower().endswith(IMAGE_SUFFIXES) and not os.path.splitext(os.path.basename(p))[0].endswith(mask_suffix)
        ]
        if not scans:
            raise FileNotFoundError(f"--inputs: no PNG or TIFF scans in {item}")
        paths.extend(scans)
    return list(dict.fromkeys(paths))


def _map_file(path_stem: str, shape: tuple[int, int], fmt: str) -> tuple[np.ndarray, str]:
    """A memory-mapped float32 output map (TIFF or .npy), so the map never needs RAM."""
    if fmt == "tiff":
        path = path_stem + ".tif"
        return tifffile.memmap(path, shape=shape, dtype=np.float32, photometric="minisblack"), path
    if fmt == "npy":
        path = path_stem + ".npy"
        return np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape), path
    raise ValueError(f"config.eval.predict.map_format={fmt!r}; expected 'tiff' or 'npy'")


def _tile_progress(name: str):
    """stitch's progress(done, total) callback as a clu-timed progress line every 10 s."""
    reports: list[progress.ReportProgress] = []

    def update(done: int, total: int) -> None:
        if not reports:
            reports.append(progress.ReportProgress(name, total, unit="tiles", every_secs=10.0))
            reports[0](0)
        reports[0](done)

    return update


def region_threshold(configured: float, workdir: str) -> tuple[float, str]:
    """(threshold, where it came from): the configured value, or the validation-chosen one."""
    if configured > 0:
        return float(configured), "config.eval.predict.region_threshold"
    path = os.path.join(workdir, "metrics.json")
    if os.path.exists(path):
        with open(path) as f:
            chosen = json.load(f).get("test", {}).get("threshold")
        if chosen is not None:
            return float(chosen), f"chosen on the validation split ({path})"
    return 0.5, "default 0.5 (no metrics.json in the workdir)"


def predict_scan(
    infer: Inferencer, path: str, out_dir: str, config: ml_collections.ConfigDict, threshold: float, metadata: dict
) -> dict:
    """Anomaly map and reports of one scan; returns a summary of what was written."""
    opts = config.eval.predict
    patch = config.data.patch_size
    stride = evaluation_config.resolve_stride(opts.stride, opts.overlap, patch)
    reader = readers.open_scan(path, config.data.channels, config.data.normalization)
    os.makedirs(out_dir, exist_ok=True)
    name = os.path.basename(path)
    start = time.perf_counter()
    anomaly_map, map_path = _map_file(
        os.path.join(out_dir, "anomaly_map"), (reader.height, reader.width), opts.map_format
    )
    stitch.stitch_anomaly_map(
        reader,
        infer.anomaly_maps,
        patch,
        stride,
        infer.batch_size,
        window=opts.window,
        progress=_tile_progress(name),
        out=anomaly_map,
    )
    anomaly_map.flush()
    # The heatmap is fully opaque where the map reaches the region threshold (positive, so a
    # threshold at or below 0 - everything flagged - still draws a ramp).
    opacity_full_at = max(threshold, 1e-3)
    found = regions.find_regions(anomaly_map, threshold, opts.min_region_area)
    regions.write_regions_json(os.path.join(out_dir, "regions.json"), found, {"scan": path, "threshold": threshold})
    regions.write_regions_csv(os.path.join(out_dir, "regions.csv"), found)
    overlay.write_overlay_png(
        os.path.join(out_dir, "overlay.png"),
        reader,
        anomaly_map,
        opts.overlay_max_side,
        opts.overlay_alpha,
        opts.colormap,
        found,
        full_at=opacity_full_at,
    )
    html.write_scan_report(
        os.path.join(out_dir, "report.html"),
        reader,
        anomaly_map,
        found,
        title=name,
        metadata={"scan": path, **metadata},
        max_side=opts.overlay_max_side,
        colormap=opts.colormap,
        alpha=opts.overlay_alpha,
        max_regions=opts.report_max_regions,
        crop_margin=opts.crop_margin,
        full_at=opacity_full_at,
    )
    seconds = time.perf_counter() - start
    summary = {
        "scan": path,
        "height": reader.height,
        "width": reader.width,
        "anomaly_map": map_path,
        "max_score": float(np.max(anomaly_map)),
        "regions": len(found),
        "seconds": round(seconds, 2),
        "report": os.path.join(out_dir, "report.html"),
    }
    del anomaly_map
    log.info("%s: %d regions, max score %.3f, %.1fs -> %s", name, len(found), summary["max_score"], seconds, out_dir)
    return summary


def _scan_dir_names(paths: list[str]) -> list[str]:
    """One output folder per scan, named after it; disambiguated when two scans share a name."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    return [s if stems.count(s) == 1 else f"{s}_{i}" for i, s in enumerate(stems)]


def predict(
    config: ml_collections.ConfigDict, workdir: str, inputs: list[str], output_dir: str | None = None
) -> list[dict]:
    """Predict every scan in `inputs` with the best checkpoint of `workdir`."""
    if jax.process_count() > 1:
        raise RuntimeError(
            "--mode predict runs as a single process (it writes files); start it without --num_processes / outside srun"
        )
    paths = expand_inputs(inputs, config.data.mask_suffix)
    output_dir = output_dir or os.path.join(workdir, "predictions")
    mesh = parallel.make_mesh(config.mesh)
    detector, infer, meta, checkpoint_path = restore_inferencer(config, workdir, mesh, config.eval.predict.batch_size)
    threshold, source = region_threshold(config.eval.predict.region_threshold, workdir)
    log.info("predicting %d scan(s) with %s; region threshold %.4f, %s", len(paths), checkpoint_path, threshold, source)
    metadata = {
        "checkpoint": checkpoint_path,
        "method": f"{config.method} ({detector.name})",
        "region threshold": f"{threshold:.4f} ({source})",
    }
    summaries = [
        predict_scan(infer, path, os.path.join(output_dir, name), config, threshold, metadata)
        for path, name in zip(paths, _scan_dir_names(paths))
    ]
    files.write_text_atomic(os.path.join(output_dir, "predictions.json"), json.dumps(summaries, indent=2))
    return summaries
