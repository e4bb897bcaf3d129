"""Anomaly-detection metrics: image scores (JAX) and exact, fast NumPy metrics.

Conventions
-----------
* Labels: 1 = anomalous (positive class), 0 = normal.
* A sample is predicted anomalous when ``score >= threshold``.
* Confusion matrices use scikit-learn's layout ``[[tn, fp], [fn, tp]]`` (rows = truth).
* Undefined ratios follow scikit-learn's ``zero_division=0``: precision is 0 when nothing
  is predicted anomalous, recall is 0 when there are no anomalies, F1 is 0 when both are.
* ROC-AUC / average precision are ``nan`` when a class is missing (scikit-learn raises or
  warns); `evaluate_scores` turns every ``nan`` into ``None`` so its output is strict JSON.

Curve metrics are computed the way scikit-learn computes them (ROC by the trapezoid over
all distinct thresholds, ties counted as half; AP as ``sum (R_k - R_{k-1}) P_k``), so the
numbers equal ``roc_auc_score`` / ``average_precision_score`` to float rounding. The
library does not import scikit-learn: it is used only in the tests as the reference.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage, stats

__all__ = [
    "image_scores",
    "roc_auc",
    "average_precision",
    "select_threshold",
    "select_threshold_with_rule",
    "classification_metrics",
    "pixel_auroc",
    "pixel_auroc_with_bound",
    "aupro",
    "evaluate_scores",
    "per_kind_roc_auc",
    "bootstrap_intervals",
    "auc_of_samples",
]


# ---------------------------------------------------------------------------------------
# Image scores (JAX)
# ---------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("filter_size", "top_k"))
def image_scores(maps: jax.Array, filter_size: int, top_k: int = 1) -> jax.Array:
    """Image-level anomaly score: max of the mean-filtered anomaly map (DRAEM).

    Args:
      maps: ``[b, H, W]`` (or ``[b, H, W, 1]``) anomaly maps.
      filter_size: odd side of the square mean filter; ``<= 1`` means the plain max.
      top_k: mean of the ``top_k`` largest values of the (filtered) map instead of its
        max; 1 is the max (DRAEM). Capped at the map's pixel count.

    Returns:
      float32 ``[b]``.

    The filter matches DRAEM's ``torch.nn.functional.avg_pool2d(map, 21, stride=1,
    padding=10)``: stride 1, zero 'same' padding of ``filter_size // 2`` on every side and
    - because torch's default is ``count_include_pad=True`` - every window sum is divided by
    the full ``filter_size**2`` even where the window hangs over the border. Border values
    are therefore damped, exactly as in the reference. This equals
    ``scipy.ndimage.uniform_filter(map, filter_size, mode='constant')``. The filter is
    separable, so it runs as two 1-D window sums (O(k) instead of O(k^2) per pixel).
    """
    maps = jnp.asarray(maps)
    if maps.ndim == 4 and maps.shape[-1] == 1:
        maps = maps[..., 0]
    if maps.ndim != 3:
        raise ValueError(f"maps must be [b, H, W] or [b, H, W, 1], got shape {maps.shape}")
    maps = maps.astype(jnp.float32)
    if top_k is None or top_k < 1:
        raise ValueError(f"top_k must be a positive int, got {top_k}")
    if filter_size is None or filter_size <= 1:
        return _top_k_mean(maps, top_k)
    if filter_size % 2 == 0:
        raise ValueError(f"filter_size must be odd for a centred 'same' filter, got {filter_size}")
    k = int(filter_size)
    pad = k // 2
    rows = jax.lax.reduce_window(maps, 0.0, jax.lax.add, (1, k, 1), (1, 1, 1), ((0, 0), (pad, pad), (0, 0)))
    sums = jax.lax.reduce_window(rows, 0.0, jax.lax.add, (1, 1, k), (1, 1, 1), ((0, 0), (0, 0), (pad, pad)))
    return _top_k_mean(sums, top_k) / float(k * k)


def _top_k_mean(maps: jax.Array, k: int) -> jax.Array:
    """Mean of the k largest values of each ``[H, W]`` map; k = 1 is the max."""
    if k == 1:
        return jnp.max(maps, axis=(1, 2))
    flat = maps.reshape(maps.shape[0], -1)
    return jnp.mean(jax.lax.top_k(flat, min(int(k), flat.shape[1]))[0], axis=1)


# ---------------------------------------------------------------------------------------
# Input checks and the shared curve
# ---------------------------------------------------------------------------------------


def _as_binary_labels(labels, name: str = "labels") -> np.ndarray:
    labels = np.asarray(labels).ravel()
    if labels.dtype == bool:
        return labels.astype(np.int64)
    if labels.size and not np.isin(labels, (0, 1)).all():
        bad = np.unique(labels[~np.isin(labels, (0, 1))])[:5]
        raise ValueError(f"{name} must be 0 (normal) or 1 (anomalous); found {bad.tolist()}")
    return labels.astype(np.int64)


def _as_scores(scores, n: int, name: str = "scores") -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if scores.size != n:
        raise ValueError(f"{name} has {scores.size} values but labels have {n}")
    if not np.isfinite(scores).all():
        raise ValueError(f"{name} contain nan or inf")
    return scores


def _binary_clf_curve(labels, scores):
    """Counts at every distinct threshold, highest threshold first.

    Returns (fps, tps, thresholds): at ``thresholds[i]``, ``tps[i]`` anomalies and ``fps[i]``
    normals have ``score >= thresholds[i]``.
    """
    labels = _as_binary_labels(labels)
    scores = _as_scores(scores, labels.size)
    if labels.size == 0:
        raise ValueError("no samples")
    order = np.argsort(scores, kind="mergesort")[::-1]
    scores_desc = scores[order]
    labels_desc = labels[order]
    # Last index of every run of equal scores: ties move together along the curve.
    last_of_run = np.r_[np.flatnonzero(np.diff(scores_desc)), labels.size - 1]
    tps = np.cumsum(labels_desc)[last_of_run]
    fps = last_of_run + 1 - tps
    return fps.astype(np.float64), tps.astype(np.float64), scores_desc[last_of_run]


def _trapezoid_auc(fps: np.ndarray, tps: np.ndarray) -> float:
    """Area under the ROC curve through (0, 0) and the given cumulative counts."""
    n_neg, n_pos = fps[-1], tps[-1]
    if n_neg == 0 or n_pos == 0:
        return math.nan
    fpr = np.r_[0.0, fps] / n_neg
    tpr = np.r_[0.0, tps] / n_pos
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2.0)


# ---------------------------------------------------------------------------------------
# Image-level metrics
# ---------------------------------------------------------------------------------------


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve (ties count half); ``nan`` when a class is missing."""
    fps, tps, _ = _binary_clf_curve(labels, scores)
    return _trapezoid_auc(fps, tps)


