"""Per-platform kernels of nn/layers.py: the XLA:CPU forms and XLA's native forms agree, and
lowering picks the CPU form for CPU only (checked on the exported StableHLO, no GPU needed)."""

from __future__ import annotations

import re
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from xray_flax.nn import layers

pytestmark = pytest.mark.gpu  # the forms must agree on a GPU too (benchmarks/device/run_gpu.py)


def _op_counts(fn, *args, platform: str) -> Counter:
    """StableHLO op names -> count in fn's jitted lowering for `platform` (no device of it needed)."""
    text = export.export(jax.jit(fn), platforms=[platform])(*args).mlir_module()
    return Counter(re.findall(r"stablehlo\.([a-z_]+)", text))


def _sin_loss(fn):
    return lambda *args: jnp.sum(jnp.sin(fn(*args)))


# one row block; two row blocks; two of the smaller blocks of 64+ channel layers; the
# nine-matmul weight gradient of the widest layers
CONV_CASES = [((2, 16, 12, 3), 5), ((1, 128, 64, 4), 5), ((1, 64, 64, 64), 64), ((2, 8, 6, 256), 256)]


def _conv_inputs(shape, out):
    x = jax.random.normal(jax.random.key(0), shape)
    w = jax.random.normal(jax.random.key(1), (3, 3, shape[-1], out)) * 0.1
    return x, w


@pytest.mark.parametrize("shape,out", CONV_CASES)
def test_conv_cpu_and_native_forms_agree(shape, out):
    x, w = _conv_inputs(shape, out)
    cpu, native = layers.conv3x3_same_cpu, layers.conv3x3_same_native
    np.testing.assert_array_equal(cpu(x, w), native(x, w))  # the same lax conv forward
    g_cpu = jax.grad(_sin_loss(cpu), argnums=(0, 1))(x, w)
    g_native = jax.grad(_sin_loss(native), argnums=(0, 1))(x, w)
    np.testing.assert_allclose(g_cpu[0], g_native[0], rtol=1e-5, atol=1e-5)
    # dL/dw sums over every pixel; row blocks / nine matmuls change the float32 summation order
    np.testing.assert_allclose(g_cpu[1], g_native[1], rtol=1e-4, atol=1e-4)
    # the dispatcher, run on this CPU, is the CPU form
    g = jax.jit(jax.grad(_sin_loss(layers.conv3x3_same), argnums=(0, 1)))(x, w)
    np.testing.assert_array_equal(g[1], jax.jit(jax.grad(_sin_loss(cpu), argnums=(0, 1)))(x, w)[1])


