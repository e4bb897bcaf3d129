"""How well a hidden-content map recovers the true hidden layer of a simulated painting:
correlation and SSIM of the recovered image with the truth, AUROC of the hidden mask).

Public functions and the source of each choice
- `recovery_metrics(recovered, truth, mask)` -> {"correlation", "ssim", "auroc",
  "average_precision": float or None,
  "reasons": {metric: why it is None}}:
  * correlation: Pearson r of the two maps over all pixels (`scipy.stats.pearsonr`, float64)
    [ours: invariant to the map's scale and offset, which differ between methods].
  * ssim: `skimage.metrics.structural_similarity` of the two maps after min-max scaling each to
    [0, 1], data_range=1, with the settings of Wang et al. (IEEE TIP 2004): Gaussian window
    sigma 1.5 (11 x 11), population covariances (gaussian_weights=True,
    use_sample_covariance=False) [paper: Wang et al. 2004; skimage documents these as the
    paper's]. Min-max scaling makes the score independent of the map's units, as correlation is.
  * auroc: `sklearn.metrics.roc_auc_score(mask, recovered)` over all pixels: how well the map
    ranks hidden pixels above the others, at every threshold [ours].
  * average_precision: `sklearn.metrics.average_precision_score(mask, recovered)`: the mean
    precision over the recall levels, which, unlike the AUROC, depends on how rare the hidden
    pixels are (chance = the hidden share of the pixels, about 0.1 here) [ours; docs/results.md].
  Degenerate inputs give None and a reason, never NaN: a constant map (correlation, SSIM),
  a constant truth (correlation, SSIM), a mask with one class only (AUROC, average precision), images smaller than
  the 11 x 11 window (SSIM).
- `mean_metrics(rows)` -> {metric: mean over the rows where it is not None, "<metric>_count":
  how many}: the per-method summary over paintings.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from scipy.stats import pearsonr
from skimage.metrics import structural_similarity
from sklearn.metrics import average_precision_score, roc_auc_score

METRICS = ("correlation", "ssim", "auroc", "average_precision")
SSIM_SIGMA = 1.5
# skimage's window for gaussian_weights=True: 2 * int(truncate * sigma + 0.5) + 1, truncate 3.5.
SSIM_WINDOW = 2 * int(3.5 * SSIM_SIGMA + 0.5) + 1


def _as_map(array, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D map [H, W], got shape {array.shape}")
    if array.dtype != bool and not np.all(np.isfinite(array)):
        raise ValueError(f"{name} holds {int(np.sum(~np.isfinite(array)))} non-finite values")
    return array


def _min_max(array: np.ndarray) -> np.ndarray:
    low, high = float(array.min()), float(array.max())
    return (array - low) / (high - low)


def recovery_metrics(recovered, truth, mask) -> dict:
    """Correlation, SSIM and AUROC of a recovered map [H, W] against the truth presence [H, W]
    and the hidden mask [H, W] bool; see the module text."""
    recovered = _as_map(recovered, "the recovered map").astype(np.float64)
    truth = _as_map(truth, "the true hidden layer").astype(np.float64)
    mask = _as_map(mask, "the hidden mask")
    if recovered.shape != truth.shape or recovered.shape != mask.shape:
        raise ValueError(
            f"recovered map {recovered.shape}, truth {truth.shape} and mask {mask.shape} must have the same shape"
        )
    if mask.dtype != bool:
        if not np.all(np.isin(mask, (0, 1))):
            raise ValueError("the hidden mask must be boolean (or 0/1)")
        mask = mask.astype(bool)
    out: dict = {name: None for name in METRICS}
    reasons: dict[str, str] = {}

    flat = []
    if np.ptp(recovered) == 0:
        flat.append("the recovered map is constant")
    if np.ptp(truth) == 0:
        flat.append("the true hidden layer is constant")
    if flat:
        reasons["correlation"] = reasons["ssim"] = " and ".join(flat)
    else:
        out["correlation"] = float(pearsonr(recovered.ravel(), truth.ravel()).statistic)
        if min(recovered.shape) < SSIM_WINDOW:
            reasons["ssim"] = f"the maps ({recovered.shape}) are smaller than the {SSIM_WINDOW} x {SSIM_WINDOW} window"
        else:
            out["ssim"] = float(
                structural_similarity(
                    _min_max(recovered),
                    _min_max(truth),
                    data_range=1.0,
                    gaussian_weights=True,
                    sigma=SSIM_SIGMA,
                    use_sample_covariance=False,
                )
            )

    hidden = int(mask.sum())
    if hidden == 0 or hidden == mask.size:
        reasons["auroc"] = f"the hidden mask has one class only ({'all' if hidden else 'no'} pixels hidden)"
        reasons["average_precision"] = reasons["auroc"]
    else:
        out["auroc"] = float(roc_auc_score(mask.ravel(), recovered.ravel()))
        out["average_precision"] = float(average_precision_score(mask.ravel(), recovered.ravel()))
    out["reasons"] = reasons
    return out


def mean_metrics(rows: Iterable[Mapping]) -> dict:
    """Means of each metric over the rows where it is not None, with "<name>_count"; None when
    no row has it."""
    rows = list(rows)
    out: dict = {}
    for name in METRICS:
        values = [float(row[name]) for row in rows if row.get(name) is not None]
        out[name] = float(np.mean(values)) if values else None
        out[f"{name}_count"] = len(values)
    return out
