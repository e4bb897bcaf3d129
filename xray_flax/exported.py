"""A model written by `--mode export`, run with jax and numpy alone: no detectors, Flax or orbax.

The folder `--mode export` writes (xray_flax/export.py):

    manifest.json                what the model is and expects (below)
    model.cpu.jax_export         serialized `jax.export` StableHLO for CPU
    model.<platforms>.jax_export the same function lowered for the platforms named in
                                 config.eval.export_platforms (e.g. model.cuda-tpu.jax_export)

The exported function maps float32 tiles [batch, P, P, C] in [0, 1] (any batch size) to
{'map': float32 [batch, P, P], 'score': float32 [batch]}: the detector's anomaly map with the
variables and the score normalisation baked in (0.5 = the fixed cut), and the image score.
The manifest records the detector, patch size, channels, input scaling, the normalisation and
the threshold (also applied by nobody inside the function: regions are cut by the caller),
the stitching predict uses, versions and provenance, and the input/output specs.

    model = exported.load("runs/draem/export")
    out = model(tiles)                 # tiles float32 [n, P, P, C] in [0, 1]
    out["map"], out["score"]

`xray_flax.load(folder)` wraps it with the API's array and file reading (xray_flax/api.py).
This module must import nothing of xray_flax but itself: a service can copy it alone.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np

MANIFEST = "manifest.json"
FORMAT = "xray_flax.export/1"
SUFFIX = ".jax_export"


def is_export(path: str) -> bool:
    """Whether `path` is a folder written by --mode export."""
    manifest = os.path.join(path, MANIFEST)
    if not os.path.isfile(manifest):
        return False
    try:
        with open(manifest, encoding="utf-8") as f:
            return json.load(f).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def platform_of_backend(backend: str) -> str:
    """jax.default_backend() -> the platform name jax.export uses ('gpu' is 'cuda' or 'rocm')."""
    if backend != "gpu":
        return backend
    version = str(getattr(jax.devices()[0].client, "platform_version", "")).lower()
    return "rocm" if "rocm" in version else "cuda"


class ExportedModel:
    """The exported anomaly-map function of `directory`, for the platform this process runs on."""

    def __init__(self, directory: str, platform: str | None = None):
        self.directory = directory
        with open(os.path.join(directory, MANIFEST), encoding="utf-8") as f:
            self.manifest = json.load(f)
        if self.manifest.get("format") != FORMAT:
            raise ValueError(
                f"{directory}/{MANIFEST}: not a {FORMAT} manifest (format {self.manifest.get('format')!r})"
            )
        self.platform = platform or platform_of_backend(jax.default_backend())
        artefacts = self.manifest["artefacts"]
        names = [a["file"] for a in artefacts if self.platform in a["platforms"]]
        if not names:
            lowered = sorted({p for a in artefacts for p in a["platforms"]})
            raise ValueError(
                f"{directory} has no model lowered for {self.platform} (it has {', '.join(lowered)}); "
                f"export again with config.eval.export_platforms including {self.platform}"
            )
        with open(os.path.join(directory, names[0]), "rb") as f:
            self.exported = jax.export.deserialize(bytearray(f.read()))
        self.file = names[0]
        self._call = jax.jit(self.exported.call)
        self.patch_size = int(self.manifest["patch_size"])
        self.channels = int(self.manifest["channels"])
        self.threshold = float(self.manifest["threshold"]["value"])

    def __repr__(self) -> str:
        return f"ExportedModel({self.directory!r}, detector={self.manifest['detector']!r}, platform={self.platform!r})"

    def __call__(self, tiles: np.ndarray) -> dict[str, np.ndarray]:
        """float32 tiles [n, P, P, C] in [0, 1] -> {'map' [n, P, P], 'score' [n]} as NumPy."""
        tiles = np.asarray(tiles, np.float32)
        expected = (self.patch_size, self.patch_size, self.channels)
        if tiles.ndim != 4 or tiles.shape[1:] != expected:
            raise ValueError(f"tiles must be [n, {', '.join(map(str, expected))}], got {tiles.shape}")
        out = self._call(tiles)
        return {k: np.asarray(v) for k, v in out.items()}


def load(directory: str, platform: str | None = None) -> ExportedModel:
    """The model `--mode export` wrote to `directory`."""
    return ExportedModel(directory, platform)