@pytest.mark.parametrize("shape", [(2, 5, 7, 3), (1, 16, 12, 8), (1, 1, 3, 2)])
def test_upsample_cpu_and_native_forms_agree(shape):
    x = jax.random.normal(jax.random.key(0), shape)
    cpu, native = layers.upsample2x_cpu, layers.upsample2x_native
    np.testing.assert_allclose(cpu(x), native(x), rtol=0, atol=1e-6)
    y, vjp_cpu = jax.vjp(cpu, x)
    _, vjp_native = jax.vjp(native, x)
    ct = jax.random.normal(jax.random.key(1), y.shape)
    np.testing.assert_allclose(vjp_cpu(ct)[0], vjp_native(ct)[0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(layers.upsample2x(x), cpu(x), rtol=0, atol=0)
    # align_corners=False is jax.image.resize on every platform
    np.testing.assert_array_equal(cpu(x, align_corners=False), native(x, align_corners=False))


@pytest.mark.parametrize("shape", [(2, 8, 6, 3), (1, 9, 7, 2)])  # odd sizes drop the last row/column
def test_max_pool_cpu_and_native_forms_agree_without_ties(shape):
    x = jax.random.normal(jax.random.key(0), shape)  # continuous values: no ties inside a window
    cpu, native = layers.max_pool2_cpu, layers.max_pool2_native
    np.testing.assert_array_equal(cpu(x), native(x))
    np.testing.assert_array_equal(jax.grad(_sin_loss(cpu))(x), jax.grad(_sin_loss(native))(x))


def test_max_pool_tie_gradient_cpu_shares_native_picks_one():
    x = jnp.array([[1.0, 3.0], [3.0, 0.0]]).reshape(1, 2, 2, 1)  # 3.0 twice in one window
    g_cpu = jax.grad(lambda x: jnp.sum(layers.max_pool2_cpu(x)))(x).reshape(2, 2)
    g_native = jax.grad(lambda x: jnp.sum(layers.max_pool2_native(x)))(x).reshape(2, 2)
    np.testing.assert_allclose(g_cpu, [[0.0, 0.5], [0.5, 0.0]])  # shared equally (docstring)
    assert sorted(np.asarray(g_native).ravel().tolist()) == [0.0, 0.0, 0.0, 1.0]  # all to one input
    assert g_native[0, 0] == g_native[1, 1] == 0.0  # ... and that one is a maximum
    np.testing.assert_allclose(g_cpu.sum(), g_native.sum())
    np.testing.assert_array_equal(jax.grad(lambda x: jnp.sum(layers.max_pool2(x)))(x).reshape(2, 2), g_cpu)


# --- which form each platform gets, read off the lowered StableHLO ----------------------------


# The ops that tell the forms apart. The rest differs by scaffolding only: platform_dependent's
# case/return/constant ops and the zero residuals (broadcast_in_dim) of the branch not taken.
_KERNEL_OPS = ("convolution", "dot_general", "gather", "scatter", "reduce_window", "select_and_scatter", "reduce")


def _same_ops(a: Counter, b: Counter) -> bool:
    return all(a[k] == b[k] for k in _KERNEL_OPS)


@pytest.mark.parametrize("platform", ["cuda", "rocm", "tpu"])
def test_gpu_and_tpu_lowering_use_the_native_conv(platform):
    grad = lambda conv: jax.grad(_sin_loss(conv), argnums=(0, 1))  # noqa: E731
    # two row blocks: the CPU form has one more convolution than XLA's (fwd, dx, dw)
    x, w = _conv_inputs((1, 128, 64, 4), 5)
    ops = _op_counts(grad(layers.conv3x3_same), x, w, platform=platform)
    assert ops["convolution"] == 3, ops
    assert _op_counts(grad(layers.conv3x3_same), x, w, platform="cpu")["convolution"] == 4
    assert _same_ops(ops, _op_counts(grad(layers.conv3x3_same_native), x, w, platform=platform))
    # the widest layers: the CPU form's weight gradient is nine dot_generals, XLA's is a conv
    x, w = _conv_inputs((2, 8, 6, 256), 256)
    ops = _op_counts(grad(layers.conv3x3_same), x, w, platform=platform)
    assert ops["dot_general"] == 0 and ops["convolution"] == 3, ops
    assert _op_counts(grad(layers.conv3x3_same), x, w, platform="cpu")["dot_general"] == 9


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_gpu_and_tpu_lowering_use_native_upsample_and_pool(platform):
    x = jax.random.normal(jax.random.key(0), (1, 8, 6, 3))
    up = jax.grad(_sin_loss(layers.upsample2x))
    gpu, cpu = _op_counts(up, x, platform=platform), _op_counts(up, x, platform="cpu")
    # native: two einsums forward, their two transposes backward; no gathers at all
    assert gpu["dot_general"] == 4 and gpu["gather"] == 0 and gpu["scatter"] == 0, gpu
    assert cpu["gather"] == 8 and cpu["dot_general"] == 0, cpu  # 2 taps x 2 axes, forward and back
    assert _same_ops(gpu, _op_counts(jax.grad(_sin_loss(layers.upsample2x_native)), x, platform=platform))

    pool = jax.grad(_sin_loss(layers.max_pool2))
    gpu, cpu = _op_counts(pool, x, platform=platform), _op_counts(pool, x, platform="cpu")
    assert gpu["reduce_window"] == 1 and gpu["select_and_scatter"] == 1, gpu  # reduce_window's VJP
    assert cpu["reduce_window"] == 0 and cpu["select_and_scatter"] == 0, cpu
    assert _same_ops(gpu, _op_counts(jax.grad(_sin_loss(layers.max_pool2_native)), x, platform=platform))


def test_cpu_lowering_keeps_only_the_cpu_branch_and_compiles_without_conditionals():
    x, w = _conv_inputs((1, 128, 64, 4), 5)

    def step(x, w):
        y = layers.max_pool2(jax.nn.relu(layers.conv3x3_same(x, w)))
        return jnp.sum(jnp.sin(layers.upsample2x(y)))

    def step_cpu(x, w):
        y = layers.max_pool2_cpu(jax.nn.relu(layers.conv3x3_same_cpu(x, w)))
        return jnp.sum(jnp.sin(layers.upsample2x_cpu(y)))

    grad = lambda f: jax.grad(f, argnums=(0, 1))  # noqa: E731
    assert _same_ops(_op_counts(grad(step), x, w, platform="cpu"), _op_counts(grad(step_cpu), x, w, platform="cpu"))
    optimized = jax.jit(grad(step)).lower(x, w).compile().as_text()
    assert "conditional(" not in optimized
    # XLA folds the single-branch conditional away: the same compiled instructions as the CPU forms'
    reference = jax.jit(grad(step_cpu)).lower(x, w).compile().as_text()
    assert _instructions(optimized) == _instructions(reference)


def _instructions(hlo: str) -> list[str]:
    """An optimized HLO module's instructions without names and metadata, sorted."""
    hlo = re.sub(r", metadata=\{[^}]*\}", "", hlo)
    hlo = re.sub(r"%[\w.\-]+", "%v", hlo)
    hlo = re.sub(r"\b(fusion|computation|region|wrapped|call|ynn|body|cond)[\w.\-]*", r"\1", hlo)
    return sorted(line.strip().split(" = ", 1)[-1] for line in hlo.splitlines() if " = " in line)
