"""The export command: a workdir's checkpoint as a self-contained `jax.export` artefact.

    python -m xray_flax.main --mode export --workdir DIR [--output_dir OUT] [--export_platforms cuda,tpu]

A sibling of train, evaluate and predict (it imports none of them): restores the checkpoint
predict would use (scoring.restore_inferencer: its variables and score normalisation), and
lowers the function every consumer of maps runs (inference.normalised_outputs) with the
variables and the normalisation baked in as constants, for a symbolic batch size:

    float32 tiles [batch, P, P, C] in [0, 1]  ->  {'map': float32 [batch, P, P], 'score': float32 [batch]}

Written to OUT (default <workdir>/export), each file complete or absent:

    model.cpu.jax_export           serialized StableHLO (jax.export) lowered for CPU
    model.<p1>-<p2>.jax_export     one artefact lowered for the other platforms asked for
                                   (default cuda and tpu: jax.export lowers for them on any machine)
    manifest.json                  detector, patch size, channels, input scaling, normalisation,
                                   threshold, stitching, input/output specs, artefacts with their
                                   sha256, versions and provenance

xray_flax/exported.py loads it with jax and numpy alone; `xray_flax.load(OUT)` wraps it with
the API (docs/api.md). Not exported: the detector's extra outputs (DRAEM's reconstruction).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from xray_flax import errors, evaluation_config, exported, files, inference, parallel, provenance, scoring

log = logging.getLogger(__name__)

DEFAULT_PLATFORMS = ("cuda", "tpu")
KNOWN_PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


def resolve_platforms(platforms: Sequence[str] | None) -> list[list[str]]:
    """The artefacts to write, each a list of platforms: CPU alone first, then the others named."""
    others = list(DEFAULT_PLATFORMS if platforms is None else platforms)
    others = [p.strip().lower() for p in others if p.strip()]
    unknown = [p for p in others if p not in KNOWN_PLATFORMS]
    if unknown:
        raise errors.UsageError(
            f"--export_platforms: unknown platform(s) {', '.join(unknown)}; "
            f"expected some of {', '.join(KNOWN_PLATFORMS)}"
        )
    others = [p for p in dict.fromkeys(others) if p != "cpu"]
    return [["cpu"]] + ([others] if others else [])


def export(
    config: ml_collections.ConfigDict,
    workdir: str,
    output_dir: str | None = None,
    platforms: Sequence[str] | None = None,
) -> dict:
    """Writes the artefacts and manifest of the module docstring; returns the manifest."""
    started = provenance.utc_now()
    if config.get("family") == "hidden_art":
        raise errors.UsageError("--mode export covers the X-ray detectors; hidden-art methods are not exported")
    if jax.process_count() > 1:
        raise errors.UsageError("--mode export runs as a single process; start it without --num_processes")
    groups = resolve_platforms(platforms)
    output_dir = output_dir or os.path.join(workdir, "export")
    mesh = parallel.make_mesh(config.mesh)
    detector, infer, meta, checkpoint_path = scoring.restore_inferencer(config, workdir, mesh, config.eval.batch_size)
    variables = jax.tree.map(np.asarray, infer.variables)  # host copies: constants of the lowered module
    norm = infer.normalization
    shift_scale = np.asarray([norm.shift, norm.scale], np.float32)
    outputs = inference.normalised_outputs(detector, scoring.score_filter_size(config), scoring.score_top_k(config))

    def serve(images):
        out = outputs(variables, shift_scale, images)
        return {"map": out["map"], "score": out["score"]}

    patch, channels = int(config.data.patch_size), int(config.data.channels)
    (batch,) = jax.export.symbolic_shape("batch")
    spec = jax.ShapeDtypeStruct((batch, patch, patch, channels), jnp.float32)
    os.makedirs(output_dir, exist_ok=True)
    artefacts = []
    for group in groups:
        start = time.perf_counter()
        log.info("exporting %s for %s ...", detector.name, ", ".join(group))
        blob = bytes(jax.export.export(jax.jit(serve), platforms=group)(spec).serialize())
        name = f"model.{'-'.join(group)}{exported.SUFFIX}"
        _write_bytes_atomic(os.path.join(output_dir, name), blob)
        artefacts.append(
            {"file": name, "platforms": group, "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
        )
        log.info("wrote %s (%.1f MB, %.1f s)", name, len(blob) / 1e6, time.perf_counter() - start)
    threshold, source = scoring.region_threshold(config.eval.predict.region_threshold, workdir)
    opts = config.eval.predict
    record = provenance.collect(config, started)
    manifest = {
        "format": exported.FORMAT,
        "detector": detector.name,
        "method": config.method,
        "checkpoint": checkpoint_path,
        "step": meta.get("step"),
        "patch_size": patch,
        "channels": channels,
        "input": {
            "name": "images",
            "dtype": "float32",
            "shape": ["batch", patch, patch, channels],
            "range": [0.0, 1.0],
            "normalization": config.data.normalization,
            "rgb_to_gray": "luminance",
            "how": "scan samples divided by 2**bits - 1 ('bit_depth') or stretched between per-scan "
            "percentiles ('percentile'), as xray_flax/data/readers.py reads scans",
        },
        "outputs": {
            "map": {"dtype": "float32", "shape": ["batch", patch, patch], "meaning": "normalised anomaly map"},
            "score": {"dtype": "float32", "shape": ["batch"], "meaning": "image score of each tile"},
        },
        "normalization": {
            **norm.to_json(),
            "applied": "inside the exported function (normalised = (raw - shift) * scale)",
        },
        "score": {"filter_size": scoring.score_filter_size(config), "top_k": scoring.score_top_k(config)},
        "threshold": {"value": threshold, "source": source, "applied": "not inside: regions are cut by the caller"},
        "min_region_area": int(opts.min_region_area),
        # Regions are cut inside the painting only, as predict cuts them: the tiling's rule for
        # what is outside it (the film margin), and the thumbnail size the mask is made at.
        "background": config.data.background.to_dict(),
        "overlay_max_side": int(opts.overlay_max_side),
        "stitch": {
            "stride": evaluation_config.resolve_stride(opts.stride, opts.overlap, patch),
            "window": opts.window,
        },
        "batch_size": int(opts.batch_size),
        "platforms": sorted({p for a in artefacts for p in a["platforms"]}),
        "artefacts": artefacts,
        "versions": record["versions"],
        "provenance": record,
    }
    files.write_text_atomic(os.path.join(output_dir, exported.MANIFEST), json.dumps(manifest, indent=2) + "\n")
    log.info("exported %s to %s (%s)", checkpoint_path, output_dir, ", ".join(a["file"] for a in artefacts))
    return manifest


def _write_bytes_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
