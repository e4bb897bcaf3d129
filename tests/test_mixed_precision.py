"""config.model.compute_dtype='bfloat16': convs run in bf16, parameters, outputs and the loss stay fp32."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from xray_flax import steps
from xray_flax.anomaly import SynthesisSpec, load_texture_bank
from xray_flax.models import registry


def _setup(dtype: str):
    config = tiny.get_config()
    config.model.compute_dtype = dtype
    model = registry.build_model(config.model, 1)
    tx = steps.make_optimizer(config.optim, 10)
    sample = jnp.asarray(np.random.default_rng(0).random((2, 32, 32, 1), np.float32))
    state = steps.init_state(model, tx, jax.random.key(0), sample)
    return config, model, tx, state, sample


@pytest.fixture(scope="module")
def bf16():
    return _setup("bfloat16")


def test_bf16_convolutions_compute_in_bf16(bf16):
    _, model, _, state, sample = bf16
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    hlo = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, sample).as_text()
    convs = [line for line in hlo.splitlines() if "stablehlo.convolution" in line]
    assert convs and all("xbf16>" in line.split("->")[-1] for line in convs), convs[:2]


def test_bf16_keeps_params_outputs_and_loss_fp32(bf16):
    config, model, tx, state, sample = bf16
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.float32)}
    spec = SynthesisSpec.from_config(config.anomaly, 1)
    textures = jnp.asarray(load_texture_bank(config.anomaly, 32, 1))
    step = jax.jit(functools.partial(steps.train_step, model=model, tx=tx, spec=spec, loss_config=config.loss))
    new_state, metrics = step(state, {"image": sample}, textures, jax.random.key(1))
    assert metrics["loss"].dtype == jnp.float32 and bool(jnp.isfinite(metrics["loss"]))
    assert {x.dtype for x in jax.tree.leaves(new_state.params)} == {jnp.dtype(jnp.float32)}
    assert {x.dtype for x in jax.tree.leaves(new_state.batch_stats)} == {jnp.dtype(jnp.float32)}
    reconstruction, logits = model.apply({"params": state.params, "batch_stats": state.batch_stats}, sample)
    assert reconstruction.dtype == jnp.float32 and logits.dtype == jnp.float32


def test_bf16_forward_close_to_fp32(bf16):
    _, model16, _, state, sample = bf16
    _, model32, _, _, _ = _setup("float32")
    variables = {"params": state.params, "batch_stats": state.batch_stats}  # same weights for both
    rec16, logits16 = model16.apply(variables, sample)
    rec32, logits32 = model32.apply(variables, sample)
    # bf16 keeps 8 mantissa bits (~0.4% per op); a few dozen layers stay within a few percent.
    scale = float(jnp.std(rec32)) + 1e-6
    assert float(jnp.max(jnp.abs(rec16 - rec32))) / scale < 0.1
    p16, p32 = jax.nn.softmax(logits16)[..., 1], jax.nn.softmax(logits32)[..., 1]
    assert float(jnp.max(jnp.abs(p16 - p32))) < 0.05
