"""The torch-rule optimisers (xray_flax.optim.make_torch_optimizer) against torch's update rules
written out in NumPy (float64), step by step, on a small parameter tree.

torch.optim.{Adam, SGD, AdamW}.step, single-tensor path, per parameter p with gradient g:

    clip_grad_norm_(max_norm)  (before step): c = max_norm / (|g|_global + 1e-6); g *= c if c < 1
    Adam:   g += wd p; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2; [amsgrad: v_max = max(v_max, v)]
            p -= lr / (1 - b1^t) * m / (sqrt(v or v_max) / sqrt(1 - b2^t) + eps)
    AdamW:  p *= 1 - lr wd, then Adam's step without the wd term
    SGD:    g += wd p; b = g at t = 1, else momentum b + g (no dampening, no Nesterov); p -= lr b
"""

from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from xray_flax.optim import make_torch_optimizer

SHAPES = {"a": (2, 3), "b": {"c": (4,)}}


def _tree(rng, scale=1.0):
    return jax.tree.map(lambda s: rng.normal(size=s) * scale, SHAPES, is_leaf=lambda x: isinstance(x, tuple))


class TorchReference:
    """torch's rule in float64 over a flat list of NumPy arrays."""

    def __init__(self, params, algorithm, optim):
        self.p = [np.asarray(x, np.float64) for x in params]
        self.algorithm = algorithm
        self.lr = float(optim.learning_rate)
        self.wd = float(optim.get("weight_decay", 0.0))
        self.clip = float(optim.get("grad_clip_norm", 0.0))
        self.momentum = float(optim.get("momentum", 0.0))
        self.b1, self.b2 = float(optim.get("b1", 0.9)), float(optim.get("b2", 0.999))
        self.eps = float(optim.get("eps", 1e-8))
        self.amsgrad = bool(optim.get("amsgrad", False))
        zeros = [np.zeros_like(x) for x in self.p]
        self.m, self.v, self.v_max, self.buf = list(zeros), list(zeros), list(zeros), None
        self.t = 0

    def step(self, grads):
        g = [np.asarray(x, np.float64) for x in grads]
        if self.clip > 0:  # torch.nn.utils.clip_grad_norm_
            total = np.sqrt(sum(np.sum(x * x) for x in g))
            coef = self.clip / (total + 1e-6)
            if coef < 1:
                g = [x * coef for x in g]
        self.t += 1
        if self.algorithm == "sgd":
            g = [x + self.wd * p for x, p in zip(g, self.p)]
            if self.momentum:
                self.buf = g if self.buf is None else [self.momentum * b + x for b, x in zip(self.buf, g)]
                g = self.buf
            self.p = [p - self.lr * x for p, x in zip(self.p, g)]
            return
        if self.algorithm == "adam":
            g = [x + self.wd * p for x, p in zip(g, self.p)]
        else:  # adamw
            self.p = [p * (1 - self.lr * self.wd) for p in self.p]
        b1, b2, t = self.b1, self.b2, self.t
        self.m = [b1 * m + (1 - b1) * x for m, x in zip(self.m, g)]
        self.v = [b2 * v + (1 - b2) * x * x for v, x in zip(self.v, g)]
        self.v_max = [np.maximum(a, b) for a, b in zip(self.v_max, self.v)]
        second = self.v_max if self.amsgrad else self.v
        step_size = self.lr / (1 - b1**t)
        self.p = [
            p - step_size * m / (np.sqrt(v) / np.sqrt(1 - b2**t) + self.eps) for p, m, v in zip(self.p, self.m, second)
        ]


def _run(tx, algorithm, optim, steps=6, seed=0):
    rng = np.random.default_rng(seed)
    params64 = _tree(rng)
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params64)
    ref = TorchReference(jax.tree.leaves(params64), algorithm, optim)
    state = tx.init(params)
    for step in range(steps):
        grads64 = _tree(rng, scale=[0.1, 3.0, 0.5, 10.0, 0.02, 1.0][step % 6])
        updates, state = tx.update(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), grads64), state, params)
        params = optax.apply_updates(params, updates)
        ref.step(jax.tree.leaves(grads64))
        for got, want in zip(jax.tree.leaves(params), ref.p):
            np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=2e-6, err_msg=f"step {step + 1}")
    return params


CASES = {
    "adam": dict(learning_rate=0.05, b1=0.9, b2=0.999, eps=1e-8),
    "adam, coupled decay, clipped": dict(
        learning_rate=0.05, b1=0.8, b2=0.99, eps=1e-4, weight_decay=0.1, grad_clip_norm=1.0
    ),
    "adam, amsgrad, coupled decay": dict(learning_rate=0.05, weight_decay=0.05, amsgrad=True),
    "adamw": dict(learning_rate=0.05, weight_decay=0.1, amsgrad=False),
    "adamw, amsgrad": dict(learning_rate=0.05, weight_decay=0.1, amsgrad=True, b1=0.9, b2=0.999, eps=1e-8),
    "adamw, amsgrad, clipped": dict(learning_rate=0.05, weight_decay=0.1, amsgrad=True, grad_clip_norm=2.0),
    "sgd": dict(learning_rate=0.1),
    "sgd, momentum, coupled decay": dict(learning_rate=0.1, momentum=0.9, weight_decay=0.01),
    "sgd, momentum, clipped": dict(learning_rate=0.1, momentum=0.5, grad_clip_norm=1.0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_torch_rule(case):
    algorithm = case.split(",")[0]
    optim = ml_collections.ConfigDict(CASES[case])
    _run(make_torch_optimizer(optim, algorithm), algorithm, optim)


@pytest.mark.parametrize(
    "name, algorithm", [("stfpm", "sgd"), ("fastflow", "adam"), ("csflow", "adam"), ("cfa", "adamw")]
)
def test_each_baseline_trains_with_its_torch_optimiser(name, algorithm):
    """Each baseline's optimiser, from its default config (the rate raised so the steps move)."""
    steps = importlib.import_module(f"xray_flax.detectors.{name}.steps")
    optim = importlib.import_module(f"configs.{name}").get_config().optim
    optim.learning_rate = 0.05
    _run(steps.make_optimizer(optim), algorithm, optim)


def test_terms_that_are_off_leave_no_chain_element():
    """No decay, no clip: the chain holds the direction alone (checkpointed optimiser states
    keep the shape they had before the factory was shared)."""
    plain = ml_collections.ConfigDict({"learning_rate": 0.1})
    assert len(make_torch_optimizer(plain, "adam").init({"w": jnp.zeros(2)})) == 1
    assert len(make_torch_optimizer(plain, "sgd").init({"w": jnp.zeros(2)})) == 1
    full = ml_collections.ConfigDict({"learning_rate": 0.1, "weight_decay": 0.1, "grad_clip_norm": 1.0})
    assert len(make_torch_optimizer(full, "adam").init({"w": jnp.zeros(2)})) == 3
    assert len(make_torch_optimizer(full, "adamw").init({"w": jnp.zeros(2)})) == 4


def test_unknown_algorithm_is_refused():
    with pytest.raises(ValueError, match="torch optimiser"):
        make_torch_optimizer(ml_collections.ConfigDict({"learning_rate": 0.1}), "rmsprop")
