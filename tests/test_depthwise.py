"""Depthwise convolution per platform (xray_flax/nn/depthwise.py): the XLA:CPU shifted-slice
form equals XLA's grouped convolution, forward and gradients, for the strides, kernels and
paddings EfficientNet uses; lowering picks it for CPU only (exported StableHLO, no GPU needed)."""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from xray_flax.nn import depthwise

pytestmark = pytest.mark.gpu  # the forms must agree on a GPU too (benchmarks/device/run_gpu.py)

CASES = [  # (x shape, kernel, stride, padding)
    ((2, 9, 11, 5), 3, 1, "SAME"),
    ((2, 9, 11, 5), 3, 2, "SAME"),  # TF 'same': the extra pixel after
    ((1, 16, 16, 8), 5, 2, "SAME"),
    ((1, 8, 7, 4), 5, 1, ((2, 2), (2, 2))),  # torch-style symmetric padding (B5)
    ((1, 8, 8, 4), 3, 2, ((1, 1), (1, 1))),
    ((1, 6, 6, 3), 3, 1, "VALID"),
]


def _inputs(shape, k):
    x = jax.random.normal(jax.random.key(0), shape)
    w = jax.random.normal(jax.random.key(1), (k, k, 1, shape[-1])) * 0.3
    return x, w


@pytest.mark.parametrize("shape,k,stride,padding", CASES)
def test_cpu_form_equals_the_grouped_convolution(shape, k, stride, padding):
    x, w = _inputs(shape, k)
    strides = (stride, stride)
    cpu = lambda a, b: depthwise.depthwise_conv_cpu(a, b, strides, padding)  # noqa: E731
    native = lambda a, b: depthwise.depthwise_conv_native(a, b, strides, padding)  # noqa: E731
    np.testing.assert_allclose(cpu(x, w), native(x, w), rtol=1e-5, atol=1e-5)
    loss = lambda f: lambda a, b: jnp.sum(jnp.sin(f(a, b)))  # noqa: E731
    g_cpu = jax.grad(loss(cpu), argnums=(0, 1))(x, w)
    g_native = jax.grad(loss(native), argnums=(0, 1))(x, w)
    for a, b in zip(g_cpu, g_native):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_flax_conv_hook_routes_depthwise_only():
    x = jax.random.normal(jax.random.key(0), (1, 10, 10, 6))
    for groups, out in ((6, 6), (1, 4), (2, 6)):  # depthwise; plain; grouped (not depthwise)
        plain = nn.Conv(out, (3, 3), strides=2, padding="SAME", feature_group_count=groups, use_bias=False)
        hooked = nn.Conv(
            out,
            (3, 3),
            strides=2,
            padding="SAME",
            feature_group_count=groups,
            use_bias=False,
            conv_general_dilated=depthwise.conv_general_dilated,
        )
        variables = plain.init(jax.random.key(1), x)
        np.testing.assert_allclose(hooked.apply(variables, x), plain.apply(variables, x), rtol=1e-5, atol=1e-5)


def _ops(fn, *args, platform):
    text = export.export(jax.jit(fn), platforms=[platform])(*args).mlir_module()
    return set(re.findall(r"stablehlo\.([a-z_]+)", text))


def test_lowering_picks_the_shifted_form_on_cpu_and_the_convolution_elsewhere():
    x, w = _inputs((1, 8, 8, 4), 3)
    fn = lambda a, b: depthwise.depthwise_conv(a, b, (2, 2), "SAME")  # noqa: E731
    assert "convolution" not in _ops(fn, x, w, platform="cpu")
    assert "convolution" in _ops(fn, x, w, platform="cuda")
    assert "convolution" in _ops(fn, x, w, platform="tpu")
