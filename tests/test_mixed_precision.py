"""config.model.compute_dtype='bfloat16': convs run in bf16, parameters, outputs and the loss stay fp32."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from xray_flax import detectors
from xray_flax.detectors import TrainState
from xray_flax.detectors.draem import network as draem_model

pytestmark = pytest.mark.gpu  # bf16 is where a GPU differs most (benchmarks/device/run_gpu.py)


def _setup(dtype: str):
    config = tiny.get_config()
    config.model.compute_dtype = dtype
    detector = detectors.build(config)
    model = draem_model.build_model(config.model, 1)
    sample = jnp.asarray(np.random.default_rng(0).random((2, 32, 32, 1), np.float32))
    state = TrainState.create(detector.init(jax.random.key(0), sample), detector.optimizer)
    return detector, model, state, sample


@pytest.fixture(scope="module")
def bf16():
    return _setup("bfloat16")


def test_bf16_convolutions_compute_in_bf16(bf16):
    _, model, state, sample = bf16
    variables = state.variables
    hlo = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, sample).as_text()
    convs = [line for line in hlo.splitlines() if "stablehlo.convolution" in line]
    assert convs and all("xbf16>" in line.split("->")[-1] for line in convs), convs[:2]


def test_bf16_keeps_params_outputs_and_loss_fp32(bf16):
    detector, model, state, sample = bf16
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.float32)}
    step = jax.jit(detector.train_step)
    new_state, metrics = step(state, {"image": sample}, jax.random.key(1), detector.make_aux())
    assert metrics["loss"].dtype == jnp.float32 and bool(jnp.isfinite(metrics["loss"]))
    assert {x.dtype for x in jax.tree.leaves(new_state.params)} == {jnp.dtype(jnp.float32)}
    assert {x.dtype for x in jax.tree.leaves(new_state.collections)} == {jnp.dtype(jnp.float32)}
    reconstruction, logits = model.apply(state.variables, sample)
    assert reconstruction.dtype == jnp.float32 and logits.dtype == jnp.float32


def test_bf16_forward_close_to_fp32(bf16):
    _, model16, state, sample = bf16
    _, model32, _, _ = _setup("float32")
    variables = state.variables  # same weights for both
    rec16, logits16 = model16.apply(variables, sample)
    rec32, logits32 = model32.apply(variables, sample)
    # bf16 keeps 8 mantissa bits (~0.4% per op); a few dozen layers stay within a few percent.
    scale = float(jnp.std(rec32)) + 1e-6
    assert float(jnp.max(jnp.abs(rec16 - rec32))) / scale < 0.1
    p16, p32 = jax.nn.softmax(logits16)[..., 1], jax.nn.softmax(logits32)[..., 1]
    assert float(jnp.max(jnp.abs(p16 - p32))) < 0.05
