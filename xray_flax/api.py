"""The Python API: a trained workdir (or an exported model) as an object that scores arrays and scans.

    import xray_flax

    model = xray_flax.load("runs/draem")          # a workdir written by --mode train
    out = model.score(images)                     # uint8/uint16/float [N, H, W, C] or [H, W]
    out["map"], out["score"]                      # [N, H, W] normalised maps, [N] image scores
    scan = model.predict_file("scan.tif")         # whole scan, as --mode predict: map, regions
    report = xray_flax.train_and_evaluate(config, "runs/new")  # from a ConfigDict (api.train)

`load` also takes the folder `--mode export` wrote; that model runs on jax and numpy alone
(xray_flax/exported.py), without the detectors or Flax. docs/api.md has a worked example.

Arrays are read as the scan readers read files (xray_flax/data/readers.py): uint8 / uint16 are
divided by 255 / 65535 (or stretched between percentiles when the model was trained with
`config.data.normalization='percentile'`), floats must already lie in [0, 1]; grey and RGB are
converted to the model's channels. Images of the patch size are scored as tiles in batches (what
evaluation does); other sizes are tiled with overlap and blended into one map, as predict does
(`config.eval.predict`), and their image score is the highest score of their tiles (the
image-level rule of evaluation).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import tifffile

from xray_flax import exported
from xray_flax.data import readers, tiling
from xray_flax.report import overlay, regions, stitch


@dataclasses.dataclass
class ScanPrediction:
    """One scan predicted by `Model.predict_file`."""

    map: np.ndarray  # [H, W] float32 normalised anomaly map (0.5 = the fixed cut)
    regions: list[dict]  # connected regions above the threshold, highest score first
    threshold: float  # the region threshold used
    summary: dict  # what --mode predict logs for the scan (paths of the files written, timing)
    output_dir: str | None  # the folder with anomaly_map, overlay.png, regions, report.html


class Model:
    """A detector ready to score: from a workdir (`load(workdir)`) or an export (`load(folder)`).

    Attributes: `patch_size`, `channels`, `threshold` (the region threshold predict uses),
    `info` (detector, checkpoint or manifest fields), `batch_size` (tiles per call).
    """

    def __init__(
        self,
        tiles: Callable[[np.ndarray], dict],
        *,
        patch_size: int,
        channels: int,
        batch_size: int,
        normalization: str,
        rgb_to_gray: str,
        stride: int,
        window: str,
        threshold: float,
        info: dict,
        predict_scan: Callable[[str, str | None], ScanPrediction] | None = None,
    ):
        self._tiles = tiles
        self.patch_size, self.channels, self.batch_size = int(patch_size), int(channels), int(batch_size)
        self.normalization, self.rgb_to_gray = normalization, rgb_to_gray
        self.stride, self.window = int(stride), window
        self.threshold = float(threshold)
        self.info = dict(info)
        self._predict_scan = predict_scan

    def __repr__(self) -> str:
        what = ", ".join(f"{k}={v!r}" for k, v in self.info.items() if k in ("detector", "checkpoint", "export"))
        return f"Model({what}, patch_size={self.patch_size}, channels={self.channels})"

    # -- arrays ------------------------------------------------------------------------------

    def images(self, images: Any) -> list[np.ndarray]:
        """`images` as the model reads them: float32 [H, W, channels] in [0, 1], one per image."""
        return [self._read(image) for image in as_image_list(images)]

    def _read(self, image: np.ndarray) -> np.ndarray:
        return read_array(image, self.channels, self.normalization, self.rgb_to_gray)

    def score(self, images: Any) -> dict[str, np.ndarray]:
        """Anomaly maps and image scores of images [N, H, W, C], [N, H, W], [H, W, C] or [H, W].

        Returns {'map': float32 [N, H, W] normalised (0.5 = the fixed cut), 'score': float32 [N]},
        N = 1 for a single image. Patch-sized images also return the detector's extras (e.g.
        'reconstruction'). Images of another size may differ in size among themselves.
        """
        arrays = self.images(images)
        if all(a.shape[:2] == (self.patch_size, self.patch_size) for a in arrays):
            return self._score_tiles(np.stack(arrays))
        maps, scores = [], []
        for image in arrays:
            anomaly_map, score = self.whole_image(image)
            maps.append(anomaly_map)
            scores.append(score)
        if len({m.shape for m in maps}) > 1:
            return {"map": maps, "score": np.asarray(scores, np.float32)}  # a list of maps of their sizes
        return {"map": np.stack(maps), "score": np.asarray(scores, np.float32)}

    def _score_tiles(self, tiles: np.ndarray) -> dict[str, np.ndarray]:
        parts = [self._tiles(tiles[i : i + self.batch_size]) for i in range(0, len(tiles), self.batch_size)]
        return {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}

    def whole_image(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        """(map [H, W], image score) of one float32 [H, W, C] image of any size: overlapping
        tiles blended as predict blends them; the score is the highest of its tiles' scores."""
        reader = readers.ArrayScanReader(image)
        tile_scores: list[np.ndarray] = []

        def tile_maps(batch: np.ndarray) -> np.ndarray:
            out = self._tiles(batch)
            tile_scores.append(np.asarray(out["score"]))
            return np.asarray(out["map"])

        anomaly_map = stitch.stitch_anomaly_map(
            reader, tile_maps, self.patch_size, self.stride, self.batch_size, window=self.window
        )
        # stitch pads the last batch with blank tiles: only the real tiles' scores count.
        real = len(tiling.tile_starts(image.shape[0], self.patch_size, self.stride, "shift")) * len(
            tiling.tile_starts(image.shape[1], self.patch_size, self.stride, "shift")
        )
        return anomaly_map, float(np.concatenate(tile_scores)[:real].max())

    # -- files -------------------------------------------------------------------------------

    def predict_file(self, path: str, output_dir: str | None = None) -> ScanPrediction:
        """A whole scan (PNG or TIFF, any size), as `--mode predict` does it.

        From a workdir: through predict's own code, writing anomaly map, overlay, regions and
        HTML report to `output_dir` (default <workdir>/predictions/<scan name>). From an export:
        the same tiling, blending and regions, in memory (no files written).
        """
        if self._predict_scan is not None:
            return self._predict_scan(path, output_dir)
        reader = readers.open_scan(path, self.channels, self.normalization)
        try:
            anomaly_map = stitch.stitch_anomaly_map(
                reader, lambda b: np.asarray(self._tiles(b)["map"]), self.patch_size, self.stride, self.batch_size,
                window=self.window,
            )  # fmt: skip
            inside = self._inside_painting(reader)
        finally:
            reader.close()
        found = regions.regions_to_dicts(
            regions.find_regions(anomaly_map, self.threshold, self.info.get("min_region_area", 64), **inside)
        )
        summary = {"scan": path, "height": reader.height, "width": reader.width, "regions": len(found)}
        return ScanPrediction(anomaly_map, found, self.threshold, summary, None)

    def _inside_painting(self, reader) -> dict:
        """find_regions' painting mask for an exported model, as predict makes it (no mask for
        an export that carries no background rule)."""
        background = self.info.get("background")
        if background is None:
            return {}
        thumbnail = overlay.scan_thumbnail(reader, self.info["overlay_max_side"], background, self.patch_size)
        inside = regions.inside_painting(thumbnail.foreground, thumbnail.factor, self.patch_size)
        return {"foreground": inside, "factor": thumbnail.factor}


