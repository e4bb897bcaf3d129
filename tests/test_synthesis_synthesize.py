"""Texture bank, procedural textures, SynthesisSpec and synthesize_batch."""

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
from PIL import Image

from xray_flax import synthesis
from xray_flax.synthesis import gallery, synthesize, textures

SIZE = 64
DTD_ROOT = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "dtd"
needs_dtd = pytest.mark.skipif(not (DTD_ROOT / "images").is_dir(), reason=f"real DTD subset not at {DTD_ROOT}")


def _config(**overrides):
    cfg = synthesis.defaults()
    for name, value in overrides.items():
        if name == "texture_sources":
            cfg.texture_sources.update(value)
        else:
            cfg[name] = value
    return cfg


def _images(batch, channels, seed=0):
    return jax.random.uniform(jax.random.key(seed), (batch, SIZE, SIZE, channels))


def _check_outputs(out, images):
    b, h, w, c = images.shape
    assert out["image"].shape == (b, h, w, c)
    assert out["mask"].shape == (b, h, w, 1)
    assert out["has_anomaly"].shape == (b,)
    for v in out.values():
        assert v.dtype == jnp.float32
    image, mask, has = (np.asarray(out[k]) for k in ("image", "mask", "has_anomaly"))
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert set(np.unique(mask)) <= {0.0, 1.0}
    assert set(np.unique(has)) <= {0.0, 1.0}
    # mask and has_anomaly agree; outside the mask nothing changed; inside a
    # non-empty mask something did.
    np.testing.assert_array_equal(mask.reshape(b, -1).max(axis=1), has)
    np.testing.assert_allclose(image * (1 - mask), np.asarray(images) * (1 - mask), atol=1e-6)
    for i in np.flatnonzero(has):
        assert np.abs(image[i] - np.asarray(images[i]))[mask[i, ..., 0] > 0].max() > 1e-3


# ---------------------------------------------------------------------------
# Texture bank


def test_bank_without_dtd_is_one_placeholder_never_drawn():
    cfg = _config()
    bank = synthesis.load_texture_bank(cfg, SIZE, 1)
    assert bank.shape == (1, SIZE, SIZE, 1) and bank.dtype == np.float32
    spec = synthesis.SynthesisSpec.from_config(cfg, 1)
    assert spec.source_weights[0] == 0.0
    assert sum(spec.source_weights) == pytest.approx(1.0)


@needs_dtd
@pytest.mark.parametrize("channels", [1, 3])
def test_bank_from_real_dtd(channels):
    cfg = _config(dtd_root=str(DTD_ROOT), max_textures=12)
    bank = synthesis.load_texture_bank(cfg, SIZE, channels)
    assert bank.shape == (12, SIZE, SIZE, channels)
    assert bank.dtype == np.float32
    assert bank.min() >= 0.0 and bank.max() <= 1.0
    assert bank.std(axis=(1, 2, 3)).min() > 0.01  # real images, not blank
    paths = textures.choose_texture_paths(textures.dtd_image_paths(str(DTD_ROOT)), 12, cfg.texture_seed)
    # category-balanced: the first 10 picks cover the 10 classes of the subset
    assert len({p.parent.name for p in paths[:10]}) == 10
    mode = "L" if channels == 1 else "RGB"
    expected = (
        np.asarray(Image.open(paths[3]).convert(mode).resize((SIZE, SIZE), Image.Resampling.BILINEAR), np.float32)
        / 255.0
    )
    np.testing.assert_allclose(bank[3], expected.reshape(SIZE, SIZE, channels), atol=1e-6)


@needs_dtd
def test_bank_takes_all_images_when_cap_is_large():
    cfg = _config(dtd_root=str(DTD_ROOT), max_textures=1000)
    assert synthesis.load_texture_bank(cfg, 16, 1).shape[0] == len(textures.dtd_image_paths(str(DTD_ROOT)))