def average_precision(labels, scores) -> float:
    """``sum_k (R_k - R_{k-1}) P_k`` over distinct thresholds (scikit-learn's AP, no
    interpolation); ``nan`` without anomalies."""
    fps, tps, _ = _binary_clf_curve(labels, scores)
    n_pos = tps[-1]
    if n_pos == 0:
        return math.nan
    precision = tps / (tps + fps)
    recall = tps / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def per_kind_roc_auc(labels, scores, tile_kinds) -> dict[str, dict]:
    """Tile ROC-AUC per anomaly kind, the per-defect-type AUROC of MVTec papers.

    For each kind k: the ROC-AUC of every normal tile (label 0) against the anomalous tiles
    (label 1) whose kinds (`tile_kinds[i]`, a sequence of kind names) include k; a tile with
    several kinds counts for each. Returns ``{kind: {"roc_auc": float, "n_anomalous": int}}``
    in sorted kind order; a kind without an anomalous tile is left out; ``roc_auc`` is None
    without normal tiles. Tiles of other labels (-1, unknown) take no part.
    """
    labels = np.asarray(labels)
    scores = _as_scores(scores, labels.size)
    if len(tile_kinds) != labels.size:
        raise ValueError(f"tile_kinds has {len(tile_kinds)} rows for {labels.size} labels")
    normal = scores[labels == 0]
    rows_of: dict[str, list[int]] = {}
    for i in np.flatnonzero(labels == 1):
        for kind in tile_kinds[i]:
            rows_of.setdefault(kind, []).append(int(i))
    result = {}
    for kind in sorted(rows_of):
        anomalous = scores[rows_of[kind]]
        both = np.r_[np.zeros(normal.size, np.int64), np.ones(anomalous.size, np.int64)]
        auc = roc_auc(both, np.r_[normal, anomalous])
        result[kind] = {"roc_auc": _json_number(auc), "n_anomalous": int(anomalous.size)}
    return result


