"""Losses against independent references: scikit-image SSIM, NumPy focal loss."""

from __future__ import annotations

import glob
import os

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from skimage.metrics import structural_similarity

from xray_flax import losses
from xray_flax.detectors.draem.loss import draem_loss


def skimage_ssim(a: np.ndarray, b: np.ndarray) -> float:
    return structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=-1
    )


def test_ssim_matches_skimage_on_random_images():
    rng = np.random.default_rng(0)
    a = rng.random((3, 48, 40, 1)).astype(np.float32)
    b = np.clip(a + 0.2 * rng.standard_normal(a.shape), 0, 1).astype(np.float32)
    got = np.asarray(losses.ssim(jnp.asarray(a), jnp.asarray(b)))
    want = [skimage_ssim(a[i], b[i]) for i in range(3)]
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert abs(float(losses.ssim(jnp.asarray(a), jnp.asarray(a))[0]) - 1.0) < 1e-5


def test_ssim_matches_skimage_on_real_images(dtd_root):
    paths = sorted(glob.glob(os.path.join(dtd_root, "images", "*", "*.jpg")))[:2]
    imgs = [np.asarray(Image.open(p).convert("RGB").resize((96, 96)), np.float32) / 255.0 for p in paths]
    a = imgs[0]
    b = np.clip(a * 0.8 + 0.1 * imgs[1], 0, 1).astype(np.float32)
    got = float(losses.ssim(jnp.asarray(a[None]), jnp.asarray(b[None]))[0])
    assert abs(got - skimage_ssim(a, b)) < 1e-4


def numpy_focal(logits: np.ndarray, mask: np.ndarray, gamma: float, alpha=None) -> float:
    logits = logits.astype(np.float64)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p = p / p.sum(-1, keepdims=True)
    pt = np.where(mask == 1, p[..., 1], p[..., 0])
    weight = 1.0 if alpha is None else np.where(mask == 1, alpha, 1 - alpha)
    return float(np.mean(-weight * (1 - pt) ** gamma * np.log(pt)))


@pytest.mark.parametrize("gamma,alpha", [(2.0, None), (0.0, None), (2.0, 0.75)])
def test_focal_matches_numpy_formula(gamma, alpha):
    rng = np.random.default_rng(1)
    logits = 3 * rng.standard_normal((2, 16, 16, 2)).astype(np.float32)
    mask = (rng.random((2, 16, 16)) > 0.8).astype(np.float32)
    got = float(losses.focal(jnp.asarray(logits), jnp.asarray(mask), gamma=gamma, alpha=alpha))
    assert got == pytest.approx(numpy_focal(logits, mask, gamma, alpha), rel=1e-5)


def test_total_loss_combines_terms_with_lambda():
    rng = np.random.default_rng(2)
    clean = rng.random((2, 32, 32, 1)).astype(np.float32)
    rec = np.clip(clean + 0.1 * rng.standard_normal(clean.shape), 0, 1).astype(np.float32)
    logits = rng.standard_normal((2, 32, 32, 2)).astype(np.float32)
    mask = (rng.random((2, 32, 32, 1)) > 0.9).astype(np.float32)
    total, terms = draem_loss(
        jnp.asarray(clean), jnp.asarray(rec), jnp.asarray(logits), jnp.asarray(mask), ssim_weight=2.0
    )
    ssim = np.mean([skimage_ssim(clean[i], rec[i]) for i in range(2)])
    l2 = np.mean((clean - rec) ** 2)
    focal = numpy_focal(logits, mask[..., 0], 2.0)
    assert float(total) == pytest.approx(2 * (1 - ssim) + l2 + focal, abs=2e-4)
    assert float(terms["l2"]) == pytest.approx(l2, rel=1e-5)