def test_bank_errors_name_the_folder_and_the_file(tmp_path):
    empty = tmp_path / "empty_dtd"
    (empty / "images" / "banded").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="empty_dtd"):
        synthesis.load_texture_bank(_config(dtd_root=str(empty)), SIZE, 1)
    broken = tmp_path / "broken_dtd"
    (broken / "images" / "cracked").mkdir(parents=True)
    (broken / "images" / "cracked" / "cracked_0001.jpg").write_bytes(b"no jpeg")
    with pytest.raises(ValueError, match="cracked_0001.jpg"):
        synthesis.load_texture_bank(_config(dtd_root=str(broken)), SIZE, 1)


# ---------------------------------------------------------------------------
# Procedural textures


@pytest.mark.parametrize("kind", textures.PROCEDURAL_KINDS)
def test_procedural_textures_are_varied_and_in_range(kind):
    make = jax.jit(jax.vmap(lambda k: textures.procedural_texture(k, (SIZE, 48), 3, kinds=(kind,))))
    out = np.asarray(make(jax.random.split(jax.random.key(0), 6)))
    assert out.shape == (6, SIZE, 48, 3)
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert out.std(axis=(1, 2)).min() > 0.03  # structure, not flat
    assert not np.allclose(out[0], out[1])  # keys matter
    # the tint differs between channels (RGB), yet keeps the same pattern
    ratio = out[0, ..., 1] / np.maximum(out[0, ..., 0], 1e-3)
    assert np.ptp(ratio[out[0, ..., 0] > 0.2]) < 1e-3


# ---------------------------------------------------------------------------
# SynthesisSpec


def test_spec_from_config_and_validation():
    spec = synthesis.SynthesisSpec.from_config(_config(dtd_root="/x"), 1)
    assert spec.source_weights == pytest.approx((0.5, 0.3, 0.2))
    assert "hue_saturation" not in spec.augmentations
    assert "hue_saturation" in synthesis.SynthesisSpec.from_config(_config(), 3).augmentations
    assert hash(spec) == hash(synthesis.SynthesisSpec.from_config(_config(dtd_root="/x"), 1))
    with pytest.raises(ValueError, match="blend"):
        synthesis.SynthesisSpec.from_config(_config(blend="mix"), 1)
    with pytest.raises(ValueError, match="no texture source"):
        synthesis.SynthesisSpec.from_config(_config(texture_sources=dict(dtd=1.0, procedural=0.0, batch=0.0)), 1)
    with pytest.raises(ValueError, match="num_augmentations"):
        synthesis.SynthesisSpec.from_config(_config(augmentations=("gamma", "invert")), 1)
    with pytest.raises(ValueError, match="channels"):
        synthesis.SynthesisSpec.from_config(_config(), 2)
    assert "hue_saturation" not in synthesis.SynthesisSpec(channels=1).augmentations
    with pytest.raises(ValueError, match="procedural_kinds"):
        synthesis.SynthesisSpec.from_config(_config(procedural_kinds=("plaid",)), 1)


# ---------------------------------------------------------------------------
# synthesize_batch: default spec (procedural + batch textures, all ops)


@pytest.fixture(scope="module")
def default_run():
    spec = synthesis.SynthesisSpec.from_config(_config(), 1)
    bank = synthesis.load_texture_bank(_config(), SIZE, 1)
    images = _images(16, 1)
    outs = [synthesis.synthesize_batch(jax.random.key(k), images, bank, spec) for k in range(6)]
    return spec, bank, images, outs


def test_batch_16_outputs_and_mask_agreement(default_run):
    _, _, images, outs = default_run
    for out in outs:
        _check_outputs(out, images)


def test_deterministic_under_fixed_key_and_key_matters(default_run):
    spec, bank, images, outs = default_run
    again = synthesis.synthesize_batch(jax.random.key(0), images, bank, spec)
    for name in again:
        np.testing.assert_array_equal(np.asarray(again[name]), np.asarray(outs[0][name]))
    assert not np.array_equal(np.asarray(outs[0]["mask"]), np.asarray(outs[1]["mask"]))


def test_synthesis_rate_follows_probability(default_run):
    # p = 0.5 and ~5% of Perlin masks are empty: expected rate ~0.475.
    _, _, _, outs = default_run
    rate = np.mean([np.asarray(o["has_anomaly"]) for o in outs])
    assert 0.3 < rate < 0.65, rate  # 96 samples: +-3.5 standard errors


