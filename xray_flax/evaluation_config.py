"""Defaults of the `config.eval` section: image scores, thresholds, metrics, predict.

`configs/*.py` compose the full config from per-package defaults; this module owns the
knobs read by `xray_flax.metrics`, `evaluate.py`, `predict.py` and `xray_flax.report`.
Two small resolvers turn "0 = derive it" values into concrete numbers so every caller
derives them the same way.
"""

from __future__ import annotations

import ml_collections

from xray_flax import config_rules, errors
from xray_flax.report import overlay, stitch

NORMALIZATIONS = ("auto", "none", "normal_quantile")
THRESHOLD_METRICS = ("f1", "youden")
MAP_FORMATS = ("tiff", "npy")

# DRAEM (Zavrtanik et al. 2021) smooths the anomaly map with a 21x21 mean filter before
# taking the max, at 256x256 inputs. Larger patches keep the same physical footprint when
# the filter is scaled with the patch side.
DRAEM_FILTER_SIZE = 21
DRAEM_PATCH_SIZE = 256


def defaults() -> ml_collections.ConfigDict:
    """Returns the `config.eval` section with every field documented inline."""
    cfg = ml_collections.ConfigDict()

    # Checkpoint evaluated and used by predict: a step directory such as
    # <workdir>/checkpoints/300; '' = the workdir's best (by validation ROC-AUC).
    cfg.checkpoint = ""

    # --- image-level score: max of the mean-filtered anomaly map -----------------------
    # Side of the square mean filter (odd, stride 1, zero 'same' padding, divisor = full
    # window like torch avg_pool2d(count_include_pad=True)). 0 => scale DRAEM's 21 @ 256 px
    # with the patch size: round(21 * patch / 256), made odd (+1 when even); 43 at 512 px.
    # 1 => plain max of the map.
    cfg.score_filter_size = 0
    # Image score = mean of the k largest values of the filtered map instead of its max.
    # 1 = the max [DRAEM]; k > 1 weighs how much of a tile responds, not only its peak. [ours;
    # measured on the hard simulated set, a top-64 mean scores below the max: docs/results.md]
    cfg.score_top_k = 1

    # --- score normalisation (xray_flax/normalization.py) ---------------------------------
    # 'auto': the identity for detectors whose maps are probabilities cut at 0.5 (DRAEM),
    # else 'normal_quantile'. 'normal_quantile': fitted on the validation split's normal
    # tiles and stored with the best checkpoint, applied before thresholds, regions and
    # colour scales. 'none': raw maps (a fixed threshold then means nothing for unbounded maps).
    cfg.normalization = "auto"
    # The normal validation tiles' image-score quantile that maps to 0.5. [ours: 0.99, so one
    # outlying normal tile does not set the scale]
    cfg.normalization_quantile = 0.99

    # --- thresholds ----------------------------------------------------------------------
    # Threshold reported next to the chosen one (normalised maps: 0.5 is the natural cut of a
    # 2-class softmax map and the highest normal validation score of a normalised one).
    cfg.fixed_threshold = 0.5
    # Criterion maximised on the validation split to pick the image threshold:
    # 'f1' (argmax F1, anomalib's F1AdaptiveThreshold) or 'youden' (argmax TPR - FPR).
    cfg.threshold_metric = "f1"

    # --- pixel metrics (only when ground-truth masks exist) ------------------------------
    # Up to this many pixels the pixel AUROC / AUPRO are exact (sort of all scores); above
    # it scores are binned into `pixel_histogram_bins` bins between their min and max, which
    # bounds memory by the bins and gives a documented error bound (see metrics.pixel_auroc).
    cfg.pixel_exact_max_pixels = 4_000_000
    cfg.pixel_histogram_bins = 65_536
    # AUPRO integrates the per-region-overlap curve up to this false-positive rate (MVTec AD).
    cfg.aupro_fpr_limit = 0.3

    # --- timing (seconds per patch, the paper's Table 2 column) --------------------------
    # Batches timed after `timing_warmup_batches` untimed ones (compilation, caches); at
    # least 20 so the mean is not dominated by one slow batch.
    cfg.timing_batches = 20
    cfg.timing_warmup_batches = 2
    # Batch size used for evaluation forward passes (maps and timing).
    cfg.batch_size = 16

    # --- whole-scan inference (`--mode predict`) -----------------------------------------
    predict = ml_collections.ConfigDict()
    # Tile step in pixels. 0 => derived from `overlap`: round(patch * (1 - overlap)).
    predict.stride = 0
    # Fraction of a tile shared with its neighbour when `stride` is 0. 0.5 lets every pixel
    # be seen by up to 4 tiles, which hides the weak borders of a U-Net's receptive field.
    predict.overlap = 0.5
    # Blend window used to average overlapping tiles: 'hann', 'triangle' or 'flat'
    # (see report.stitch.blend_window; never exactly zero so scan borders stay covered).
    predict.window = "hann"
    # Tiles per anomaly-map call; the last batch is padded to it (one compilation).
    predict.batch_size = 8
    # Pixels at or above this anomaly value form candidate regions. 0 => the image-score
    # threshold chosen on the validation split (<workdir>/metrics.json), else 0.5: the
    # softmax map of a briefly trained model rarely reaches 0.5 on real anomalies.
    predict.region_threshold = 0.0
    # Connected regions smaller than this many pixels (at full resolution) are dropped.
    predict.min_region_area = 64
    # Longest side in pixels of the overlay PNG and of the HTML report's images.
    predict.overlay_max_side = 2048
    # Heatmap opacity in the overlay PNG where the map reaches the region threshold; below it
    # the opacity falls linearly to 0 at map value 0 (the HTML report has a slider).
    predict.overlay_alpha = 0.5
    # Colour map of heatmaps: 'inferno' or 'jet'.
    predict.colormap = "inferno"
    # Format of the full-resolution float32 anomaly map: 'tiff' or 'npy'.
    predict.map_format = "tiff"
    # Regions listed (with crops) in the HTML report, highest max score first.
    predict.report_max_regions = 50
    # Context in pixels added around each region's bounding box for its crop.
    predict.crop_margin = 32
    cfg.predict = predict
    return cfg


