"""Recovery metrics of hidden-content maps against independent references (NumPy, dm-pix,
a pairwise AUROC) and their degenerate cases."""

from __future__ import annotations

import dm_pix
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage
from skimage.metrics import structural_similarity

from xray_flax.hidden_art.metrics import mean_metrics, recovery_metrics


def _maps(seed=0, size=48):
    rng = np.random.default_rng(seed)
    truth = ndimage.gaussian_filter(rng.uniform(size=(size, size)), 3.0)
    truth = (truth - truth.min()) / (truth.max() - truth.min())
    recovered = 3.0 * truth + 0.2 * rng.standard_normal(truth.shape) + 7.0
    return recovered, truth, truth > 0.5


def _pairwise_auroc(scores, labels):
    """P(score of a hidden pixel > score of another), ties counted 1/2 (Mann-Whitney)."""
    pos, neg = scores[labels], scores[~labels]
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return (greater + 0.5 * ties) / (pos.size * neg.size)


def test_metrics_match_independent_references():
    recovered, truth, mask = _maps()
    got = recovery_metrics(recovered, truth, mask)
    assert got["reasons"] == {}
    a, b = recovered - recovered.mean(), truth - truth.mean()
    np.testing.assert_allclose(got["correlation"], np.sum(a * b) / np.sqrt(np.sum(a * a) * np.sum(b * b)), rtol=1e-10)
    np.testing.assert_allclose(got["correlation"], np.corrcoef(recovered.ravel(), truth.ravel())[0, 1], rtol=1e-10)
    scaled = (recovered - recovered.min()) / (recovered.max() - recovered.min())
    want_ssim = structural_similarity(
        scaled, truth, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    np.testing.assert_allclose(got["ssim"], want_ssim, rtol=1e-10)
    # dm-pix is an independent implementation of the same Gaussian SSIM (11 x 11, sigma 1.5); it
    # averages over the valid region only, skimage crops (win - 1) / 2 = 5 pixels at each edge.
    pix = dm_pix.ssim(jnp.asarray(scaled[..., None], jnp.float32), jnp.asarray(truth[..., None], jnp.float32))
    np.testing.assert_allclose(got["ssim"], float(pix), atol=2e-3)
    np.testing.assert_allclose(got["auroc"], _pairwise_auroc(recovered.ravel(), mask.ravel()), rtol=1e-10)
    np.testing.assert_allclose(
        got["average_precision"], _average_precision(recovered.ravel(), mask.ravel()), rtol=1e-10
    )


def _average_precision(scores, labels):
    """Mean over the hidden pixels of the precision among the pixels scored at least as high
    (scores without ties)."""
    order = np.argsort(-scores)
    hits = labels[order]
    precision = np.cumsum(hits) / np.arange(1, hits.size + 1)
    return precision[hits].mean()


def test_metrics_are_invariant_to_the_maps_units_and_perfect_on_the_truth():
    recovered, truth, mask = _maps(1)
    base = recovery_metrics(recovered, truth, mask)
    rescaled = recovery_metrics(0.01 * recovered - 4.0, truth, mask)
    for name in ("correlation", "ssim", "auroc"):
        np.testing.assert_allclose(rescaled[name], base[name], rtol=1e-6)
    perfect = recovery_metrics(truth, truth, mask)
    assert perfect["correlation"] == pytest.approx(1.0) and perfect["ssim"] == pytest.approx(1.0)
    assert perfect["auroc"] == pytest.approx(1.0)
    inverted = recovery_metrics(-truth, truth, mask)
    assert inverted["correlation"] == pytest.approx(-1.0) and inverted["auroc"] == pytest.approx(0.0)


def test_degenerate_inputs_give_none_with_a_reason():
    recovered, truth, mask = _maps(2)
    flat = recovery_metrics(np.full_like(recovered, 0.3), truth, mask)
    assert flat["correlation"] is None and flat["ssim"] is None
    assert "recovered map is constant" in flat["reasons"]["correlation"]
    assert flat["auroc"] == pytest.approx(0.5)  # a constant map ranks nothing: chance, not undefined
    no_truth = recovery_metrics(recovered, np.zeros_like(truth), np.zeros_like(mask))
    assert no_truth["correlation"] is None and "true hidden layer is constant" in no_truth["reasons"]["ssim"]
    assert no_truth["auroc"] is None and "one class" in no_truth["reasons"]["auroc"]
    all_hidden = recovery_metrics(recovered, truth, np.ones_like(mask))
    assert all_hidden["auroc"] is None and "all pixels hidden" in all_hidden["reasons"]["auroc"]
    small = recovery_metrics(recovered[:8, :8], truth[:8, :8], mask[:8, :8])
    assert small["ssim"] is None and "smaller than the 11 x 11 window" in small["reasons"]["ssim"]
    assert small["correlation"] is not None
    for row in (flat, no_truth, all_hidden, small):
        assert not any(isinstance(v, float) and np.isnan(v) for v in row.values())


def test_bad_inputs_raise_clear_errors():
    recovered, truth, mask = _maps(3)
    with pytest.raises(ValueError, match="same shape"):
        recovery_metrics(recovered[1:], truth, mask)
    with pytest.raises(ValueError, match="recovered map must be a 2-D map"):
        recovery_metrics(recovered[None], truth, mask)
    bad = recovered.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="recovered map holds 1 non-finite"):
        recovery_metrics(bad, truth, mask)
    with pytest.raises(ValueError, match="boolean"):
        recovery_metrics(recovered, truth, truth)
    assert (
        recovery_metrics(recovered, truth, mask.astype(np.uint8))["auroc"]
        == recovery_metrics(recovered, truth, mask)["auroc"]
    )


def test_mean_metrics_skip_missing_values():
    rows = [
        {"correlation": 0.5, "ssim": None, "auroc": 0.9},
        {"correlation": 0.7, "ssim": 0.2, "auroc": None},
        {"correlation": None, "ssim": None, "auroc": 0.7},
    ]
    got = mean_metrics(rows)
    assert got["correlation"] == pytest.approx(0.6) and got["correlation_count"] == 2
    assert got["ssim"] == pytest.approx(0.2) and got["ssim_count"] == 1
    assert got["auroc"] == pytest.approx(0.8) and got["auroc_count"] == 2
    empty = mean_metrics([])
    assert empty == {
        "correlation": None,
        "correlation_count": 0,
        "ssim": None,
        "ssim_count": 0,
        "auroc": None,
        "auroc_count": 0,
        "average_precision": None,
        "average_precision_count": 0,
    }
