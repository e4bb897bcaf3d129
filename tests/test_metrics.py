"""Metrics against scikit-learn / SciPy references and hand-worked cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import ndimage
from sklearn import metrics as skm

from xray_flax import evaluation_config, metrics


def _random_case(seed, n=200, tie_levels=None, positive_rate=0.3):
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < positive_rate).astype(int)
    scores = rng.normal(size=n) + 1.2 * labels
    if tie_levels:
        # Quantise so many scores tie, across both classes.
        scores = np.round(scores * tie_levels) / tie_levels
    return labels, scores


CASES = [
    _random_case(0),
    _random_case(1, tie_levels=2),
    _random_case(2, n=37, tie_levels=1),
    _random_case(3, n=1000, positive_rate=0.05),
    (np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.5, 0.5])),  # all tied
    (np.array([0, 0, 1, 1, 0, 1]), np.array([0.1, 0.4, 0.35, 0.8, 0.4, 0.4])),
]


@pytest.mark.parametrize("labels,scores", CASES)
def test_curve_metrics_match_sklearn(labels, scores):
    assert metrics.roc_auc(labels, scores) == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-9)
    assert metrics.average_precision(labels, scores) == pytest.approx(
        skm.average_precision_score(labels, scores), abs=1e-9
    )


@pytest.mark.parametrize("labels,scores", CASES)
def test_classification_metrics_match_sklearn(labels, scores):
    for threshold in [np.median(scores), scores.min(), scores.max(), scores.max() + 1, 0.4]:
        ours = metrics.classification_metrics(labels, scores, threshold)
        predicted = (scores >= threshold).astype(int)
        assert ours["accuracy"] == pytest.approx(skm.accuracy_score(labels, predicted), abs=1e-12)
        assert ours["precision"] == pytest.approx(skm.precision_score(labels, predicted, zero_division=0), abs=1e-12)
        assert ours["recall"] == pytest.approx(skm.recall_score(labels, predicted, zero_division=0), abs=1e-12)
        assert ours["f1"] == pytest.approx(skm.f1_score(labels, predicted, zero_division=0), abs=1e-12)
        assert ours["confusion_matrix"] == skm.confusion_matrix(labels, predicted, labels=[0, 1]).tolist()


def test_missing_class_gives_nan_and_zero_division_is_zero():
    assert math.isnan(metrics.roc_auc([0, 0, 0], [0.1, 0.2, 0.3]))
    assert math.isnan(metrics.average_precision([0, 0], [0.1, 0.2]))
    assert metrics.average_precision([1, 1], [0.1, 0.2]) == 1.0
    out = metrics.classification_metrics([0, 0], [0.1, 0.2], threshold=0.9)
    assert (out["precision"], out["recall"], out["f1"], out["accuracy"]) == (0.0, 0.0, 0.0, 1.0)


def test_labels_are_validated():
    with pytest.raises(ValueError, match="0 \\(normal\\) or 1"):
        metrics.roc_auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="3 values but labels have 2"):
        metrics.roc_auc([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="nan"):
        metrics.roc_auc([0, 1], [0.1, np.nan])


def _best_f1_brute_force(labels, scores):
    return max(skm.f1_score(labels, (scores >= t).astype(int), zero_division=0) for t in np.unique(scores))


@pytest.mark.parametrize("labels,scores", CASES)
def test_selected_threshold_reaches_best_f1(labels, scores):
    threshold = metrics.select_threshold(labels, scores)
    f1 = skm.f1_score(labels, (scores >= threshold).astype(int), zero_division=0)
    assert f1 == pytest.approx(_best_f1_brute_force(labels, scores), abs=1e-12)


def test_threshold_on_crafted_scores_is_midpoint_of_the_gap():
    labels = np.array([0, 0, 0, 1, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.6, 0.55, 0.7, 0.9])
    # Best F1: flag {0.55, 0.6, 0.7, 0.9} -> tp 3, fp 1, F1 6/7 (flagging only {0.6, 0.7,
    # 0.9} gives 1.0!). The perfect cut lies between 0.55 and 0.6.
    threshold, rule = metrics.select_threshold_with_rule(labels, scores)
    assert rule == "argmax_f1"
    assert threshold == pytest.approx(0.575)


def test_threshold_ties_prefer_the_highest_threshold():
    # Flagging {0.9} or {0.9, 0.8, 0.7, 0.6} both give F1 = 2/3 (tp1 fp0 fn1 vs tp2 fp2 fn0).
    labels = np.array([1, 0, 0, 1, 0])
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.1])
    f1_top = skm.f1_score(labels, scores >= 0.9)
    f1_four = skm.f1_score(labels, scores >= 0.6)
    assert f1_top == pytest.approx(f1_four) == pytest.approx(2 / 3)
    assert metrics.select_threshold(labels, scores) == pytest.approx(0.85)


def test_threshold_with_only_normals_is_just_above_the_max():
    scores = np.array([0.2, 0.9, 0.4])
    threshold, rule = metrics.select_threshold_with_rule([0, 0, 0], scores)
    assert rule == "no_anomalies"
    assert threshold > 0.9 and threshold == np.nextafter(0.9, 1.0)
    assert not (scores >= threshold).any()


def test_threshold_with_only_anomalies_flags_everything():
    scores = np.array([0.2, 0.9, 0.4])
    threshold, rule = metrics.select_threshold_with_rule([1, 1, 1], scores)
    assert rule == "no_normals"
    assert threshold == 0.2
    assert (scores >= threshold).all()


def test_youden_threshold():
    labels = np.array([0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.5, 0.4, 0.6, 0.7])
    # Youden J: cut at 0.6 -> tpr 2/3, fpr 0 (J 0.667); at 0.4 -> tpr 1, fpr 0.5 (J 0.5).
    assert metrics.select_threshold(labels, scores, metric="youden") == pytest.approx(0.55)
    with pytest.raises(ValueError, match="unknown threshold metric"):
        metrics.select_threshold(labels, scores, metric="accuracy")


# --- image scores ------------------------------------------------------------------------


@pytest.mark.parametrize("filter_size", [1, 3, 21])
def test_image_scores_match_scipy_uniform_filter(filter_size):
    rng = np.random.default_rng(0)
    maps = rng.random((3, 40, 33)).astype(np.float32)
    maps[1, 0:5, 0:5] = 5.0  # a corner hot spot: border handling decides the score
    maps[2, 18:22, 14:18] = 3.0
    expected = [ndimage.uniform_filter(m.astype(np.float64), filter_size, mode="constant").max() for m in maps]
    got = np.asarray(metrics.image_scores(maps, filter_size))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.mark.parametrize(("filter_size", "top_k"), [(1, 5), (3, 50), (7, 2000)])
def test_image_scores_top_k_mean_matches_numpy(filter_size, top_k):
    rng = np.random.default_rng(1)
    maps = rng.random((2, 30, 40)).astype(np.float32)
    maps[0, 3:6, 30:34] = 4.0
    expected = []
    for m in maps:
        filtered = ndimage.uniform_filter(m.astype(np.float64), filter_size, mode="constant").ravel()
        expected.append(np.sort(filtered)[::-1][: min(top_k, filtered.size)].mean())
    got = np.asarray(metrics.image_scores(maps, filter_size, top_k))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # k = 1 is the max; k below 1 is refused.
    np.testing.assert_array_equal(metrics.image_scores(maps, filter_size, 1), metrics.image_scores(maps, filter_size))
    with pytest.raises(ValueError, match="top_k"):
        metrics.image_scores(maps, filter_size, 0)


def test_image_scores_divide_by_full_window_at_borders():
    # count_include_pad=True: a single hot pixel in the corner is averaged over 9 cells, of
    # which only 4 lie inside the image; the divisor is still 9.
    maps = np.zeros((1, 6, 6, 1), np.float32)
    maps[0, 0, 0, 0] = 9.0
    assert float(metrics.image_scores(maps, 3)[0]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="odd"):
        metrics.image_scores(maps, 4)


def test_score_filter_size_scales_with_patch():
    assert evaluation_config.resolve_score_filter_size(0, 256) == 21
    assert evaluation_config.resolve_score_filter_size(None, 512) == 43  # 42 made odd
    assert evaluation_config.resolve_score_filter_size(0, 128) == 11  # round(10.5) = 10 -> 11
    assert evaluation_config.resolve_score_filter_size(7, 512) == 7
    with pytest.raises(ValueError):
        evaluation_config.resolve_score_filter_size(8, 512)
    assert evaluation_config.resolve_stride(0, 0.5, 512) == 256
    assert evaluation_config.resolve_stride(100, 0.5, 512) == 100
    cfg = evaluation_config.defaults()
    assert cfg.timing_batches >= 20 and cfg.fixed_threshold == 0.5 and cfg.predict.window == "hann"


# --- pixel metrics -----------------------------------------------------------------------


def _pixel_case(seed=0, n=4, size=24):
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), np.float32)
    masks[0, 3:8, 3:10] = 1
    masks[1, 10:20, 2:5] = 1
    masks[1, 1:3, 18:23] = 1
    masks[2, 12, 12] = 1
    maps = rng.random((n, size, size)).astype(np.float32) * 0.6 + masks * rng.random((n, size, size)) * 0.5
    return masks, maps


def test_pixel_auroc_exact_and_binned():
    masks, maps = _pixel_case()
    expected = skm.roc_auc_score(masks.ravel(), maps.ravel())
    assert metrics.pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-9)
    binned, bound = metrics.pixel_auroc_with_bound(masks, maps, exact_max_pixels=0, n_bins=256)
    assert 0 < bound < 0.01
    assert abs(binned - expected) <= bound + 1e-12
    # Scores already on the bin grid: the binned result is exact.
    quantised = np.floor(maps * 255) / 255
    quantised[0, 0, 0], quantised[0, 0, 1] = 0.0, 1.0  # span [0, 1] so bins align
    exact = skm.roc_auc_score(masks.ravel(), quantised.ravel())
    assert metrics.pixel_auroc(masks, quantised, exact_max_pixels=0, n_bins=255) == pytest.approx(exact, abs=1e-9)


def _aupro_brute_force(masks, maps, fpr_limit):
    """Independent reference: loop over thresholds, components counted per image."""
    region_masks = []
    for i, mask in enumerate(masks):
        components, count = ndimage.label(mask > 0.5, structure=np.ones((3, 3)))
        region_masks += [(i, components == k) for k in range(1, count + 1)]
    normal = masks < 0.5
    points = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        above = maps >= t
        fpr = above[normal].mean()
        pro = np.mean([above[i][region].mean() for i, region in region_masks])
        points.append((fpr, pro))
    xs, ys = np.array(points).T
    grid = np.linspace(0, fpr_limit, 200001)
    return np.trapezoid(np.interp(grid, xs, ys), grid) / fpr_limit


def test_aupro_matches_brute_force_and_extremes():
    masks, maps = _pixel_case(n=3, size=16)
    expected = _aupro_brute_force(masks, maps, 0.3)
    assert metrics.aupro(masks, maps, 0.3) == pytest.approx(expected, abs=1e-6)
    binned = metrics.aupro(masks, maps, 0.3, exact_max_pixels=0, n_bins=1 << 16)
    assert binned == pytest.approx(expected, abs=1e-3)
    assert metrics.aupro(masks, masks * 0.5 + 0.25, 0.3) == pytest.approx(1.0)
    assert metrics.aupro(masks, 1.0 - masks, 0.3) == pytest.approx(0.0)


def test_aupro_weights_regions_equally_not_pixels():
    # One big region fully detected, one small region missed: pixel recall is ~0.97 but
    # PRO is 0.5 at every threshold that keeps the FPR at 0.
    mask = np.zeros((1, 20, 20), np.float32)
    mask[0, 0:10, 0:10] = 1
    mask[0, 15:18, 15:18] = 1
    amap = np.zeros_like(mask)
    amap[0, 0:10, 0:10] = 1.0
    # FPR jumps from 0 to 1 at the single low threshold, linearly interpolated.
    value = metrics.aupro(mask, amap, fpr_limit=0.3)
    # curve: (0,0) -> (0, 0.5) -> (1, 1); area to 0.3 = 0.3 * 0.5 + 0.3**2 / 2 * 0.5
    assert value == pytest.approx((0.3 * 0.5 + 0.5 * 0.3 * 0.3 * 0.5) / 0.3)


def test_evaluate_scores_is_json_ready_and_consistent():
    labels, scores = _random_case(5, n=120)
    val_labels, val_scores = _random_case(6, n=80)
    masks, maps = _pixel_case()
    out = metrics.evaluate_scores(labels, scores, val_labels, val_scores, masks=masks, maps=maps)
    json.dumps(out, allow_nan=False)
    assert out["threshold"] == metrics.select_threshold(val_labels, val_scores)
    assert out["roc_auc"] == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-9)
    predicted = scores >= out["threshold"]
    assert out["f1"] == pytest.approx(skm.f1_score(labels, predicted), abs=1e-12)
    assert out["confusion_matrix"] == skm.confusion_matrix(labels, predicted).tolist()
    fixed = out["fixed_threshold"]
    assert fixed["threshold"] == 0.5
    assert fixed["accuracy"] == pytest.approx(skm.accuracy_score(labels, scores >= 0.5))
    assert out["pixel_auroc"] == pytest.approx(skm.roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-9)
    assert 0 < out["aupro"] <= 1


def test_evaluate_scores_one_class_test_split_gives_none_not_nan():
    out = metrics.evaluate_scores([0, 0, 0], [0.1, 0.2, 0.3], [0, 1], [0.1, 0.9])
    assert out["roc_auc"] is None and out["average_precision"] is None
    json.dumps(out, allow_nan=False)
    out = metrics.evaluate_scores([0, 1], [0.1, 0.9])
    assert out["threshold_rule"] == "fixed_no_validation" and out["threshold"] == 0.5


def test_pixel_metrics_accept_sequences_of_differently_sized_images():
    rng = np.random.default_rng(3)
    masks = [rng.random((10, 12)) < 0.2, (rng.random((7, 9, 1)) < 0.3).astype(np.float32)]
    maps = [rng.random((10, 12)), rng.random((7, 9, 1))]
    labels = np.concatenate([np.ravel(m) > 0.5 for m in masks])
    scores = np.concatenate([np.ravel(m) for m in maps])
    assert metrics.pixel_auroc(masks, maps) == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-9)
    assert metrics.aupro(masks, maps) == pytest.approx(
        metrics.aupro(masks, maps, exact_max_pixels=0, n_bins=1 << 20), abs=1e-3
    )
    with pytest.raises(ValueError, match=r"masks\[1\] is \(7, 9\) but maps\[1\] is \(9, 7\)"):
        metrics.pixel_auroc(masks, [maps[0], np.zeros((9, 7))])


# ---------------------------------------------------------------------------------------
# Bootstrap intervals


def _tied_scores(n=300, seed=0):
    rng = np.random.default_rng(seed)
    labels = (rng.uniform(size=n) < 0.25).astype(int)
    return labels, np.round(rng.normal(size=n) + 0.8 * labels, 1)  # rounded: many ties


def test_bootstrap_auc_statistic_equals_sklearn_with_ties():
    labels, scores = _tied_scores()
    auc = metrics.auc_of_samples(scores[labels == 0][None], scores[labels == 1][None])[0]
    assert auc == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-12)


def test_bootstrap_intervals_match_a_stratified_sklearn_bootstrap():
    labels, scores = _tied_scores()
    threshold = 0.5
    got = metrics.bootstrap_intervals(labels, scores, threshold)
    rng = np.random.default_rng(1)
    normal, anomalous = np.where(labels == 0)[0], np.where(labels == 1)[0]
    aucs, f1s = [], []
    for _ in range(2000):
        idx = np.concatenate([rng.choice(normal, normal.size), rng.choice(anomalous, anomalous.size)])
        aucs.append(skm.roc_auc_score(labels[idx], scores[idx]))
        f1s.append(skm.f1_score(labels[idx], scores[idx] >= threshold))
    # Two Monte-Carlo estimates of the same percentiles: agree to their sampling noise.
    np.testing.assert_allclose(got["roc_auc"], np.percentile(aucs, [2.5, 97.5]), atol=0.012)
    np.testing.assert_allclose(got["f1"], np.percentile(f1s, [2.5, 97.5]), atol=0.02)
    point = metrics.classification_metrics(labels, scores, threshold)["f1"]
    assert got["roc_auc"][0] < skm.roc_auc_score(labels, scores) < got["roc_auc"][1]
    assert got["f1"][0] < point < got["f1"][1]
    assert got == metrics.bootstrap_intervals(labels, scores, threshold)  # seeded


def test_bootstrap_intervals_need_both_classes_and_reach_the_report():
    assert metrics.bootstrap_intervals([0, 0, 0], [0.1, 0.2, 0.3], 0.5) == {"roc_auc": None, "f1": None}
    labels, scores = _tied_scores(n=120)
    result = metrics.evaluate_scores(labels, scores, labels, scores)
    assert result["roc_auc_ci95"][0] < result["roc_auc"] < result["roc_auc_ci95"][1]
    assert len(result["f1_ci95"]) == 2
    # A wider sample gives a narrower interval.
    wide = metrics.bootstrap_intervals(*_tied_scores(n=3000), 0.5)["roc_auc"]
    assert wide[1] - wide[0] < result["roc_auc_ci95"][1] - result["roc_auc_ci95"][0]