def resolve_score_filter_size(filter_size: int | None, patch_size: int) -> int:
    """Concrete odd mean-filter side for image scores.

    `filter_size` > 0 is used as given (must be odd: a 'same' mean filter of even side has
    no centre). None or 0 scales DRAEM's 21 px at 256 px with `patch_size`.
    """
    if filter_size:
        errors.require(score_filter_size_problems(filter_size))
        return int(filter_size)
    errors.require(config_rules.integer("config.data.patch_size", patch_size, 1))
    size = max(1, int(round(DRAEM_FILTER_SIZE * patch_size / DRAEM_PATCH_SIZE)))
    return size if size % 2 == 1 else size + 1


def resolve_stride(stride: int, overlap: float, patch_size: int) -> int:
    """Concrete tile stride: `stride` if > 0, else round(patch_size * (1 - overlap))."""
    errors.require(predict_stride_problems(stride, overlap, patch_size))
    if stride and stride > 0:
        return int(stride)
    return max(1, int(round(patch_size * (1.0 - overlap))))


def score_filter_size_problems(filter_size) -> list[str]:
    """0 (derived from the patch size) or a positive odd int: a 'same' mean filter of even side has no centre."""
    if config_rules.is_int(filter_size) and (filter_size == 0 or (filter_size > 0 and filter_size % 2 == 1)):
        return []
    return [
        f"config.eval.score_filter_size={filter_size!r} must be 0 (scaled with the patch size) or a positive odd int"
    ]


def predict_stride_problems(stride, overlap, patch_size) -> list[str]:
    """config.eval.predict.stride: 0 (from `overlap`, in [0, 1)) or an int up to the patch size (no gaps)."""
    problems = config_rules.integer("config.eval.predict.stride", stride, 0)
    if problems:
        return problems
    if stride > 0:
        if config_rules.is_int(patch_size) and stride > patch_size:
            return [
                f"config.eval.predict.stride={stride} must be at most config.data.patch_size={patch_size} "
                "(a larger stride leaves gaps in the map)"
            ]
        return []
    return config_rules.number("config.eval.predict.overlap", overlap, 0.0, 1.0, high_open=True)


def check(section: ml_collections.ConfigDict, patch_size: int) -> list[str]:
    """The problems of the `config.eval` section, one sentence each (none: it is fine)."""
    key, p = "config.eval", section.predict
    problems = config_rules.one_of(f"{key}.normalization", section.normalization, NORMALIZATIONS)
    problems += config_rules.number(
        f"{key}.normalization_quantile", section.normalization_quantile, 0, 1, low_open=True
    )
    problems += config_rules.one_of(f"{key}.threshold_metric", section.threshold_metric, THRESHOLD_METRICS)
    problems += config_rules.number(f"{key}.fixed_threshold", section.fixed_threshold)
    problems += score_filter_size_problems(section.score_filter_size)
    problems += config_rules.integer(f"{key}.score_top_k", section.get("score_top_k", 1), 1)
    problems += config_rules.integer(f"{key}.pixel_exact_max_pixels", section.pixel_exact_max_pixels, 0)
    problems += config_rules.integer(f"{key}.pixel_histogram_bins", section.pixel_histogram_bins, 2)
    problems += config_rules.number(f"{key}.aupro_fpr_limit", section.aupro_fpr_limit, 0, 1, low_open=True)
    problems += config_rules.integer(f"{key}.timing_batches", section.timing_batches, 1)
    problems += config_rules.integer(f"{key}.timing_warmup_batches", section.timing_warmup_batches, 0)
    problems += config_rules.integer(f"{key}.batch_size", section.batch_size, 1)
    problems += predict_stride_problems(p.stride, p.overlap, patch_size)
    problems += config_rules.one_of(f"{key}.predict.window", p.window, stitch.WINDOWS)
    problems += config_rules.integer(f"{key}.predict.batch_size", p.batch_size, 1)
    problems += config_rules.number(f"{key}.predict.region_threshold", p.region_threshold, 0.0)
    problems += config_rules.integer(f"{key}.predict.min_region_area", p.min_region_area, 0)
    problems += config_rules.integer(f"{key}.predict.overlay_max_side", p.overlay_max_side, 1)
    problems += config_rules.fraction(f"{key}.predict.overlay_alpha", p.overlay_alpha)
    problems += config_rules.one_of(f"{key}.predict.colormap", p.colormap, overlay.COLORMAPS)
    problems += config_rules.one_of(f"{key}.predict.map_format", p.map_format, MAP_FORMATS)
    problems += config_rules.integer(f"{key}.predict.report_max_regions", p.report_max_regions, 0)
    problems += config_rules.integer(f"{key}.predict.crop_margin", p.crop_margin, 0)
    return problems
