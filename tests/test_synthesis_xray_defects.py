"""X-ray defects of the synthetic-anomaly generator (xray_flax/synthesis/xray_defects.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xray_flax.synthesis import config as synthesis_config
from xray_flax.synthesis import synthesize, xray_defects


def test_segment_distance_matches_a_dense_sampling_of_the_segment():
    ys = jnp.arange(20, dtype=jnp.float32)[:, None]
    xs = jnp.arange(24, dtype=jnp.float32)[None, :]
    y0, x0, y1, x1 = 3.2, 4.5, 15.7, 19.1
    got = np.asarray(xray_defects.segment_distance(ys, xs, y0, x0, y1, x1))
    t = np.linspace(0, 1, 20001)
    points = np.stack([y0 + t * (y1 - y0), x0 + t * (x1 - x0)], -1)
    grid = np.stack(np.meshgrid(np.arange(20), np.arange(24), indexing="ij"), -1).reshape(-1, 1, 2)
    want = np.min(np.linalg.norm(grid - points[None], axis=-1), axis=1).reshape(20, 24)
    np.testing.assert_allclose(got, want, atol=2e-3)


def test_spot_mask_is_the_pixels_inside_the_drawn_discs():
    u = jnp.full((1 + 4 * xray_defects.MAX_SPOTS,), 0.5).at[0].set(0.0)  # one spot
    u = u.at[1].set(0.25).at[2].set(0.5).at[3].set(1.0)  # centre (8, 16) of 32x32, radius 6
    profile = np.asarray(xray_defects.spot_profile(u, (32, 32)))
    yy, xx = np.mgrid[:32, :32]
    inside = np.hypot(yy - 8.0, xx - 16.0) < 6.0
    np.testing.assert_array_equal(profile > 0.5, inside)


def test_line_profile_counts_the_segments_drawn():
    base = np.random.default_rng(0).random(1 + 5 * xray_defects.MAX_LINES).astype(np.float32)
    one = np.asarray(xray_defects.line_profile(jnp.asarray(base).at[0].set(0.0), (48, 48)))
    three = np.asarray(xray_defects.line_profile(jnp.asarray(base).at[0].set(0.99), (48, 48)))
    assert one.max() > 0.9 and np.all(three >= one - 1e-6) and (three > 0.5).sum() > (one > 0.5).sum()


@pytest.mark.parametrize("kind", xray_defects.KINDS)
def test_a_defect_changes_the_image_inside_its_mask_with_one_sign(kind):
    image = jnp.full((64, 64, 1), 0.5)
    signs = []
    for seed in range(24):
        defective, mask = xray_defects.xray_defect(jax.random.key(seed), image, (kind,))
        change, mask = np.asarray(defective - image)[..., 0], np.asarray(mask)[..., 0] > 0
        if not mask.any():
            continue
        peak = np.abs(change).max()
        assert xray_defects.AMPLITUDE_RANGE[0] * 0.99 <= peak <= xray_defects.AMPLITUDE_RANGE[1] * 1.01
        assert np.all(np.abs(change[mask]) >= 0.5 * peak - 1e-6)
        assert np.all(np.abs(change[~mask]) <= 0.5 * peak + 1e-6)
        assert np.all(change >= -1e-7) or np.all(change <= 1e-7)  # one sign: denser or lighter
        signs.append(np.sign(change.sum()))
    assert len(signs) >= 20
    if kind == "spot":
        assert np.mean(np.asarray(signs) > 0) >= 0.5  # brighter 3 times in 4 (metal, lead)


def test_generator_with_only_xray_defects_agrees_mask_and_label_and_is_deterministic():
    spec = synthesize.SynthesisSpec(channels=1, anomaly_probability=1.0, xray_defect_probability=1.0)
    images = jax.random.uniform(jax.random.key(1), (8, 32, 32, 1)) * 0.5 + 0.25
    textures = jnp.zeros((1, 32, 32, 1))
    out = synthesize.synthesize_batch(jax.random.key(2), images, textures, spec)
    again = synthesize.synthesize_batch(jax.random.key(2), images, textures, spec)
    np.testing.assert_array_equal(np.asarray(out["image"]), np.asarray(again["image"]))
    mask_sums = np.asarray(out["mask"]).sum(axis=(1, 2, 3))
    np.testing.assert_array_equal(np.asarray(out["has_anomaly"]), (mask_sums > 0).astype(np.float32))
    changed = np.abs(np.asarray(out["image"] - images)).max(axis=(1, 2, 3)) > 0.01
    np.testing.assert_array_equal(changed, mask_sums > 0)


def test_xray_defect_share_is_read_from_the_config_and_validated():
    c = synthesis_config.defaults()
    assert synthesize.SynthesisSpec.from_config(c, 1).xray_defect_probability == 0.0
    c.xray_defect_probability = 0.5
    c.xray_defect_kinds = ("line", "spot")
    spec = synthesize.SynthesisSpec.from_config(c, 1)
    assert spec.xray_defect_probability == 0.5 and spec.xray_defect_kinds == ("line", "spot")
    with pytest.raises(ValueError, match="xray_defect_kinds"):
        synthesize.SynthesisSpec(channels=1, xray_defect_kinds=("crack",))
    with pytest.raises(ValueError, match="xray_defect_probability"):
        synthesize.SynthesisSpec(channels=1, xray_defect_probability=1.5)