def as_image_list(images: Any) -> list[np.ndarray]:
    """[N, H, W, C], [N, H, W], [H, W, C] (C = 1, 3 or 4) or [H, W], or a list of images -> images."""
    if isinstance(images, (list, tuple)):
        return [image for item in images for image in as_image_list(item)]
    array = np.asarray(images)
    if array.ndim == 2:
        return [array]
    if array.ndim == 3:
        # One image with its channels last, or a batch of grey images.
        return [array] if array.shape[-1] in (1, 3, 4) else list(array)
    if array.ndim == 4:
        return list(array)
    raise ValueError(f"images must be [N, H, W, C], [N, H, W], [H, W, C] or [H, W], got shape {array.shape}")


def read_array(image: np.ndarray, channels: int, normalization: str = "bit_depth", rgb_to_gray: str = "luminance"):
    """One image as the scan readers read a file: float32 [H, W, channels] in [0, 1]."""
    image = np.asarray(image)
    if image.dtype in (np.uint8, np.uint16):
        bits = 8 if image.dtype == np.uint8 else 16
        reader = readers.ArrayScanReader(
            image, bits, channels=channels, normalization=normalization, rgb_to_gray=rgb_to_gray
        )
        return reader.read_region(0, 0, reader.height, reader.width)
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"images must be uint8, uint16 or float in [0, 1], got {image.dtype}")
    pixels = image.astype(np.float32)
    lo, hi = (float(pixels.min()), float(pixels.max())) if pixels.size else (0.0, 0.0)
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"float images must lie in [0, 1] (found {lo:g} .. {hi:g}): divide 8-bit values by 255 and "
            "16-bit ones by 65535, or pass the uint8 / uint16 array"
        )
    return readers.to_channels(pixels, channels, rgb_to_gray)


