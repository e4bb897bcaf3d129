"""Whole-painting inference: scans of any size in, anomaly maps and reports out.

For every scan: overlapping tiles are read band by band, scored in fixed-size batches by
the jitted model, and blended back with a smooth window (report.stitch). The map is written
straight into a memory-mapped file, so memory stays bounded by a band of tiles however
large the scan; the map's disk space is reserved before (a full disk is an error up front,
never a SIGBUS), and a NaN/Inf tile map stops the scan with an error naming the scan and the
checkpoint. Per scan, in <output_dir>/<scan name>/, each file complete or absent (written in
a staging folder, moved in when all are done):

    anomaly_map.tif | .npy   float32 normalised map (0.5 = the fixed cut), full resolution
    overlay.png              heatmap over the X-ray at a viewable size, with a colour bar
    regions.json, .csv       regions above the threshold inside the painting, highest score first
    report.html              self-contained report: overlay with opacity slider, region table
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import time

import jax
import ml_collections
import numpy as np

from xray_flax import checkpoint, errors, evaluation_config, files, parallel, progress, provenance
from xray_flax.data import layouts, readers
from xray_flax.inference import Inferencer
from xray_flax.report import html, overlay, regions, stitch
from xray_flax.scoring import region_threshold, restore_inferencer

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = readers.IMAGE_SUFFIXES  # and DICOM files by their preamble (layouts.is_scan_file)


def expand_inputs(inputs: list[str], mask_suffix: str = "_mask") -> list[str]:
    """Scan paths from files, folders (searched recursively, sorted; hidden files and folders
    skipped) and glob patterns, as the scans layout finds them (`layouts.scan_files`); masks
    (<name>_mask.*) are skipped."""
    paths: list[str] = []
    for item in inputs:
        if os.path.isdir(item):
            found = layouts.scan_files(item)
        elif any(ch in item for ch in "*?["):
            found = sorted(p for p in glob.glob(item) if os.path.isfile(p) and layouts.is_scan_file(p))
        elif os.path.exists(item):
            found = [item] if layouts.is_scan_file(item) else []
        else:
            raise FileNotFoundError(f"--inputs: {item} does not exist")
        scans = [p for p in found if not os.path.splitext(os.path.basename(p))[0].endswith(mask_suffix)]
        if not scans:
            raise FileNotFoundError(f"--inputs: no scans (PNG, TIFF, DICOM, JPEG, BMP) in {item} or below it")
        paths.extend(scans)
    return list(dict.fromkeys(paths))


MAP_FORMATS = {"tiff": "anomaly_map.tif", "npy": "anomaly_map.npy"}
# Where the outputs of one scan are written before they are moved into its folder (same
# file system, so the moves are renames). `<pid>` tells a killed run's leftovers apart.
_STAGING_PREFIX = ".partial."


def _map_name(fmt: str) -> str:
    if fmt not in MAP_FORMATS:
        raise errors.ConfigError(f"config.eval.predict.map_format={fmt!r}; expected 'tiff' or 'npy'")
    return MAP_FORMATS[fmt]


def _zlib_tiff_bound(shape: tuple[int, int]) -> int:
    """Bytes a zlib-compressed, 256-tiled float32 TIFF of `shape` can take at most: the
    padded tiles stored (zlib's worst case adds 0.03 % + a few bytes a tile) plus headers."""
    tiles = -(-shape[0] // 256) * -(-shape[1] // 256)
    return tiles * (256 * 256 * 4 * 1001 // 1000 + 64) + (1 << 16)


def _scratch_map(path: str, shape: tuple[int, int], npy: bool) -> np.memmap:
    """A float32 [H, W] memmap at `path` (raw, or a .npy file) whose blocks are allocated
    before anything is written to it: writing a memory-mapped page on a full disk is a SIGBUS
    that kills the process and leaves a map of zeros, so a full disk must fail here."""
    nbytes = int(np.prod(shape)) * 4
    if npy:
        scratch = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
        nbytes = scratch.offset + nbytes  # the header before the data
    else:
        with open(path, "wb"):
            pass
    with open(path, "r+b") as f:
        files.reserve(f.fileno(), nbytes, path, "the anomaly map")
    if npy:
        return scratch
    return np.memmap(path, dtype=np.float32, mode="r+", shape=shape)


def _remove_stale_staging(out_dir: str) -> None:
    """Removes staging folders of runs killed before they finished (their process is gone)."""
    for entry in os.listdir(out_dir):
        if not entry.startswith(_STAGING_PREFIX):
            continue
        try:
            pid = int(entry[len(_STAGING_PREFIX) :])
        except ValueError:
            continue
        if pid != os.getpid() and not _process_alive(pid):
            shutil.rmtree(os.path.join(out_dir, entry), ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _map_range(anomaly_map: np.ndarray, rows: int = 1024) -> tuple[float, float]:
    """(min, max) of a map, band by band (a memmap is never read whole into RAM)."""
    lo, hi = np.inf, -np.inf
    for y in range(0, anomaly_map.shape[0], rows):
        band = anomaly_map[y : y + rows]
        lo, hi = min(lo, float(band.min())), max(hi, float(band.max()))
    return lo, hi


def _tile_progress(name: str):
    """stitch's progress(done, total) callback as a clu-timed progress line every 10 s."""
    reports: list[progress.ReportProgress] = []

    def update(done: int, total: int) -> None:
        if not reports:
            reports.append(progress.ReportProgress(name, total, unit="tiles", every_secs=10.0))
            reports[0](0)
        reports[0](done)

    return update


def predict_scan(
    infer: Inferencer,
    path: str,
    out_dir: str,
    config: ml_collections.ConfigDict,
    threshold: float,
    metadata: dict,
    normal_level: tuple[float, str] | None = None,
) -> dict:
    """Anomaly map and reports of one scan; returns a summary of what was written.

    All files are written into a staging folder inside `out_dir` and moved into `out_dir`
    only once every one of them is complete, so an error (a full disk, a non-finite map, a
    kill) leaves the folder as it was: earlier results intact, nothing partial. Space for
    the map is reserved before stitching starts, so a full disk fails in seconds with a
    DiskSpaceError rather than hours later (or as a SIGBUS).
    """
    opts = config.eval.predict
    patch = config.data.patch_size
    stride = evaluation_config.resolve_stride(opts.stride, opts.overlap, patch)
    map_name = _map_name(opts.map_format)
    reader = readers.open_scan(path, config.data.channels, config.data.normalization)
    os.makedirs(out_dir, exist_ok=True)
    _remove_stale_staging(out_dir)
    staging = os.path.join(out_dir, f"{_STAGING_PREFIX}{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    name = os.path.basename(path)
    checkpoint_path = metadata.get("checkpoint", "?")
    start = time.perf_counter()
    shape = (reader.height, reader.width)
    anomaly_map = None
    try:
        npy = opts.map_format == "npy"
        if not npy:
            # The compressed TIFF is written from the scratch map at the end, while the scratch
            # still exists: check now that both fit, not after the stitching.
            files.require_free_space(
                out_dir, int(np.prod(shape)) * 4 + _zlib_tiff_bound(shape), f"the anomaly map of {path}"
            )
        scratch_path = os.path.join(staging, map_name if npy else "anomaly_map.scratch.f32")
        anomaly_map = _scratch_map(scratch_path, shape, npy)
        try:
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
        except stitch.NonFiniteMapError as error:
            if not error.input_finite:
                raise readers.DataError(
                    path,
                    f"NaN or infinite pixels in the tile at y={error.y}, x={error.x}; "
                    "replace them (e.g. with 0) and rerun",
                ) from None
            raise checkpoint.CheckpointError(
                f"checkpoint {checkpoint_path} gives a NaN/Inf anomaly map on scan {path} (tile at y={error.y}, "
                f"x={error.x}): its weights are corrupt or diverged; predict with another checkpoint "
                "(--config.eval.checkpoint=<workdir>/checkpoints/<step>) or retrain"
            ) from None
        anomaly_map.flush()
        lo, hi = _map_range(anomaly_map)
        warnings = []
        if lo == hi:
            # Legit for a blank input, but also what weights that no longer respond give: the
            # map would read like a clean painting, so say so loudly (log, summary, report).
            warnings.append(
                f"the anomaly map is constant ({hi:g} everywhere): a blank scan, or a checkpoint whose "
                f"weights do not respond (corrupt?): {checkpoint_path}"
            )
            log.warning("%s: %s", path, warnings[-1])
        # The heatmap is fully opaque where the map reaches the region threshold (positive, so
        # a threshold at or below 0 - everything flagged - still draws a ramp).
        opacity_full_at = max(threshold, 1e-3)
        # Transparent below what normal paint reaches (saved by evaluate; else the threshold) and
        # outside the painting (the tiling's background rule), so clean paint shows untinted.
        level, level_source = normal_level or (opacity_full_at, "no saved normal level: the region threshold")
        background = config.data.background.to_dict()
        # One thumbnail (and mask of the painting) for the regions, the overlay and the report.
        thumbnail = overlay.scan_thumbnail(reader, opts.overlay_max_side, background, patch)
        hidden = {"normal_level": level, "background": background, "tile": patch, "thumbnail": thumbnail}
        # Regions only inside the painting (and off its rim): the film margin, which the model
        # never trained on and scores high, would otherwise be one region framing the scan and
        # swallow every defect that touches the painting's edge.
        inside = regions.inside_painting(thumbnail.foreground, thumbnail.factor, patch)
        found = regions.find_regions(
            anomaly_map, threshold, opts.min_region_area, foreground=inside, factor=thumbnail.factor
        )
        if not npy:
            overlay.write_anomaly_map(os.path.join(staging, map_name), anomaly_map)
        regions.write_regions_json(os.path.join(staging, "regions.json"), found, {"scan": path, "threshold": threshold})
        regions.write_regions_csv(os.path.join(staging, "regions.csv"), found)
        overlay.write_overlay_png(
            os.path.join(staging, "overlay.png"),
            reader,
            anomaly_map,
            opts.overlay_max_side,
            opts.overlay_alpha,
            opts.colormap,
            found,
            full_at=opacity_full_at,
            **hidden,
        )
        html.write_scan_report(
            os.path.join(staging, "report.html"),
            reader,
            anomaly_map,
            found,
            title=name,
            metadata={"scan": path, **metadata, **({"warning": "; ".join(warnings)} if warnings else {})},
            max_side=opts.overlay_max_side,
            colormap=opts.colormap,
            alpha=opts.overlay_alpha,
            max_regions=opts.report_max_regions,
            crop_margin=opts.crop_margin,
            full_at=opacity_full_at,
            normal_source=level_source,
            **hidden,
        )
        anomaly_map = None
        if not npy:
            os.remove(scratch_path)
        # Every file is complete: move them in (renames on one file system, nothing to fail
        # for lack of space), the report last so it never points at a map still to come.
        for output in (map_name, "regions.json", "regions.csv", "overlay.png", "report.html"):
            os.replace(os.path.join(staging, output), os.path.join(out_dir, output))
    except files.DiskSpaceError as error:
        # Name the file the user asked for, not its staging copy.
        raise files.DiskSpaceError(error.errno, str(error).replace(staging + os.sep, out_dir + os.sep)) from None
    finally:
        # Unmap before removing, or a failed scan's scratch would hold its disk space for as
        # long as the traceback (which references this frame) lives.
        anomaly_map = None
        shutil.rmtree(staging, ignore_errors=True)
    seconds = time.perf_counter() - start
    summary = {
        "scan": path,
        "height": reader.height,
        "width": reader.width,
        "anomaly_map": os.path.join(out_dir, map_name),
        "max_score": hi,
        "regions": len(found),
        "seconds": round(seconds, 2),
        "report": os.path.join(out_dir, "report.html"),
    }
    if warnings:
        summary["warnings"] = warnings
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
        raise errors.UsageError(
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
        **provenance.rows(provenance.collect(config)),
    }
    normal_level = overlay.saved_normal_level(workdir)
    summaries = [
        predict_scan(infer, path, os.path.join(output_dir, name), config, threshold, metadata, normal_level)
        for path, name in zip(paths, _scan_dir_names(paths))
    ]
    files.write_text_atomic(os.path.join(output_dir, "predictions.json"), json.dumps(summaries, indent=2))
    return summaries
