"""Perlin noise and mask: equality with a NumPy reference, statistics, scale."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
import scipy.stats

from xray_flax.synthesis import perlin


def numpy_perlin_draem(shape, res, gradients):
    """DRAEM's rand_perlin_2d_np (VitjanZ/DRAEM perlin.py), gradients given.

    Written as in the reference: a fractional grid from np.mgrid, gradients
    tiled with np.repeat. Only valid when shape is a multiple of res. The grid
    is built as integer positions / d so cell edges are exact.
    """
    d = (shape[0] // res[0], shape[1] // res[1])
    assert d[0] * res[0] == shape[0] and d[1] * res[1] == shape[1]
    iy, ix = np.mgrid[0 : shape[0], 0 : shape[1]]
    grid = np.stack([(iy % d[0]) / d[0], (ix % d[1]) / d[1]], axis=-1)
    g = gradients[: res[0] + 1, : res[1] + 1].astype(np.float64)

    def tile(s1, s2):
        return np.repeat(np.repeat(g[s1[0] : s1[1], s2[0] : s2[1]], d[0], axis=0), d[1], axis=1)

    def dot(grad, shift):
        return (np.stack([grid[..., 0] + shift[0], grid[..., 1] + shift[1]], axis=-1) * grad).sum(axis=-1)

    n00 = dot(tile([0, -1], [0, -1]), [0, 0])
    n10 = dot(tile([1, None], [0, -1]), [-1, 0])
    n01 = dot(tile([0, -1], [1, None]), [0, -1])
    n11 = dot(tile([1, None], [1, None]), [-1, -1])

    def fade(t):
        return 6 * t**5 - 15 * t**4 + 10 * t**3

    t = fade(grid)

    def lerp(a, b, w):
        return (b - a) * w + a

    return math.sqrt(2) * lerp(lerp(n00, n10, t[..., 0]), lerp(n01, n11, t[..., 0]), t[..., 1])


# One compiled function per (shape), shared by the parametrized cases.
_perlin_jit = jax.jit(perlin.perlin_from_gradients, static_argnums=1)


def _gradients(seed, lattice):
    return np.asarray(perlin.random_gradients(jax.random.key(seed), (lattice, lattice)))


@pytest.mark.parametrize("res", [(1, 1), (2, 8), (32, 4), (16, 16)])
def test_matches_numpy_reference_for_same_gradients(res):
    gradients = _gradients(0, 33)
    ours = _perlin_jit(jnp.asarray(gradients), (128, 96), jnp.array(res))
    ref = numpy_perlin_draem((128, 96), res, gradients)
    np.testing.assert_allclose(np.asarray(ours), ref, atol=2e-6)


def test_non_multiple_size_is_crop_of_padded_reference():
    # 100 is not a multiple of 32: the noise is DRAEM's noise at 128, cropped.
    gradients = _gradients(1, 33)
    for res in [(4, 2), (32, 32)]:
        ours = _perlin_jit(jnp.asarray(gradients), (100, 70), jnp.array(res))
        ref = numpy_perlin_draem((128, 96), res, gradients)[:100, :70]
        np.testing.assert_allclose(np.asarray(ours), ref, atol=2e-6)


def test_perlin_noise_uses_powers_of_two_and_is_deterministic():
    key = jax.random.key(3)
    a = perlin.perlin_noise(key, (64, 64), jnp.array([2, 3]), 5)
    b = perlin.perlin_noise(key, (64, 64), jnp.array([2, 3]), 5)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    ref_grads = np.asarray(perlin.random_gradients(key, (33, 33)))
    np.testing.assert_allclose(np.asarray(a), numpy_perlin_draem((64, 64), (4, 8), ref_grads), atol=2e-6)
    c = perlin.perlin_noise(jax.random.key(4), (64, 64), jnp.array([2, 3]), 5)
    assert np.abs(np.asarray(a) - np.asarray(c)).max() > 0.1


def test_noise_is_zero_on_lattice_points_and_bounded():
    noise = np.asarray(perlin.perlin_noise(jax.random.key(0), (128, 128), jnp.array([3, 3]), 5))
    # Gradient noise vanishes at lattice points (every 16 px at res 8).
    np.testing.assert_allclose(noise[::16, ::16], 0.0, atol=1e-6)
    assert np.abs(noise).max() <= 1.0 + 1e-5
    assert 0.15 < noise.std() < 0.45


@jax.jit
def _noise_batch(keys, exponent):
    return jax.vmap(lambda k: perlin.perlin_noise(k, (128, 128), jnp.stack([exponent, exponent]), 5))(keys)


def _dominant_frequency(exponent, axis, keys=24):
    """Mean-power-weighted frequency (cycles/patch) along `axis`."""
    noise = np.asarray(_noise_batch(jax.random.split(jax.random.key(7), keys), jnp.int32(exponent)))
    power = np.abs(np.fft.rfft(noise, axis=1 + axis)) ** 2
    spectrum = power.mean(axis=(0, 2 - axis))  # average over keys, other axis
    freqs = np.arange(spectrum.shape[0])
    return (spectrum[1:] * freqs[1:]).sum() / spectrum[1:].sum()


def test_dominant_frequency_follows_scale():
    f2 = _dominant_frequency(2, axis=0)
    f4 = _dominant_frequency(4, axis=0)
    # 4 cells -> ~4 cycles per patch, 16 cells -> ~4x that.
    assert 2.0 < f2 < 8.0, f2
    assert 3.0 < f4 / f2 < 5.0, (f2, f4)
    assert abs(_dominant_frequency(2, axis=1) - f2) / f2 < 0.25


def test_per_axis_scale_is_anisotropic():
    noise = np.asarray(perlin.perlin_noise(jax.random.key(1), (128, 128), jnp.array([0, 5]), 5))
    # res 1 along rows (smooth), 32 along columns (busy).
    rough_rows = np.abs(np.diff(noise, axis=0)).mean()
    rough_cols = np.abs(np.diff(noise, axis=1)).mean()
    assert rough_cols > 8 * rough_rows


def test_rotate_matches_scipy():
    rng = np.random.default_rng(0)
    image = rng.random((48, 40, 1)).astype(np.float32)
    ours = np.asarray(perlin.rotate_degrees(jnp.asarray(image), 33.0))
    ref = scipy.ndimage.rotate(image[..., 0], 33.0, reshape=False, order=1, mode="constant", cval=0.0)
    np.testing.assert_allclose(ours[..., 0], ref, atol=1e-5)


def test_mask_is_binary_rotated_threshold_of_noise():
    key = jax.random.key(11)
    mask = np.asarray(perlin.perlin_mask(key, (64, 64), (0, 5), 0.5, (-90.0, 90.0)))
    assert set(np.unique(mask)) <= {0.0, 1.0}
    # Rebuild from the same draws with NumPy/SciPy.
    exps, grads, angle = perlin.mask_draws(key, (0, 5), (-90.0, 90.0))
    assert 0 <= exps.min() and exps.max() <= 5 and -90 <= float(angle) <= 90
    noise = numpy_perlin_draem((64, 64), tuple(2 ** np.asarray(exps)), np.asarray(grads))
    rotated = scipy.ndimage.rotate(noise, float(angle), reshape=False, order=1, mode="constant", cval=0.0)
    ref = (rotated > 0.5).astype(np.float32)
    # Pixels within float noise of the threshold may flip.
    close = np.abs(rotated - 0.5) < 1e-4
    np.testing.assert_array_equal(mask[~close], ref[~close])


def test_mask_vmaps_and_jits():
    make = jax.jit(jax.vmap(lambda k: perlin.perlin_mask(k, (64, 64), (0, 5), 0.5, (-90.0, 90.0))))
    masks = np.asarray(make(jax.random.split(jax.random.key(0), 16)))
    assert masks.shape == (16, 64, 64)
    assert len({m.tobytes() for m in masks}) > 8  # samples differ


def _numpy_draem_mask_area(rng, size):
    """Area fraction of one mask made the DRAEM way, NumPy/SciPy only."""
    res = (2 ** rng.integers(0, 6), 2 ** rng.integers(0, 6))
    angles = 2 * math.pi * rng.random((res[0] + 1, res[1] + 1))
    gradients = np.stack([np.cos(angles), np.sin(angles)], -1)
    noise = numpy_perlin_draem((size, size), res, gradients)
    noise = scipy.ndimage.rotate(noise, rng.uniform(-90, 90), reshape=False, order=1, mode="constant")
    return (noise > 0.5).mean()


def test_mask_area_distribution_is_stable_and_matches_draem():
    # docs/synthesis.md: at 64x64 over 4000 keys, mean area 0.040,
    # median 0.034, p90 0.067, empty masks 4.8%. 1200 keys here: the bands
    # below are about 4 standard errors wide.
    size, count = 64, 1200
    areas_of = jax.jit(jax.vmap(lambda k: perlin.perlin_mask(k, (size, size), (0, 5), 0.5, (-90.0, 90.0)).mean()))
    ours = np.asarray(areas_of(jax.random.split(jax.random.key(2024), count)))
    assert 0.036 < ours.mean() < 0.044, ours.mean()
    assert 0.030 < np.median(ours) < 0.039, np.median(ours)
    assert 0.030 < (ours == 0).mean() < 0.070, (ours == 0).mean()
    # An independent NumPy/SciPy generator following DRAEM's code gives the
    # same distribution (two-sample Kolmogorov-Smirnov).
    rng = np.random.default_rng(0)
    reference = np.array([_numpy_draem_mask_area(rng, size) for _ in range(400)])
    assert scipy.stats.ks_2samp(ours, reference).pvalue > 0.01


def test_scale_exponents_are_uniform_over_range():
    draws = jax.jit(jax.vmap(lambda k: perlin.mask_draws(k, (1, 4), (-90.0, 90.0))[0]))
    exps = np.asarray(draws(jax.random.split(jax.random.key(0), 4000)))
    counts = np.bincount(exps.ravel(), minlength=6)
    assert counts[0] == 0 and counts[5] == 0  # range is inclusive 1..4
    np.testing.assert_allclose(counts[1:5] / exps.size, 0.25, atol=0.03)