def test_vmap_mode_equals_map_mode(default_run):
    spec, bank, images, outs = default_run
    vmapped = synthesis.synthesize_batch(jax.random.key(0), images, bank, dataclasses.replace(spec, batch_mode="vmap"))
    for name in vmapped:
        np.testing.assert_allclose(np.asarray(vmapped[name]), np.asarray(outs[0][name]), atol=1e-5)


def test_runs_inside_an_outer_jit_with_spec_static():
    # As in a train step: synthesize_batch nested in another jitted function,
    # the spec closed over / passed as a static argument.
    spec = _probe_spec(source_weights=(0.0, 1.0, 0.0))
    images = _images(2, 1)
    bank = np.zeros((1, SIZE, SIZE, 1), np.float32)

    @jax.jit
    def train_step_like(key, images):
        out = synthesis.synthesize_batch(key, images, bank, spec)
        return out["image"].mean(), out

    _, out = train_step_like(jax.random.key(0), images)
    direct = synthesis.synthesize_batch(jax.random.key(0), images, bank, spec)
    np.testing.assert_array_equal(np.asarray(out["mask"]), np.asarray(direct["mask"]))
    np.testing.assert_allclose(np.asarray(out["image"]), np.asarray(direct["image"]), atol=1e-6)


@needs_dtd
def test_batch_1_rgb_with_real_dtd_bank_under_vmap():
    cfg = _config(dtd_root=str(DTD_ROOT), max_textures=8, batch_mode="vmap")
    spec = synthesis.SynthesisSpec.from_config(cfg, 3)
    bank = synthesis.load_texture_bank(cfg, SIZE, 3)
    images = _images(1, 3)
    seen = 0.0
    for k in range(4):
        out = synthesis.synthesize_batch(jax.random.key(k), images, bank, spec)
        _check_outputs(out, images)
        seen += float(out["has_anomaly"][0])
    assert seen >= 1


def test_bank_must_match_images():
    spec = synthesis.SynthesisSpec.from_config(_config(dtd_root="/x"), 1)
    with pytest.raises(ValueError, match="patch size"):
        synthesis.synthesize_batch(jax.random.key(0), _images(2, 1), np.zeros((3, 32, 32, 1), np.float32), spec)


# ---------------------------------------------------------------------------
# Blend and beta: no augmentations, anomaly always drawn, so inside the mask
#   I_a - I = w * (T - I)  with w the texture weight.


def _probe_spec(**overrides):
    base = synthesis.SynthesisSpec.from_config(_config(dtd_root="/x"), 1)
    fields = dict(
        source_weights=(1.0, 0.0, 0.0), num_augmentations=0, anomaly_probability=1.0, mask_rotation_range=(0.0, 0.0)
    )
    fields.update(overrides)
    return dataclasses.replace(base, **fields)


def _texture_weights(out, images, bank):
    """Per sample: (w, index of the bank texture that explains I_a)."""
    found = []
    for i in np.flatnonzero(np.asarray(out["has_anomaly"])):
        inside = np.asarray(out["mask"][i, ..., 0]) > 0
        delta = (np.asarray(out["image"][i]) - np.asarray(images[i]))[inside]
        fits = []
        for j, texture in enumerate(bank):
            direction = (texture - np.asarray(images[i]))[inside]
            if not (direction**2).sum():
                continue  # the texture is the image itself: explains nothing
            w = float((delta * direction).sum() / (direction**2).sum())
            fits.append((np.abs(delta - w * direction).max(), w, j))
        found.append(min(fits)[:3])
    return found