# -- loading ---------------------------------------------------------------------------------


def load(path: str, *, checkpoint: str = "", batch_size: int | None = None) -> Model:
    """The model in `path`: a workdir written by --mode train (its best checkpoint, or
    `checkpoint`, a <workdir>/checkpoints/<step> folder), or a folder written by --mode export."""
    if exported.is_export(path):
        return _from_export(exported.load(path), batch_size)
    return _from_workdir(path, checkpoint, batch_size)


def _from_export(model: exported.ExportedModel, batch_size: int | None) -> Model:
    m = model.manifest
    return Model(
        model,
        patch_size=m["patch_size"],
        channels=m["channels"],
        batch_size=batch_size or m["batch_size"],
        normalization=m["input"]["normalization"],
        rgb_to_gray=m["input"].get("rgb_to_gray", "luminance"),
        stride=m["stitch"]["stride"],
        window=m["stitch"]["window"],
        threshold=m["threshold"]["value"],
        info={
            "export": model.directory,
            "detector": m["detector"],
            "min_region_area": m["min_region_area"],
            # Exports written before regions were kept inside the painting carry no rule.
            "background": m.get("background"),
            "overlay_max_side": m.get("overlay_max_side", 2048),
        },
    )


def _from_workdir(workdir: str, checkpoint: str, batch_size: int | None) -> Model:
    # Imported here: an exported model loads without the training code (detectors, Flax,
    # orbax); only a workdir needs it.
    from xray_flax import evaluation_config, parallel, predict, provenance, scoring, workdir_config  # noqa: PLC0415

    config = workdir_config.load(workdir)
    if config.get("family") == "hidden_art":
        raise ValueError(f"{workdir} holds a hidden-art run; the API loads X-ray detectors")
    if checkpoint:
        config.eval.checkpoint = checkpoint
    opts = config.eval.predict
    mesh = parallel.make_mesh(config.mesh)
    detector, infer, meta, path = scoring.restore_inferencer(config, workdir, mesh, batch_size or opts.batch_size)
    threshold, source = predict.region_threshold(opts.region_threshold, workdir)
    metadata = {
        "checkpoint": path,
        "method": f"{config.method} ({detector.name})",
        "region threshold": f"{threshold:.4f} ({source})",
        **provenance.rows(provenance.collect(config)),
    }
    # As predict reads it: the overlay and report start their colour where normal paint ends.
    normal_level = overlay.saved_normal_level(workdir)

    def predict_scan(scan: str, output_dir: str | None) -> ScanPrediction:
        name = os.path.splitext(os.path.basename(scan))[0]
        out_dir = output_dir or os.path.join(workdir, "predictions", name)
        summary = predict.predict_scan(infer, scan, out_dir, config, threshold, metadata, normal_level)
        with open(os.path.join(out_dir, "regions.json"), encoding="utf-8") as f:
            found = json.load(f)["regions"]
        anomaly_map = _read_map(summary["anomaly_map"])
        return ScanPrediction(anomaly_map, found, threshold, summary, out_dir)

    return Model(
        infer,
        patch_size=config.data.patch_size,
        channels=config.data.channels,
        batch_size=infer.batch_size,
        normalization=config.data.normalization,
        rgb_to_gray="luminance",
        stride=evaluation_config.resolve_stride(opts.stride, opts.overlap, config.data.patch_size),
        window=opts.window,
        threshold=threshold,
        info={
            "workdir": workdir,
            "detector": detector.name,
            "method": config.method,
            "checkpoint": path,
            "step": meta.get("step"),
            "normalization": infer.normalization.to_json(),
            "threshold_source": source,
            "config": config,
        },
        predict_scan=predict_scan,
    )


def _read_map(path: str) -> np.ndarray:
    if path.endswith(".npy"):
        return np.load(path)
    return tifffile.imread(path)


def train(config, workdir: str) -> dict | None:
    """Train (or resume) -> evaluate -> predict, as `--mode train` does: the test report of
    metrics.json, or None when training stopped early (rerun the same call to resume)."""
    # Imported here, as in _from_workdir: the training code is only needed to train.
    from xray_flax import workflow  # noqa: PLC0415

    return workflow.train_and_evaluate(config, workdir)
