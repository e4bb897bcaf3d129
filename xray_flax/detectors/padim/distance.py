"""PaDiM's embedding, streaming Gaussian statistics and Mahalanobis map (pure functions, NHWC).

    embedding(features, ...)        taps -> channel subset -> nearest-upsampled to the first tap -> concat
    batch_moments(x, valid)         one batch's count, mean and centred scatter per position (jit, float32)
    merge_moments(a, b)             Chan et al.'s parallel merge of two (count, mean, scatter) triples
    merge_moments_host(a, b)        the same in float64 on the host, block by block (bounded temporaries)
    pool_positions(count, mean, scatter)  the P per-position triples merged into one (gaussian='shared')
    whitening(count, mean, scatter) covariance (ddof 1) + ridge I -> Cholesky -> L^-1 per position
    mahalanobis(x, mean, whitening) |L^-1 (x - mean)| per position

Sources: [paper] Defard, Setkanov, Loesch, Audigier, "PaDiM: a Patch Distribution Modeling
Framework for Anomaly Detection and Localization", ICPR-W 2021; [original code]
xiahaifeng1995/PaDiM-Anomaly-Detection-Localization-master; [anomalib] anomalib 2.7
models/image/padim and components/stats/multi_variate_gaussian.py; [ours] this project.

The statistics are accumulated in one pass with a constant-size state: per batch the count n_b,
the mean m_b and the centred scatter S_b = sum (x - m_b)(x - m_b)^T (centring per batch keeps
float32 sums of products accurate), then merged (Chan, Golub & LeVeque 1979):

    n = n_a + n_b,  delta = m_b - m_a,  m = m_a + delta n_b / n,  S = S_a + S_b + delta delta^T n_a n_b / n

anomalib and the original code instead keep every embedding ([N, d, HW] floats) and call
np.cov / torch once. The covariance is S / (n - 1) + ridge I [paper, original code: ridge
0.01; anomalib adds a further 1e-5 I]. The inverse is never formed: Sigma = L L^T (Cholesky),
and the stored L^-1 gives the squared distance |L^-1 (x - mu)|^2 = (x - mu)^T Sigma^-1 (x - mu),
never negative from rounding (anomalib clamps the product with the explicit inverse at 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from xray_flax import errors
from xray_flax.nn.anomaly_maps import upsample_nearest


def channel_subset(total: int, d: int, seed: int) -> np.ndarray:
    """d of the `total` concatenated channels, drawn without replacement with a fixed seed,
    sorted (the order does not change a Mahalanobis distance). [paper: random dimensionality
    reduction; anomalib: torch.randperm(total)[:d]; ours: NumPy's generator, so the subset
    differs from anomalib's draw]"""
    if not 0 < d <= total:
        raise errors.ConfigError(f"config.model.n_features={d} must be between 1 and the {total} channels of the taps")
    return np.sort(np.random.default_rng(seed).choice(total, size=d, replace=False)).astype(np.int32)


def split_subset(subset: np.ndarray, channels: Sequence[int]) -> list[np.ndarray]:
    """The subset as per-tap channel indices (taps concatenated in order)."""
    bounds = np.cumsum([0, *channels])
    return [subset[(subset >= lo) & (subset < hi)] - lo for lo, hi in zip(bounds[:-1], bounds[1:])]


def avg_pool(x: jax.Array, factor: int) -> jax.Array:
    """Non-overlapping factor x factor mean (the feature-resolution lever). [ours]"""
    if factor == 1:
        return x
    b, h, w, c = x.shape
    if h % factor or w % factor:
        raise errors.ConfigError(f"config.model.feature_pool={factor} does not divide the {h}x{w} feature map")
    return x.reshape(b, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


def embedding(
    features: dict[str, jax.Array], taps: Sequence[str], per_tap: Sequence[np.ndarray], pool: int = 1
) -> jax.Array:
    """[B, h0, w0, d]: each tap's chosen channels, nearest-upsampled to the first tap's size,
    concatenated in tap order [anomalib generate_embedding: nearest; original: the same by
    unfold], then optionally average-pooled by `pool` [ours]. Selecting before upsampling
    equals anomalib's select-after (upsampling acts per channel) and moves less memory."""
    size = features[taps[0]].shape[1:3]
    parts = [
        upsample_nearest(features[tap][..., idx].astype(jnp.float32), size)
        for tap, idx in zip(taps, per_tap)
        if len(idx)
    ]
    return avg_pool(jnp.concatenate(parts, axis=-1), pool)


def batch_moments(x: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(count, mean [P, d], centred scatter [P, d, d]) of x [B, P, d] over the rows with
    valid = 1 (padding rows weigh 0). float32; count 0 gives mean 0 and scatter 0."""
    w = valid.astype(jnp.float32)
    count = jnp.sum(w)
    safe = jnp.maximum(count, 1.0)
    mean = jnp.einsum("b,bpd->pd", w, x) / safe
    # One correction pass (the corrected two-pass algorithm): the float32 rounding of the first
    # mean is removed to first order. [Chan, Golub & LeVeque 1983]
    mean = mean + jnp.einsum("b,bpd->pd", w, x - mean[None]) / safe
    centred = (x - mean[None]) * w[:, None, None]
    scatter = jnp.einsum("bpi,bpj->pij", centred, centred, precision=jax.lax.Precision.HIGHEST)
    return count, mean, scatter


def merge_moments(a: tuple, b: tuple) -> tuple:
    """Chan et al.'s merge of (count, mean, scatter) triples, in the arrays' own precision
    (NumPy float64 on the host, or jnp float32 on device). Works for either as the first
    argument's library: only arithmetic operators. A batch with count 0 leaves `a` as it is."""
    n_a, m_a, s_a = a
    n_b, m_b, s_b = b
    n = n_a + n_b
    safe = n + (n == 0)  # no division by zero when both are empty
    delta = m_b - m_a
    mean = m_a + delta * (n_b / safe)
    scatter = s_a + s_b + (delta[..., :, None] * delta[..., None, :]) * (n_a * n_b / safe)
    return n, mean, scatter


def merge_moments_host(a: tuple, b: tuple, block: int = 256) -> tuple:
    """`merge_moments` into a new float64 state on the host with bounded temporaries: the
    scatter is built `block` positions at a time and b's (float32) scatter is added without a
    float64 copy. Extra memory ~ one block, not [P, d, d]; same arithmetic."""
    n_a, m_a, s_a = a
    n_b, m_b, s_b = b
    n = np.float64(n_a) + np.float64(n_b)
    safe = n + (n == 0)
    delta = np.asarray(m_b, np.float64) - m_a
    mean = m_a + delta * (np.float64(n_b) / safe)
    coef = np.float64(n_a) * np.float64(n_b) / safe
    scatter = np.empty(np.shape(s_a), np.float64)
    for start in range(0, scatter.shape[0], block):
        part = slice(start, start + block)
        np.add(s_a[part], s_b[part], out=scatter[part])
        d = delta[part]
        scatter[part] += (d[:, :, None] * coef) * d[:, None, :]
    return n, mean, scatter


def pool_positions(count, mean, scatter, block: int = 256) -> tuple:
    """One (count, mean [1, d], scatter [1, d, d]) for all positions: the P per-position triples
    of a fit state (all with the same count) merged by `merge_moments` position after position,
    in float64 on the host, `block` positions fetched at a time (device or host arrays; extra
    memory ~ one block). The moments of every embedding pooled over tiles and positions, for
    gaussian='shared'. [ours]"""
    n = np.float64(jax.device_get(count))
    d = mean.shape[-1]
    state = (np.float64(0), np.zeros((1, d)), np.zeros((1, d, d)))
    for start in range(0, mean.shape[0], block):
        means = np.asarray(jax.device_get(mean[start : start + block]), np.float64)
        scatters = np.asarray(jax.device_get(scatter[start : start + block]), np.float64)
        for m, s in zip(means, scatters):
            state = merge_moments(state, (n, m[None], s[None]))
    return state


def whitening_numpy(
    count: float, mean: np.ndarray, scatter: np.ndarray, ridge: float, block: int = 1024, out_dtype=np.float64
):
    """(mean, L^-1) on the host, computed in float64: covariance S / (n - 1) + ridge I, Cholesky
    per position, inverse of the triangular factor; `block` positions at a time (bounded extra
    memory), written into an `out_dtype` array (float32 when that is what is stored)."""
    if count < 2:
        raise ValueError(f"PaDiM needs at least 2 training tiles for a covariance (ddof 1), got {count:g}")
    d = mean.shape[-1]
    eye = np.eye(d)
    out = np.empty(scatter.shape, out_dtype)
    for start in range(0, scatter.shape[0], block):
        cov = scatter[start : start + block] / (count - 1.0) + ridge * eye
        out[start : start + block] = np.linalg.inv(np.linalg.cholesky(cov))
    return mean, out


def whitening_jax(count: jax.Array, mean: jax.Array, scatter: jax.Array, ridge: float) -> tuple[jax.Array, jax.Array]:
    """The same on device in the arrays' precision (float32): Cholesky, then a triangular solve
    against I."""
    d = mean.shape[-1]
    eye = jnp.eye(d, dtype=scatter.dtype)
    cov = scatter / (count - 1.0) + ridge * eye
    chol = jnp.linalg.cholesky(cov)
    inv = jax.scipy.linalg.solve_triangular(chol, jnp.broadcast_to(eye, chol.shape), lower=True)
    return mean, inv


def mahalanobis(x: jax.Array, mean: jax.Array, whitening: jax.Array) -> jax.Array:
    """[B, P] distances sqrt((x - mu)^T Sigma^-1 (x - mu)) of x [B, P, d], with whitening = L^-1
    [P, d, d] (any float dtype; the product accumulates in float32)."""
    delta = x.astype(jnp.float32) - mean.astype(jnp.float32)[None]
    z = jnp.einsum(
        "pij,bpj->bpi",
        whitening,
        delta.astype(whitening.dtype),
        precision=jax.lax.Precision.HIGHEST,
        preferred_element_type=jnp.float32,
    )
    return jnp.sqrt(jnp.sum(z * z, axis=-1))
