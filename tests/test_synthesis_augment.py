"""Texture augmentations: references (scikit-image, SciPy, PIL, NumPy), range,
random selection, jit/vmap. Tolerances are stated per test, in 8-bit levels
(1/255) where the reference works in uint8."""

import colorsys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
from PIL import Image, ImageEnhance, ImageOps
from skimage import color, exposure, util
from skimage import data as skdata

from xray_flax.synthesis import augment

LEVEL = 1.0 / 255.0
# A real photograph (scikit-image's camera, 128x128 grey) and an RGB one.
CAMERA_U8 = skdata.camera()[::4, ::4]
CAMERA = CAMERA_U8[..., None].astype(np.float32) / 255.0
ASTRONAUT = skdata.astronaut()[::8, ::8].astype(np.float32) / 255.0


def _np(x):
    return np.asarray(x, np.float64)


def test_gamma_matches_skimage_per_channel():
    gammas = np.array([0.5, 1.3, 2.0], np.float32)
    ours = _np(augment.gamma(jnp.asarray(ASTRONAUT), gammas))
    for c, g in enumerate(gammas):
        ref = exposure.adjust_gamma(ASTRONAUT[..., c], float(g))
        np.testing.assert_allclose(ours[..., c], ref, atol=1e-6)


def test_brightness_contrast_matches_numpy():
    ours = _np(augment.brightness_contrast(jnp.asarray(CAMERA), 1.2, 30 / 255))
    ref = np.clip(CAMERA.astype(np.float64) * 1.2 + 30 / 255, 0, 1)
    np.testing.assert_allclose(ours, ref, atol=1e-6)


@pytest.mark.parametrize("factor", [0.0, 0.5, 1.0, 2.0])
def test_sharpen_matches_pil_enhance_sharpness(factor):
    # PIL rounds to uint8: tolerance one level.
    ref = np.asarray(ImageEnhance.Sharpness(Image.fromarray(CAMERA_U8)).enhance(factor)) / 255.0
    ours = _np(augment.sharpen(jnp.asarray(CAMERA), factor))[..., 0]
    np.testing.assert_allclose(ours, ref, atol=LEVEL)
    if factor != 1.0:
        assert np.abs(ours - CAMERA[..., 0]).max() > 5 * LEVEL  # it does act


def test_hue_saturation_matches_skimage_hsv():
    hue_shift, sat_shift = 0.15, -0.1
    ours = _np(augment.hue_saturation(jnp.asarray(ASTRONAUT), hue_shift, sat_shift))
    hsv = color.rgb2hsv(ASTRONAUT.astype(np.float64))
    hsv[..., 0] = (hsv[..., 0] + hue_shift) % 1.0
    hsv[..., 1] = np.clip(hsv[..., 1] + sat_shift, 0, 1)
    ref = color.hsv2rgb(hsv)
    np.testing.assert_allclose(ours, ref, atol=1e-4)
    # and colorsys agrees on one pixel, to be sure of the hue unit (turns)
    r, g, b = ASTRONAUT[10, 10]
    h, s, v = colorsys.rgb_to_hsv(r, g, b)
    expected = colorsys.hsv_to_rgb((h + hue_shift) % 1, np.clip(s + sat_shift, 0, 1), v)
    np.testing.assert_allclose(ours[10, 10], expected, atol=1e-4)


def test_solarize_matches_numpy():
    ours = _np(augment.solarize(jnp.asarray(CAMERA), 0.4))
    ref = np.where(CAMERA < 0.4, CAMERA, 1.0 - CAMERA)
    np.testing.assert_allclose(ours, ref, atol=1e-6)


@pytest.mark.parametrize("bits", [1, 3, 8])
def test_posterize_matches_pil_exactly(bits):
    ref = np.asarray(ImageOps.posterize(Image.fromarray(CAMERA_U8), bits)) / 255.0
    ours = _np(augment.posterize(jnp.asarray(CAMERA), bits))[..., 0]
    np.testing.assert_allclose(ours, ref, atol=1e-6)
    assert len(np.unique(ours)) <= 2**bits


def test_invert_matches_skimage():
    np.testing.assert_allclose(
        _np(augment.invert(jnp.asarray(CAMERA))), util.invert(CAMERA.astype(np.float64)), atol=1e-6
    )