def select_threshold_with_rule(labels, scores, metric: str = "f1") -> tuple[float, str]:
    """Threshold maximising `metric` on a (validation) split, and how it was chosen.

    Candidates are the distinct scores (anomalous iff ``score >= candidate``). Among equally
    good candidates the highest wins (fewest false alarms). The returned threshold is the
    midpoint between the winning score and the next lower distinct score, so scores falling
    between two validation scores are not decided by which side a tie lands on; on the
    validation split it classifies exactly like the winning candidate.

    Fallbacks (rule strings are returned so reports can say which was used):
      * ``"no_anomalies"``: only normals -> ``nextafter(max score, +inf)``: every
        validation sample is classified normal (F1 is 0 for every threshold, so the
        argmax would be meaningless).
      * ``"no_normals"``: only anomalies -> the min score: every sample is anomalous.
      * ``"argmax_<metric>"``: the regular case.

    Args:
      metric: ``'f1'`` (argmax F1) or ``'youden'`` (argmax TPR - FPR).
    """
    fps, tps, thresholds = _binary_clf_curve(labels, scores)
    n_pos, n_neg = tps[-1], fps[-1]
    if n_pos == 0:
        return float(np.nextafter(thresholds[0], np.inf)), "no_anomalies"
    if n_neg == 0:
        return float(thresholds[-1]), "no_normals"
    if metric == "f1":
        objective = 2.0 * tps / (tps + fps + n_pos)
    elif metric == "youden":
        objective = tps / n_pos - fps / n_neg
    else:
        raise ValueError(f"unknown threshold metric {metric!r}; expected 'f1' or 'youden'")
    best = int(np.argmax(objective))  # first = highest threshold among ties
    chosen = float(thresholds[best])
    if best + 1 < thresholds.size:
        below = float(thresholds[best + 1])
        midpoint = below + (chosen - below) / 2.0
        # Adjacent floats: the midpoint may round onto `below`, which would flip it.
        if below < midpoint <= chosen:
            chosen = midpoint
    return chosen, f"argmax_{metric}"


def select_threshold(labels, scores, metric: str = "f1") -> float:
    """Threshold chosen on a validation split; see `select_threshold_with_rule`."""
    return select_threshold_with_rule(labels, scores, metric)[0]


