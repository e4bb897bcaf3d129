"""STFPM: loss and map against NumPy formulas, SGD against torch's rule, the frozen teacher.

The network is EfficientNet-Lite0 up to stage3 (the tiny config), randomly initialised: the
tests check the mechanics (what trains, what stays frozen), not ImageNet weights.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import tiny
from xray_flax import detectors
from xray_flax.detectors import TrainState
from xray_flax.detectors.base import guard_nonfinite
from xray_flax.detectors.stfpm import loss as stfpm_loss
from xray_flax.detectors.stfpm.steps import make_optimizer


def np_normalise(x):
    return x / np.maximum(np.sqrt((x**2).sum(-1, keepdims=True)), 1e-12)


def np_bilinear(x, size):
    """torch F.interpolate(mode='bilinear', align_corners=False) of [B, h, w], written out."""

    def weights(n_in, n_out):
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
        lo = np.minimum(np.floor(src).astype(int), n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        frac = src - lo
        m = np.zeros((n_out, n_in))
        m[np.arange(n_out), lo] += 1 - frac
        m[np.arange(n_out), hi] += frac
        return m

    rows, cols = weights(x.shape[1], size[0]), weights(x.shape[2], size[1])
    return np.einsum("Hh,bhw,Ww->bHW", rows, x, cols)


def random_pyramid(seed):
    rng = np.random.default_rng(seed)
    shapes = {"a": (2, 8, 8, 5), "b": (2, 4, 4, 7)}
    teacher = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    student = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    return teacher, student


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_loss_equals_formula(reduction):
    teacher, student = random_pyramid(0)
    total, per_layer = stfpm_loss.stfpm_loss(
        jax.tree.map(jnp.asarray, teacher),
        jax.tree.map(jnp.asarray, student),
        layer_scale=0.5,
        batch_reduction=reduction,
    )
    expected = {}
    for k in teacher:
        _, h, w, _ = teacher[k].shape
        per_image = 0.5 / (h * w) * ((np_normalise(teacher[k]) - np_normalise(student[k])) ** 2).sum(axis=(1, 2, 3))
        expected[k] = per_image.sum() if reduction == "sum" else per_image.mean()
    for k in teacher:
        np.testing.assert_allclose(float(per_layer[k]), expected[k], rtol=1e-5)
    np.testing.assert_allclose(float(total), sum(expected.values()), rtol=1e-5)


def test_map_equals_formula():
    teacher, student = random_pyramid(1)
    out = stfpm_loss.anomaly_map(jax.tree.map(jnp.asarray, teacher), jax.tree.map(jnp.asarray, student), (32, 32))
    expected = np.ones((2, 32, 32))
    for k in teacher:
        layer = 0.5 * ((np_normalise(teacher[k]) - np_normalise(student[k])) ** 2).sum(-1)
        expected = expected * np_bilinear(layer, (32, 32))
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-4, atol=1e-6)


def test_sgd_is_torch_sgd():
    """p <- p - lr * b, b <- momentum * b + (g + wd * p), b_0 = 0: torch.optim.SGD's rule."""
    config = tiny.get_config("stfpm")
    tx = make_optimizer(config.optim)
    lr, mom, wd = config.optim.learning_rate, config.optim.momentum, config.optim.weight_decay
    p = np.array([1.0, -2.0, 0.5], np.float32)
    params, state = jnp.asarray(p), tx.init(jnp.asarray(p))
    buf = np.zeros_like(p)
    for g in ([0.3, -0.1, 0.2], [0.1, 0.4, -0.5], [-0.2, 0.0, 0.3]):
        g = np.asarray(g, np.float32)
        updates, state = tx.update(jnp.asarray(g), state, params)
        params = optax.apply_updates(params, updates)
        buf = mom * buf + g + wd * p
        p = p - lr * buf
        np.testing.assert_allclose(np.asarray(params), p, rtol=1e-5, atol=1e-6)


def test_teacher_frozen_student_trains():
    config = tiny.get_config("stfpm")
    detector = detectors.build(config)
    images = jax.random.uniform(jax.random.key(1), (2, 32, 32, 1))
    variables = detector.init(jax.random.key(0), images[:1])
    assert set(variables) == {"params", "batch_stats", "backbone"}
    # The student is the teacher's architecture: the same leaves, different random values.
    assert jax.tree.structure(variables["params"]) == jax.tree.structure(variables["backbone"]["params"])
    state = TrainState.create(variables, detector.optimizer)
    # The optimiser holds slots for the student only: its state has no more elements than
    # the student's parameters times the number of slots (SGD momentum: one).
    student_size = sum(x.size for x in jax.tree.leaves(state.params))
    opt_size = sum(x.size for x in jax.tree.leaves(state.opt_state))
    assert opt_size == student_size
    step = jax.jit(guard_nonfinite(detector.train_step))
    new = state
    for i in range(2):
        new, metrics = step(new, {"image": images}, jax.random.key(i), None)
        assert np.isfinite(float(metrics["loss"])) and float(metrics["nonfinite"]) == 0.0
    assert int(new.step) == 2
    for a, b in zip(jax.tree.leaves(state.collections["backbone"]), jax.tree.leaves(new.collections["backbone"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(new.params))]
    assert np.mean(changed) > 0.9, "most student parameters should move after two SGD steps"
    stats_changed = [
        not np.array_equal(a, b)
        for a, b in zip(
            jax.tree.leaves(state.collections["batch_stats"]), jax.tree.leaves(new.collections["batch_stats"])
        )
    ]
    assert all(stats_changed), "the student's BatchNorm runs in train mode and updates its running statistics"

    out = detector.anomaly_map(new.variables, images)
    assert out["map"].shape == (2, 32, 32) and out["score"].shape == (2,)
    assert np.all(np.isfinite(np.asarray(out["map"]))) and np.all(np.asarray(out["map"]) >= 0)
    np.testing.assert_allclose(np.asarray(out["score"]), np.asarray(out["map"]).max(axis=(1, 2)), rtol=1e-6)


def test_pretrained_replaces_teacher_only():
    detector = detectors.build(tiny.get_config("stfpm"))
    variables = jax.tree.map(np.asarray, detector.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1))))
    loaded = detector.pretrained(variables)
    for a, b in zip(jax.tree.leaves(variables["params"]), jax.tree.leaves(loaded["params"])):
        np.testing.assert_array_equal(a, b)
    teacher_changed = [
        not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(variables["backbone"]), jax.tree.leaves(loaded["backbone"]))
    ]
    assert all(teacher_changed)


def test_bad_config_names_the_key():
    config = tiny.get_config("stfpm")
    config.loss.batch_reduction = "median"
    with pytest.raises(ValueError, match="config.loss.batch_reduction"):
        detectors.build(config)