@pytest.mark.parametrize("cutoff", [0, 2, 20])
def test_autocontrast_matches_pil(cutoff):
    # Low-contrast input so the stretch is large; PIL truncates its LUT to
    # uint8 and we do not: tolerance one level.
    low = (CAMERA_U8 // 3 + 60).astype(np.uint8)
    ref = np.asarray(ImageOps.autocontrast(Image.fromarray(low), cutoff=cutoff))
    ours = _np(augment.autocontrast(jnp.asarray(low[..., None] / 255.0, jnp.float32), cutoff))[..., 0]
    np.testing.assert_allclose(ours, ref / 255.0, atol=LEVEL + 1e-6)
    assert ours.max() - ours.min() > 0.95


def test_autocontrast_leaves_flat_image_alone():
    flat = jnp.full((16, 16, 1), 0.3)
    np.testing.assert_allclose(_np(augment.autocontrast(flat, 5)), 0.3, atol=1e-6)


def test_equalize_matches_skimage_equalize_hist():
    rng = np.random.default_rng(0)
    for image in (CAMERA[..., 0], rng.random((64, 48)).astype(np.float32) ** 3):
        ref = exposure.equalize_hist(image, nbins=256)
        ours = _np(augment.equalize(jnp.asarray(image[..., None])))[..., 0]
        np.testing.assert_allclose(ours, ref, atol=1e-5)


@pytest.mark.parametrize("degrees", [-45.0, 17.0, 90.0])
def test_rotate_matches_scipy_per_channel(degrees):
    ours = _np(augment.rotate(jnp.asarray(ASTRONAUT), degrees))
    for c in range(3):
        ref = scipy.ndimage.rotate(ASTRONAUT[..., c], degrees, reshape=False, order=1, mode="constant", cval=0.0)
        np.testing.assert_allclose(ours[..., c], ref, atol=1e-5)


@pytest.mark.parametrize("name", sorted(augment.OPS))
def test_every_random_op_stays_in_unit_range(name):
    op = augment.OPS[name]
    image = jnp.asarray(ASTRONAUT if name == "hue_saturation" else CAMERA)
    extremes = jnp.array([[0.0] * 4, [0.999999] * 4, [0.5] * 4])
    random_u = jax.random.uniform(jax.random.key(0), (13, augment.VARIATES))
    outs = _np(jax.jit(jax.vmap(op, in_axes=(0, None)))(jnp.concatenate([extremes, random_u]), image))
    assert np.isfinite(outs).all()
    assert outs.min() >= 0.0 and outs.max() <= 1.0


def test_usable_ops_drops_hue_for_grey_and_rejects_unknown():
    assert "hue_saturation" not in augment.usable_ops(tuple(augment.OPS), 1)
    assert augment.usable_ops(tuple(augment.OPS), 3) == tuple(augment.OPS)
    with pytest.raises(ValueError, match="blur"):
        augment.usable_ops(("gamma", "blur"), 1)


def test_augment_applies_distinct_ops_in_random_order():
    # invert and rotate (constant-0 corners) do not commute: each result must
    # be the composition in the order drawn from the key, and over 32 keys both
    # orders must occur.
    names = ("invert", "rotate")
    image = jnp.asarray(CAMERA[:32, :32])
    keys = jax.random.split(jax.random.key(0), 32)
    outs = _np(jax.jit(jax.vmap(lambda k: augment.augment(k, image, names, 2)))(keys))
    seen = set()
    for key, out in zip(keys, outs):
        # Re-derive the draws exactly as augment() makes them.
        u = jax.random.uniform(key, (2 + 2 * augment.VARIATES,))
        invert_first = int(jnp.argsort(u[:2])[0]) == 0
        rotate_step = 1 if invert_first else 0
        angle = -45.0 + 90.0 * float(u[2 + rotate_step * augment.VARIATES])
        if invert_first:
            expected = _np(augment.rotate(1.0 - image, angle))
        else:
            expected = 1.0 - _np(augment.rotate(image, angle))
        np.testing.assert_allclose(out, expected, atol=1e-5)
        seen.add(invert_first)
    assert seen == {True, False}


def test_augment_is_deterministic_and_vmaps_for_batch_1_and_16():
    names = augment.usable_ops(tuple(augment.OPS), 1)
    run = jax.jit(jax.vmap(lambda k, x: augment.augment(k, x, names, 3)))
    for batch in (1, 16):
        keys = jax.random.split(jax.random.key(batch), batch)
        images = jnp.broadcast_to(jnp.asarray(CAMERA[:32, :32]), (batch, 32, 32, 1))
        a, b = _np(run(keys, images)), _np(run(keys, images))
        np.testing.assert_array_equal(a, b)
        assert a.shape == (batch, 32, 32, 1)
        assert a.min() >= 0 and a.max() <= 1
        if batch == 16:
            assert not np.allclose(a[0], a[1])