def classification_metrics(labels, scores, threshold: float) -> dict:
    """Accuracy, precision, recall, F1 and the confusion matrix at ``score >= threshold``.

    Returns plain Python numbers: ``accuracy``, ``precision``, ``recall``, ``f1``,
    ``confusion_matrix`` (``[[tn, fp], [fn, tp]]``), ``tp``, ``fp``, ``tn``, ``fn``,
    ``threshold``. Zero divisions give 0 (scikit-learn's ``zero_division=0``).
    """
    labels = _as_binary_labels(labels)
    scores = _as_scores(scores, labels.size)
    predicted = scores >= threshold
    positive = labels == 1
    tp = int(np.sum(predicted & positive))
    fp = int(np.sum(predicted & ~positive))
    fn = int(np.sum(~predicted & positive))
    tn = int(np.sum(~predicted & ~positive))
    n = labels.size
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return {
        "threshold": float(threshold),
        "accuracy": (tp + tn) / n if n else math.nan,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "confusion_matrix": [[tn, fp], [fn, tp]],
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


# ---------------------------------------------------------------------------------------
# Pixel-level metrics
# ---------------------------------------------------------------------------------------


def _spatial(array, name: str, index: int) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise ValueError(f"{name}[{index}] must be [H, W] or [H, W, 1], got {array.shape}")
    return array


def _pairs(masks, maps) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per-image (mask, map) [H, W] views from arrays ``[N, H, W(, 1)]`` or sequences.

    Masks stay as given (views, no copies: the caller already holds them); consumers
    binarise one image at a time with `_anomalous`.
    """
    masks = list(masks) if not isinstance(masks, np.ndarray) else masks
    maps = list(maps) if not isinstance(maps, np.ndarray) else maps
    if len(masks) != len(maps):
        raise ValueError(f"{len(masks)} masks but {len(maps)} maps")
    pairs = []
    for i, (mask, amap) in enumerate(zip(masks, maps)):
        mask = _spatial(mask, "masks", i)
        amap = _spatial(amap, "maps", i)
        if mask.shape != amap.shape:
            raise ValueError(f"masks[{i}] is {mask.shape} but maps[{i}] is {amap.shape}")
        pairs.append((mask, amap))
    return pairs


def _anomalous(mask: np.ndarray) -> np.ndarray:
    return mask > 0.5


def _score_range(pairs) -> tuple[float, float]:
    lo = min(float(np.min(m)) for _, m in pairs)
    hi = max(float(np.max(m)) for _, m in pairs)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError("maps contain nan or inf")
    return lo, hi


def _bin_index(amap: np.ndarray, lo: float, hi: float, n_bins: int) -> np.ndarray:
    if hi <= lo:
        return np.zeros(amap.shape, dtype=np.int64)
    scaled = (amap.astype(np.float64) - lo) * (n_bins / (hi - lo))
    return np.clip(scaled.astype(np.int64), 0, n_bins - 1)


def pixel_auroc_with_bound(masks, maps, exact_max_pixels: int = 4_000_000, n_bins: int = 65_536) -> tuple[float, float]:
    """Pixel AUROC over all pixels of all images, and a bound on its approximation error.

    Up to `exact_max_pixels` pixels the AUROC is exact (one sort, memory ~40 bytes/pixel)
    and the bound is 0. Above, each image's scores are binned into `n_bins` equal bins
    between the global min and max and only the per-bin counts of anomalous and normal
    pixels are kept (memory O(n_bins) plus one image). Pairs that share a bin are counted
    as ties (1/2), so ``|binned - exact| <= 0.5 * sum_b pos_b * neg_b / (P * N)``, the
    returned bound (typically < 1e-4 with 65,536 bins). It is 0 whenever no bin holds both
    classes, and the result is exact whenever all scores are bin-aligned (e.g. 8/16-bit).

    Args:
      masks: ``[N, H, W(, 1)]`` array or sequence of per-image masks (> 0.5 = anomalous).
      maps: matching anomaly maps.
    """
    pairs = _pairs(masks, maps)
    total = sum(mask.size for mask, _ in pairs)
    if total == 0:
        raise ValueError("no pixels")
    if total <= exact_max_pixels:
        labels = np.concatenate([_anomalous(mask).ravel() for mask, _ in pairs])
        scores = np.concatenate([amap.ravel() for _, amap in pairs])
        return roc_auc(labels, scores), 0.0
    lo, hi = _score_range(pairs)
    pos = np.zeros(n_bins, dtype=np.float64)
    neg = np.zeros(n_bins, dtype=np.float64)
    for mask, amap in pairs:
        mask = _anomalous(mask)
        bins = _bin_index(amap, lo, hi, n_bins)
        pos += np.bincount(bins[mask], minlength=n_bins)
        neg += np.bincount(bins[~mask], minlength=n_bins)
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos == 0 or n_neg == 0:
        return math.nan, 0.0
    # Highest bin first = highest threshold first, as in _binary_clf_curve.
    auc = _trapezoid_auc(np.cumsum(neg[::-1]), np.cumsum(pos[::-1]))
    bound = float(0.5 * np.sum(pos * neg) / (n_pos * n_neg))
    return auc, bound


def pixel_auroc(masks, maps, exact_max_pixels: int = 4_000_000, n_bins: int = 65_536) -> float:
    """Pixel AUROC (see `pixel_auroc_with_bound` for exactness and memory)."""
    return pixel_auroc_with_bound(masks, maps, exact_max_pixels, n_bins)[0]


def aupro(
    masks,
    maps,
    fpr_limit: float = 0.3,
    exact_max_pixels: int = 4_000_000,
    n_bins: int = 65_536,
) -> float:
    """Normalised area under the per-region-overlap curve up to `fpr_limit` (MVTec AD).

    Ground-truth regions are the 8-connected components of every mask (as in the MVTec AD
    evaluation code). At a threshold t, PRO(t) is the mean over all regions of all images
    of the fraction of the region's pixels with ``score >= t``, and FPR(t) the fraction of
    normal pixels (mask 0, all images) with ``score >= t``. The curve through (0, 0) and
    every distinct threshold is integrated with the trapezoid rule up to `fpr_limit`
    (interpolating linearly at the limit) and divided by `fpr_limit`, so a perfect map
    scores 1. Each pixel carries a weight (1 / (region size * number of regions) or
    1 / number of normal pixels), so the curve is one weighted cumulative sum - exact up
    to `exact_max_pixels`, over `n_bins` score bins above (memory O(n_bins)).

    Returns ``nan`` when the masks contain no anomalous or no normal pixel.
    """
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    pairs = _pairs(masks, maps)
    structure = np.ones((3, 3), dtype=bool)

    def labelled():
        # Components are recomputed per pass rather than kept: int32 labels of every test
        # image would cost 4 bytes per pixel (1 GB for 1,000 patches of 512 px).
        for mask, amap in pairs:
            components, count = ndimage.label(_anomalous(mask), structure=structure)
            yield components, count, amap

    n_regions = sum(count for _, count, _ in labelled())
    n_normal = sum(int(np.count_nonzero(~_anomalous(mask))) for mask, _ in pairs)
    if n_regions == 0 or n_normal == 0:
        return math.nan

    def weights(components, count):
        # Region r's pixels share 1 / n_regions of the PRO mass; normal pixels get 0 here.
        sizes = np.bincount(components.ravel(), minlength=count + 1).astype(np.float64)
        per_label = np.zeros(count + 1, dtype=np.float64)
        per_label[1:] = 1.0 / (sizes[1:] * n_regions)
        return per_label[components]

    total = sum(amap.size for _, amap in pairs)
    if total <= exact_max_pixels:
        scores, pro_w, fpr_w = [], [], []
        for components, count, amap in labelled():
            scores.append(amap.ravel().astype(np.float64))
            pro_w.append(weights(components, count).ravel())
            fpr_w.append((components == 0).ravel() / n_normal)
        scores, pro_w, fpr_w = (np.concatenate(a) for a in (scores, pro_w, fpr_w))
        order = np.argsort(scores, kind="mergesort")[::-1]
        scores = scores[order]
        last_of_run = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
        pro = np.cumsum(pro_w[order])[last_of_run]
        fpr = np.cumsum(fpr_w[order])[last_of_run]
    else:
        lo, hi = _score_range(pairs)
        pro_hist = np.zeros(n_bins)
        fpr_hist = np.zeros(n_bins)
        for components, count, amap in labelled():
            bins = _bin_index(amap, lo, hi, n_bins).ravel()
            pro_hist += np.bincount(bins, weights=weights(components, count).ravel(), minlength=n_bins)
            fpr_hist += np.bincount(bins, weights=(components == 0).ravel() / n_normal, minlength=n_bins)
        pro = np.cumsum(pro_hist[::-1])
        fpr = np.cumsum(fpr_hist[::-1])
    return _partial_area(np.r_[0.0, fpr], np.r_[0.0, pro], fpr_limit) / fpr_limit


def _partial_area(x: np.ndarray, y: np.ndarray, x_limit: float) -> float:
    """Trapezoid area under (x, y) for x in [0, x_limit]; x non-decreasing, from 0."""
    # Float sums may overshoot 1 by an ulp; clip so the last point is the full curve.
    x = np.minimum(x, 1.0)
    inside = np.searchsorted(x, x_limit, side="right")
    xs, ys = x[:inside], y[:inside]
    if inside < x.size and xs[-1] < x_limit:
        # Interpolate the curve where it crosses the limit.
        x0, x1, y0, y1 = x[inside - 1], x[inside], y[inside - 1], y[inside]
        y_at = y0 + (y1 - y0) * (x_limit - x0) / (x1 - x0)
        xs, ys = np.r_[xs, x_limit], np.r_[ys, y_at]
    return float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1])) / 2.0)


# ---------------------------------------------------------------------------------------
# Confidence intervals
# ---------------------------------------------------------------------------------------


def auc_of_samples(normal, anomalous, axis=-1):
    """ROC-AUC from the Mann-Whitney U of the two score samples (ties counted half, as
    `roc_auc`), vectorised over leading axes (scipy.stats.bootstrap's resamples here, the
    seeds and resamples of xray_flax/report/seed_table.py)."""
    normal, anomalous = np.moveaxis(normal, axis, -1), np.moveaxis(anomalous, axis, -1)
    n1, n0 = anomalous.shape[-1], normal.shape[-1]
    ranks = stats.rankdata(np.concatenate([anomalous, normal], -1), axis=-1)
    u = ranks[..., :n1].sum(-1) - n1 * (n1 + 1) / 2
    return u / (n1 * n0)


def _f1_of_samples(normal, anomalous, threshold, axis=-1):
    tp = np.sum(np.moveaxis(anomalous, axis, -1) >= threshold, -1)
    fp = np.sum(np.moveaxis(normal, axis, -1) >= threshold, -1)
    fn = anomalous.shape[axis] - tp
    denominator = 2 * tp + fp + fn
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)


def bootstrap_intervals(
    labels, scores, threshold: float, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> dict:
    """Percentile bootstrap intervals of the ROC-AUC and of the F1 at `threshold`:
    ``{"roc_auc": [low, high], "f1": [low, high]}``.

    Stratified: the normal and the anomalous scores are resampled separately
    (scipy.stats.bootstrap with the two classes as independent samples), so every resample
    keeps the test split's class counts and its ROC-AUC is defined. The threshold stays the
    one chosen on validation. None where a class has fewer than two scores (a resample of one
    score has no spread to measure)."""
    labels = _as_binary_labels(labels)
    scores = _as_scores(scores, labels.size)
    normal, anomalous = scores[labels == 0], scores[labels == 1]
    if normal.size < 2 or anomalous.size < 2:
        return {"roc_auc": None, "f1": None}
    out = {}
    for name, statistic in (
        ("roc_auc", auc_of_samples),
        ("f1", functools.partial(_f1_of_samples, threshold=float(threshold))),
    ):
        result = stats.bootstrap(
            (normal, anomalous),
            statistic,
            n_resamples=n_resamples,
            confidence_level=confidence,
            method="percentile",
            vectorized=True,
            batch=max(1, 20_000_000 // max(scores.size, 1)),
            random_state=np.random.default_rng(seed),
        )
        out[name] = [float(result.confidence_interval.low), float(result.confidence_interval.high)]
    return out


# ---------------------------------------------------------------------------------------
# Everything at once
# ---------------------------------------------------------------------------------------


def _json_number(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def evaluate_scores(
    labels,
    scores,
    val_labels=None,
    val_scores=None,
    masks=None,
    maps=None,
    fixed_threshold: float = 0.5,
    threshold_metric: str = "f1",
    fpr_limit: float = 0.3,
    exact_max_pixels: int = 4_000_000,
    n_bins: int = 65_536,
) -> dict:
    """All test metrics as a JSON-ready dict (plain floats/ints/lists; nan -> None).

    The threshold is chosen on the validation split (`select_threshold_with_rule`); when no
    validation split is given (or it has no sample) it is `fixed_threshold` and
    ``threshold_rule`` says ``"fixed_no_validation"`` (choosing it on the test split would
    leak labels).

    Keys: ``n``, ``n_anomalous``, ``n_normal``, ``roc_auc``, ``average_precision``,
    ``roc_auc_ci95`` and ``f1_ci95`` (stratified bootstrap 95 % intervals,
    `bootstrap_intervals`), ``threshold``, ``threshold_rule``, ``threshold_metric``, then at that threshold
    ``accuracy``, ``precision``, ``recall``, ``f1``, ``confusion_matrix`` (``[[tn, fp],
    [fn, tp]]``), ``tp``, ``fp``, ``tn``, ``fn``; ``fixed_threshold`` = the same metrics
    as a dict at `fixed_threshold`; with masks and maps also ``pixel_auroc``,
    ``pixel_auroc_error_bound``, ``aupro``, ``aupro_fpr_limit``. Pass masks only for
    images whose ground truth is known (an all-zero mask states "no anomalous pixel").

    A test split without both classes has ``roc_auc`` and ``average_precision`` None; one
    without labelled samples has every metric None (``n`` 0; the threshold is still chosen).
    """
    labels = _as_binary_labels(labels)
    scores = _as_scores(scores, labels.size)
    if (val_labels is None) != (val_scores is None):
        raise ValueError("give both val_labels and val_scores, or neither")

    if val_labels is not None:
        val_labels = _as_binary_labels(val_labels, "val_labels")
        val_scores = _as_scores(val_scores, val_labels.size, "val_scores")
    if val_labels is not None and val_labels.size:
        threshold, rule = select_threshold_with_rule(val_labels, val_scores, threshold_metric)
    else:
        threshold, rule = float(fixed_threshold), "fixed_no_validation"

    if labels.size:
        chosen = classification_metrics(labels, scores, threshold)
        fixed = classification_metrics(labels, scores, fixed_threshold)
        curves = {"roc_auc": roc_auc(labels, scores), "average_precision": average_precision(labels, scores)}
        intervals = bootstrap_intervals(labels, scores, threshold)
        curves["roc_auc_ci95"], curves["f1_ci95"] = intervals["roc_auc"], intervals["f1"]
    else:
        # No labelled test sample (e.g. scans without masks or CSV rows): nothing is
        # measured, but the threshold is still reported, for the predictions it makes.
        chosen = {key: None for key in classification_metrics([0], [0.0], threshold)} | {"threshold": threshold}
        fixed = dict(chosen, threshold=float(fixed_threshold))
        curves = {"roc_auc": None, "average_precision": None, "roc_auc_ci95": None, "f1_ci95": None}
    result = {
        "n": int(labels.size),
        "n_anomalous": int(labels.sum()),
        "n_normal": int(labels.size - labels.sum()),
        **curves,
        "threshold_rule": rule,
        "threshold_metric": threshold_metric,
        **chosen,
        "fixed_threshold": fixed,
    }
    if val_labels is not None:
        result["n_val"] = int(val_labels.size)
    if masks is not None and maps is not None:
        auc, bound = pixel_auroc_with_bound(masks, maps, exact_max_pixels, n_bins)
        result["pixel_auroc"] = auc
        result["pixel_auroc_error_bound"] = bound
        result["aupro"] = aupro(masks, maps, fpr_limit, exact_max_pixels, n_bins)
        result["aupro_fpr_limit"] = float(fpr_limit)
    return {
        key: ({k: _json_number(v) for k, v in value.items()} if isinstance(value, dict) else _json_number(value))
        for key, value in result.items()
    }
