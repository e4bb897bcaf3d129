"""Evaluation of a hidden-art method on the validation paintings: maps, metrics, PNGs and a gallery.

Per validation painting: the dissimilarity map and per-band maps, the collage of the bands,
the recovery metrics against the true hidden layer when the data have one (correlation, SSIM,
AUROC of the hidden mask: `xray_flax.hidden_art.metrics`), written to
`<output>/hidden_art/results.json`; per painting a 16-bit map PNG, the overlay of the map on the
grey RGB, the band collage (the 1-based band that differs most, 0 below the threshold) and every
output array (`<painting>_<method>_outputs.npz`); and the self-contained `gallery.html` (further
per-band maps of a method, e.g. GAT's attention, as their own columns). Nothing here depends on
which method runs (`xray_flax.hidden_art.methods`).
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from xray_flax import files, provenance
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
        # "signed" is the residual before the map form: per_band shows it already (as |.| or scaled).
        if key not in ("per_band", "signed") and np.ndim(value) == 3 and np.shape(value) == np.shape(per_band):
            extra[f"{name}: {key}"] = {"map": np.mean(value, axis=-1), "per_band": value}
    return extra


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
        "mean": recovery.mean_metrics(rows),
        "provenance": provenance.collect(config, started),
    }
    files.write_text_atomic(os.path.join(out, "results.json"), json.dumps(summary, indent=1, default=float) + "\n")
    counts = gallery.write_gallery(
        os.path.join(out, "gallery.html"), entries, title=f"Hidden-art extraction: {method.name}"
    )
    print(f"[{method.name}] validation mean: {json.dumps(summary['mean'], default=float)}", flush=True)
    print(f"[{method.name}] wrote {out}/results.json and gallery.html ({counts['images']} images)", flush=True)
    return summary
