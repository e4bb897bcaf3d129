"""Score normalisation: fitted on normal validation tiles, invariant to the scale of the raw map."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from configs import tiny
from xray_flax import detectors, metrics, normalization, parallel, scoring, steps
from xray_flax.data import pipeline
from xray_flax.detectors.base import run_fit
from xray_flax.inference import Inferencer
from xray_flax.normalization import IDENTITY
from xray_flax.report import regions


def test_fit_maps_the_normal_centre_to_0_and_the_normal_quantile_to_half():
    rng = np.random.default_rng(0)
    medians, scores = rng.normal(3.0, 0.1, 200), rng.normal(5.0, 0.5, 200)
    norm = normalization.fit(medians, scores, 0.99)
    assert norm.rule == normalization.NORMAL_QUANTILE_RULE
    np.testing.assert_allclose(norm.apply(np.median(medians)), 0.0, atol=1e-12)
    np.testing.assert_allclose(norm.apply(np.quantile(scores, 0.99)), 0.5, rtol=1e-12)
    assert normalization.ScoreNormalization.from_json(norm.to_json()) == norm


def test_fit_refuses_empty_or_nonfinite_normal_statistics():
    with pytest.raises(ValueError, match="needs normal tiles"):
        normalization.fit([], [], 0.99)
    with pytest.raises(ValueError, match="non-finite"):
        normalization.fit([0.0, np.nan], [1.0, 2.0], 0.99)
    with pytest.raises(ValueError, match="quantile"):
        normalization.fit([0.0], [1.0], 0.0)


@pytest.fixture(scope="module")
def fitted_highpass(tmp_path_factory):
    """The high-pass reference fitted on the tiny simulated data, and its splits."""
    config = tiny.get_config("highpass")
    config.data.simulated.cache_dir = str(tmp_path_factory.getbasetemp() / "simulated")
    mesh = parallel.make_mesh(config.mesh)
    detector = detectors.build(config)
    splits = pipeline.prepare_splits(config.data, None)
    variables = steps.init_variables(detector, jax.random.key(0), 32, 1, mesh)
    batches = (parallel.global_batch(b, mesh) for b in pipeline.iterate_fit_batches(splits, config.data, batch_size=8))
    return config, mesh, detector, splits, run_fit(detector, variables, batches)


def test_regions_and_fixed_threshold_do_not_change_when_the_map_is_scaled_by_1000(fitted_highpass):
    config, mesh, detector, splits, variables = fitted_highpass
    scaled = dataclasses.replace(detector, anomaly_map=lambda v, x: {"map": 1000.0 * detector.anomaly_map(v, x)["map"]})
    results = []
    for det in (detector, scaled):
        infer = Inferencer(det, variables, mesh, 16, scoring.score_filter_size(config))
        raw_val = scoring.score_split(infer, splits, "val", config)
        norm = scoring.fit_normalization(det, config, raw_val)
        infer.set_variables(variables, norm)
        test = scoring.score_split(infer, splits, "test", config)
        image = np.concatenate(
            [b["image"] for b in pipeline.iterate_eval_batches(splits, "test", config.data, batch_size=16)]
        )
        maps = np.concatenate([infer(image[i : i + 16])["map"] for i in range(0, len(image), 16)])
        results.append((norm, test, maps))
    (norm_a, test_a, maps_a), (norm_b, test_b, maps_b) = results
    assert norm_b.scale == pytest.approx(norm_a.scale / 1000.0, rel=1e-5)
    np.testing.assert_allclose(maps_b, maps_a, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(test_b.scores, test_a.scores, rtol=1e-4, atol=1e-5)
    labels = test_a.labels >= 0
    fixed_a = metrics.classification_metrics(test_a.labels[labels], test_a.scores[labels], 0.5)
    fixed_b = metrics.classification_metrics(test_b.labels[labels], test_b.scores[labels], 0.5)
    assert fixed_a == fixed_b and fixed_a["tp"] + fixed_a["fp"] > 0  # the fixed cut flags something
    # Regions of a stitched-size map (all test tiles side by side) at the fixed threshold.
    wide_a, wide_b = (np.concatenate(list(m), axis=1) for m in (maps_a, maps_b))
    found_a, found_b = regions.find_regions(wide_a, 0.5, 4), regions.find_regions(wide_b, 0.5, 4)
    assert found_a and [(r.x0, r.y0, r.x1, r.y1, r.area) for r in found_a] == [
        (r.x0, r.y0, r.x1, r.y1, r.area) for r in found_b
    ]


def test_auto_is_the_identity_for_bounded_maps(fitted_highpass):
    config, _, detector, _, _ = fitted_highpass
    bounded = dataclasses.replace(detector, bounded_map=True)
    assert scoring.fit_normalization(bounded, config, None) is IDENTITY