@pytest.mark.parametrize("blend,lo,hi", [("paper", 0.2, 1.0), ("draem", 0.2, 1.0)])
def test_blend_formula_and_beta_bounds(blend, lo, hi):
    # paper: w = beta ~ U[0.2, 1]; draem: w = 1 - beta, beta ~ U[0, 0.8).
    beta_range = (0.2, 1.0) if blend == "paper" else (0.0, 0.8)
    spec = _probe_spec(blend=blend, beta_range=beta_range)
    # Non-constant textures, so exactly one (texture, w) explains each sample.
    bank = np.asarray(jax.random.uniform(jax.random.key(9), (3, SIZE, SIZE, 1)))
    images = jnp.full((16, SIZE, SIZE, 1), 0.4)
    weights = []
    for k in range(3):
        out = synthesis.synthesize_batch(jax.random.key(k), images, bank, spec)
        _check_outputs(out, images)
        for error, w, _ in _texture_weights(out, images, bank):
            assert error < 1e-5  # exactly w*T + (1-w)*I inside the mask
            weights.append(w)
    weights = np.array(weights)
    assert len(weights) > 30
    assert weights.min() >= lo - 1e-5 and weights.max() <= hi + 1e-5
    assert np.ptp(weights) > 0.4 * (hi - lo)  # spread over the range


def test_blend_function_matches_equations():
    image, texture, mask = jnp.array(0.3), jnp.array(0.9), jnp.array(1.0)
    assert float(synthesize.blend(image, texture, mask, 0.25, "paper")) == (pytest.approx(0.25 * 0.9 + 0.75 * 0.3))
    assert float(synthesize.blend(image, texture, mask, 0.25, "draem")) == (pytest.approx(0.75 * 0.9 + 0.25 * 0.3))
    assert float(synthesize.blend(image, texture, 0.0, 0.25, "paper")) == (pytest.approx(0.3))


def test_batch_source_uses_another_patch():
    spec = _probe_spec(source_weights=(0.0, 0.0, 1.0))
    images = _images(8, 1, seed=4)
    out = synthesis.synthesize_batch(jax.random.key(3), images, images[:1], spec)
    bank_like = np.asarray(images)
    sources = _texture_weights(out, images, bank_like)
    assert sources
    for (error, w, j), i in zip(sources, np.flatnonzero(np.asarray(out["has_anomaly"]))):
        assert error < 1e-5 and j != i
        assert 0.2 - 1e-5 <= w <= 1.0 + 1e-5


def test_no_anomaly_and_normal_rotation():
    spec = _probe_spec(anomaly_probability=0.0, rotate_normal_probability=1.0, normal_rotation_range=(-90.0, 90.0))
    images = _images(4, 1)
    key = jax.random.key(5)
    out = synthesis.synthesize_batch(key, images, np.zeros((1, SIZE, SIZE, 1), np.float32), spec)
    assert float(out["mask"].sum()) == 0 and float(out["has_anomaly"].sum()) == 0
    for i, sample_key in enumerate(jax.random.split(key, 4)):
        # re-derive the angle as synthesize_one draws it
        u = jax.random.uniform(jax.random.split(sample_key, 4)[0], (4,))
        angle = -90.0 + 180.0 * float(u[1])
        ref = scipy.ndimage.rotate(np.asarray(images[i, ..., 0]), angle, reshape=False, order=1, mode="constant")
        np.testing.assert_allclose(np.asarray(out["image"][i, ..., 0]), ref, atol=1e-5)
    # (p = 0 without rotation returns the input exactly: every has_anomaly = 0
    # sample of the default run is checked for that in _check_outputs.)


# ---------------------------------------------------------------------------
# Gallery (rendering only; the command itself runs the same synthesize_batch)


def test_gallery_renders_16_triplets():
    normal = gallery._simulated_normal_patches(32, 1, seed=0)
    assert normal.shape == (16, 32, 32, 1)
    assert 0 <= normal.min() and normal.max() <= 1 and normal.std() > 0.01
    mask = np.zeros((16, 32, 32, 1), np.float32)
    mask[:, 8:20, 8:20] = 1
    mask[3] = 0
    out = dict(image=normal * (1 - mask), mask=mask, has_anomaly=mask.reshape(16, -1).max(1))
    picture = gallery.render_gallery(normal, out, tile=16)
    assert picture.size == (4 * 3 * 16 + 3 * 8, 4 * (16 + gallery.CAPTION_HEIGHT))
    pixels = np.asarray(picture)
    # the mask outline of sample 0 is red in its middle tile
    middle = pixels[:16, 16:32]
    assert ((middle[..., 0] == 255) & (middle[..., 1] == 40)).any()
