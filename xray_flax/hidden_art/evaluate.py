"""Evaluation of a hidden-art method on the validation paintings: maps, metrics, PNGs and a gallery.

Per validation painting: the dissimilarity map and per-band maps, the collage of the bands,
the recovery metrics against the true hidden layer when the data have one (correlation, SSIM,
AUROC of the hidden mask: `xray_flax.hidden_art.metrics`), written to
`<output>/hidden_art/results.json`; per painting a 16-bit map PNG, the overlay of the map on the
grey RGB, the band collage (the 1-based band that differs most, 0 below the threshold) and every
output array (`<painting>_<method>_outputs.npz`); and the self-contained `gallery.html` (further
per-band maps of a method, e.g. GAT's attention, as their own columns). Nothing here depends on
which method runs (`xray_flax.hidden_art.methods`).

False-positive control: with the truth, every painting's row gets "fp_threshold", the
map value exceeded by `config.eval.false_positive_rate` (5 %) of its pixels outside the hidden
mask, and the mean row their median; with `config.eval.flag`, every row gets
"flagged_fraction", the share of the painting's pixels whose map exceeds
`config.eval.flag_threshold`. Set that to a simulated run's fp_threshold (the same method and
map form: the shipped forms are noise-scaled, so one threshold means the same on every
painting) and evaluate scenes that hide nothing, e.g. visible-only real stacks: a method that
flags much more than the 5 % there flags the scene, not a hidden layer.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from xray_flax import errors, files, provenance
from xray_flax.hidden_art import dissimilarity as dis
from xray_flax.hidden_art import gallery, methods, paintings
from xray_flax.hidden_art import metrics as recovery
from xray_flax.hidden_art.train import trained_variables

OUTPUT_DIR = "hidden_art"


def _png16(path: str, values: np.ndarray) -> None:
    """A map scaled min-max to 16 bits (the PNG says where it is high, not its scale)."""
    v = np.asarray(values, np.float64)
    low, high = float(v.min()), float(v.max())
    scaled = np.zeros_like(v) if high <= low else (v - low) / (high - low)
    with files.atomic_output(path) as tmp:
        Image.fromarray(np.round(scaled * 65535).astype(np.uint16)).save(tmp, format="PNG")


def _png8(path: str, values: np.ndarray) -> None:
    with files.atomic_output(path) as tmp:
        Image.fromarray(np.asarray(values, np.uint8)).save(tmp, format="PNG")


def _extra_maps(name: str, outputs: dict) -> dict:
    """Further per-band maps a method returns besides its dissimilarity (e.g. the attention each
    superpixel receives, GAT), as their own gallery columns: per band and their mean over bands."""
    per_band = outputs["per_band"]
    extra = {}
    for key, value in outputs.items():
        # "signed" is the residual before the map form: per_band shows it already (as |.| or scaled);
        # a method's predictions of the bands are no hidden-content maps (they stay in outputs.npz).
        if (
            key not in ("per_band", "signed")
            and not key.startswith("prediction")
            and np.ndim(value) == 3
            and np.shape(value) == np.shape(per_band)
        ):
            extra[f"{name}: {key}"] = {"map": np.mean(value, axis=-1), "per_band": value}
    return extra


def _false_positive_control(config, hidden_map: np.ndarray, mask) -> dict:
    """{"fp_threshold"} with a truth mask, {"flagged_fraction"} with config.eval.flag (module text)."""
    out = {}
    rate = float(config.eval.get("false_positive_rate", 0.05))
    if not 0.0 < rate < 1.0:
        raise errors.ConfigError(f"config.eval.false_positive_rate={rate} must lie in (0, 1)")
    values = np.asarray(hidden_map, np.float64)
    if mask is not None and np.any(~np.asarray(mask, bool)):
        out["fp_threshold"] = float(np.quantile(values[~np.asarray(mask, bool)], 1.0 - rate))
    if config.eval.get("flag", False):
        out["flagged_fraction"] = float(np.mean(values > float(config.eval.flag_threshold)))
    return out


def _control_summary(rows: list[dict]) -> dict:
    out = {}
    thresholds = [r["fp_threshold"] for r in rows if "fp_threshold" in r]
    if thresholds:
        out["fp_threshold"] = float(np.median(thresholds))
    flagged = [r["flagged_fraction"] for r in rows if "flagged_fraction" in r]
    if flagged:
        out["flagged_fraction"] = float(np.mean(flagged))
    return out


def evaluate(config, workdir: str, output_dir: str | None = None, variables=None, method=None) -> dict:
    """Maps, metrics, PNGs and the gallery of the validation paintings."""
    started = provenance.utc_now()
    method = method or methods.build(config)
    scenes = paintings.load_split(config, config.data.val_split)
    if variables is None:
        variables = trained_variables(config, workdir, method, scenes[0])
    out = os.path.join(output_dir or workdir, OUTPUT_DIR)
    os.makedirs(out, exist_ok=True)
    rows, entries = [], []
    for scene in scenes:
        outputs = jax.device_get(method.dissimilarity(variables, method.collate([method.item(scene)], None)))
        outputs = {k: np.asarray(v)[0] for k, v in outputs.items()}
        if "collage" not in outputs:
            collage = dis.collage(jnp.asarray(outputs["per_band"])[None], threshold=float(config.eval.threshold))
            outputs["collage"] = np.asarray(jax.device_get(collage["collage"]))[0]
        row = {"painting": scene["name"], "method": method.name}
        if "hidden" in scene:
            row.update(recovery.recovery_metrics(outputs["map"], scene["hidden"], scene["hidden_mask"]))
        row.update(_false_positive_control(config, outputs["map"], scene.get("hidden_mask")))
        rows.append(row)
        stem = os.path.join(out, f"{scene['name']}_{method.name}")
        _png16(f"{stem}_map.png", outputs["map"])
        _png8(
            f"{stem}_overlay.png",
            np.asarray(dis.overlay(jnp.asarray(scene["rgb"])[None], jnp.asarray(outputs["map"])[None]))[0],
        )
        # Collage: the band (1-based) that differs most at each pixel, 0 where below the threshold.
        _png8(f"{stem}_collage.png", (np.asarray(outputs["collage"]) + 1).astype(np.uint8))
        np.savez_compressed(f"{stem}_outputs.npz", **outputs)
        entries.append(gallery.painting_entry(scene, {method.name: outputs, **_extra_maps(method.name, outputs)}))
    summary = {
        "method": method.name,
        "config": config.get("config_name", ""),
        "paintings": rows,
        "mean": {**recovery.mean_metrics(rows), **_control_summary(rows)},
        "provenance": provenance.collect(config, started),
    }
    files.write_text_atomic(os.path.join(out, "results.json"), json.dumps(summary, indent=1, default=float) + "\n")
    counts = gallery.write_gallery(
        os.path.join(out, "gallery.html"), entries, title=f"Hidden-art extraction: {method.name}"
    )
    print(f"[{method.name}] validation mean: {json.dumps(summary['mean'], default=float)}", flush=True)
    print(f"[{method.name}] wrote {out}/results.json and gallery.html ({counts['images']} images)", flush=True)
    return summary
