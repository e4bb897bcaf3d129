"""CFA: loss, score, distances, pooling and coordinates against NumPy; the memory bank against
the NumPy mean of the descriptors it saw; torch's AdamW-AMSGrad rule; the shared
upsample-and-blur helper against torch's formula and SciPy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.ndimage

from configs import tiny
from xray_flax import detectors
from xray_flax.detectors import TrainState
from xray_flax.detectors.base import guard_nonfinite
from xray_flax.detectors.cfa import network as cfa_model
from xray_flax.detectors.cfa.loss import cfa_loss
from xray_flax.detectors.cfa.steps import descriptors_of, make_optimizer, patches_of
from xray_flax.nn import anomaly_maps


def test_loss_equals_formula():
    rng = np.random.default_rng(0)
    # Positions at two scales, so that some nearest centres lie outside r (attraction) and
    # some hard negatives inside r^2 - alpha (repulsion).
    scale = np.where(np.arange(6) < 3, 0.05, 1.0)[None, :, None]
    squared = (rng.uniform(0.0, 2.0, size=(2, 6, 9)) * scale).astype(np.float32)
    k, j, r, alpha, nu = 3, 3, 0.5, 0.1, 1e-3
    total, terms = cfa_loss(jnp.asarray(squared), num_nearest=k, num_hard_negatives=j, radius=r, alpha=alpha, nu=nu)
    d = np.sort(squared, axis=-1)[..., : k + j]
    att = np.maximum(d[..., :k] - r**2, 0).mean()
    rep = np.maximum(r**2 - d[..., k:] - alpha, 0).mean()
    assert att > 0 and rep > 0  # both terms are exercised
    np.testing.assert_allclose(float(terms["attraction"]), att, rtol=1e-5)
    np.testing.assert_allclose(float(terms["repulsion"]), rep, rtol=1e-5)
    np.testing.assert_allclose(float(total), (att + rep) / nu, rtol=1e-5)


def test_softmin_score_and_distances():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(2, 3, 4, 6)).astype(np.float32)
    c = rng.normal(size=(10, 6)).astype(np.float32)
    squared = np.asarray(cfa_model.squared_distances(jnp.asarray(f), jnp.asarray(c)))
    brute = ((f.reshape(2, 12, 1, 6) - c[None, None]) ** 2).sum(-1)
    np.testing.assert_allclose(squared, brute, rtol=1e-4, atol=1e-4)
    score = np.asarray(cfa_model.softmin_score(jnp.asarray(brute), 3))
    d = np.sort(np.sqrt(brute), axis=-1)[..., :3]
    w = np.exp(-d) / np.exp(-d).sum(-1, keepdims=True)
    np.testing.assert_allclose(score, w[..., 0] * d[..., 0], rtol=1e-5)


def test_pooling_coordinates_and_patch_features():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(1, 5, 6, 2)).astype(np.float32)
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    expected = sum(padded[:, i : i + 5, j : j + 6] for i in range(3) for j in range(3)) / 9.0
    np.testing.assert_allclose(np.asarray(cfa_model.avg_pool3x3(jnp.asarray(x))), expected, rtol=1e-5, atol=1e-6)
    coords = np.asarray(cfa_model.coordinate_channels(3, 5))
    np.testing.assert_allclose(coords[:, 0, 0], [-1, 0, 1])  # rows first, [-1, 1]
    np.testing.assert_allclose(coords[0, :, 1], [-1, -0.5, 0, 0.5, 1])
    feats = {
        "a": jnp.asarray(rng.normal(size=(2, 8, 8, 3)), jnp.float32),
        "b": jnp.asarray(rng.normal(size=(2, 4, 4, 5))),
    }
    patches = np.asarray(cfa_model.patch_features(feats, ("a", "b")))
    assert patches.shape == (2, 8, 8, 8)
    np.testing.assert_allclose(patches[..., :3], np.asarray(cfa_model.avg_pool3x3(feats["a"])), rtol=1e-6)
    up = anomaly_maps.upsample_bilinear(cfa_model.avg_pool3x3(feats["b"].astype(jnp.float32)), (8, 8))
    np.testing.assert_allclose(patches[..., 3:], np.asarray(up), rtol=1e-6)
    with pytest.raises(ValueError, match="at least 2x2"):
        cfa_model.coordinate_channels(1, 4)


def tiny_cfa(**model):
    config = tiny.get_config("cfa")
    config.model.update(model)
    return config, detectors.build(config)


def test_memory_bank_is_the_mean_of_the_descriptors_it_saw():
    config, detector = tiny_cfa(memory_bank_steps=2)
    keys = jax.random.split(jax.random.key(3), 3)
    batches = [jax.random.uniform(k, (3, 32, 32, 1)) for k in keys]
    variables = detector.init(jax.random.key(0), batches[0][:1])
    state = TrainState.create(variables, detector.optimizer)
    step = jax.jit(guard_nonfinite(detector.train_step))

    # The descriptors of the initial network on the tiles of the first two batches.
    backbone = detector.train_step.keywords["backbone"]
    descriptor = detector.train_step.keywords["descriptor"]
    seen = np.concatenate(
        [
            np.asarray(descriptors_of(descriptor, state.params, patches_of(backbone, variables["backbone"], b)))
            for b in batches[:2]
        ]
    )
    expected = seen.mean(axis=0).reshape(-1, seen.shape[-1])  # one centre per position, row-major

    s = state
    for i in range(2):
        s, metrics = step(s, {"image": batches[i]}, jax.random.key(i), None)
        assert float(metrics["memory_bank_pass"]) == 1.0 and float(metrics["loss"]) == 0.0
    np.testing.assert_allclose(np.asarray(s.collections["memory_bank"]["centres"]), expected, rtol=1e-5, atol=1e-6)
    # The pass leaves the descriptor, the backbone and the optimiser state untouched.
    for before, after in [
        (state.params, s.params),
        (state.opt_state, s.opt_state),
        (variables["backbone"], s.collections["backbone"]),
    ]:
        for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    trained, metrics = step(s, {"image": batches[2]}, jax.random.key(2), None)
    assert float(metrics["memory_bank_pass"]) == 0.0 and float(metrics["loss"]) > 0.0
    assert int(trained.step) == 3
    np.testing.assert_array_equal(
        np.asarray(trained.collections["memory_bank"]["centres"]), np.asarray(s.collections["memory_bank"]["centres"])
    )
    assert not np.array_equal(
        np.asarray(trained.params["descriptor"]["coord_conv"]["kernel"]),
        np.asarray(s.params["descriptor"]["coord_conv"]["kernel"]),
    )
    # Only the descriptor has optimiser slots (mu, nu, nu_max).
    n_params = sum(x.size for x in jax.tree.leaves(trained.params))
    assert sum(x.size for x in jax.tree.leaves(trained.opt_state)) == 3 * n_params + 1

    out = detector.anomaly_map(trained.variables, batches[0])
    assert out["map"].shape == (3, 32, 32) and out["score"].shape == (3,)
    assert np.all(np.isfinite(np.asarray(out["map"])))
    np.testing.assert_allclose(np.asarray(out["score"]), np.asarray(out["map"]).max(axis=(1, 2)), rtol=1e-6)


def test_adamw_amsgrad_is_torchs():
    """torch.optim.AdamW(amsgrad=True) written out: decoupled decay, max of the raw v."""
    config = tiny.get_config("cfa")
    config.optim.learning_rate = 0.1
    tx = make_optimizer(config.optim)
    lr, wd, b1, b2, eps = 0.1, config.optim.weight_decay, 0.9, 0.999, 1e-8
    p = np.array([1.0, -2.0, 0.5], np.float64)
    params, state = jnp.asarray(p, jnp.float32), tx.init(jnp.asarray(p, jnp.float32))
    m = v = vmax = np.zeros_like(p)
    grads = [[0.3, -0.1, 0.2], [0.1, 0.4, -0.5], [-0.2, 0.0, 0.3], [0.05, -0.3, 0.1]]
    for t, g in enumerate(grads, start=1):
        g = np.asarray(g)
        updates, state = tx.update(jnp.asarray(g, jnp.float32), state, params)
        params = optax.apply_updates(params, updates)
        p = p * (1 - lr * wd)
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g**2
        vmax = np.maximum(vmax, v)
        p = p - lr / (1 - b1**t) * m / (np.sqrt(vmax) / np.sqrt(1 - b2**t) + eps)
        np.testing.assert_allclose(np.asarray(params), p, rtol=1e-5, atol=1e-6)


def test_blur_is_anomalibs():
    """anomalib's GaussianBlur2d(sigma=4): 33 taps, torch 'reflect' = SciPy's 'mirror' borders."""
    assert anomaly_maps.gaussian_kernel_size(4.0) == 33
    x = np.random.default_rng(4).random((2, 40, 36)).astype(np.float32)
    out = np.asarray(anomaly_maps.gaussian_blur(jnp.asarray(x), 4.0))
    for i in range(2):
        ref = scipy.ndimage.gaussian_filter(x[i].astype(np.float64), 4.0, mode="mirror", truncate=4.0)
        np.testing.assert_allclose(out[i], ref, atol=1e-5)


def test_bad_config_names_the_key():
    with pytest.raises(ValueError, match="config.model.gamma_c"):
        tiny_cfa(gamma_c=4)
    with pytest.raises(ValueError, match="config.model.memory_bank_steps"):
        tiny_cfa(memory_bank_steps=6)
