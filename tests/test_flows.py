"""Coupling blocks of xray_flax/nn/flows.py: log-determinants against the numerical Jacobian,
exact inverses, clamp bounds, a NumPy reference of FrEIA's AllInOneBlock, parameter counts of
the published anomalib models."""

from __future__ import annotations

import math
import re
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from xray_flax.nn import flows, layers


def random_variables(module, *args, seed=0, scale=0.3):
    """Variables of `module` with random values from NumPy, in the shapes of module.init.

    Kernels are uniform in +-1/sqrt(fan_in) (torch's default), every other float parameter is
    its init value's scale plus noise, so global affines and CS-Flow's gammas (0 at init: the
    identity) are non-trivial; permutations are random. NumPy, not module.init, because
    compiling JAX's PRNG for every parameter shape takes most of a test's time on the 2-core CI.
    """
    shapes = jax.eval_shape(module.init, jax.random.key(0), *args)
    rng = np.random.default_rng(seed)

    def param(path, leaf):
        name = jax.tree_util.keystr(path)
        if len(leaf.shape) == 4:
            bound = 1.0 / math.sqrt(math.prod(leaf.shape[:3]))
            return jnp.asarray(rng.uniform(-bound, bound, leaf.shape), jnp.float32)
        base = 1.0 if "gamma" in name else 0.0
        if "global_scale" in name:
            base = 2.0 * math.log(math.expm1(5.0))  # FrEIA's start: g = 1
        return jnp.asarray(base + scale * rng.standard_normal(leaf.shape), jnp.float32)

    def permutation(leaf):
        rows = [rng.permutation(leaf.shape[-1]) for _ in range(math.prod(leaf.shape[:-1]))]
        return jnp.asarray(np.reshape(rows, leaf.shape), jnp.int32)

    out = {"params": jax.tree_util.tree_map_with_path(param, shapes["params"])}
    if flows.CONSTANTS in shapes:
        out[flows.CONSTANTS] = jax.tree.map(permutation, shapes[flows.CONSTANTS])
    return out


def numerical_logdet(fn, x_flat):
    jac = jax.jit(jax.jacfwd(fn))(x_flat)  # one compilation instead of op-by-op dispatch
    sign, logabs = np.linalg.slogdet(np.asarray(jac, np.float64))
    assert sign != 0
    return logabs


def csflow_inputs(key, batch, side, channels, scales=3):
    keys = jax.random.split(key, scales)
    return [jax.random.normal(k, (batch, side >> i, side >> i, channels)) for i, k in enumerate(keys)]


# ------------------------------------------------------------------ log-determinants


def test_allinone_block_logdet_is_the_jacobian_logdet():
    shape = (1, 2, 2, 4)
    x = jax.random.normal(jax.random.key(1), shape)
    block = flows.AllInOneBlock(4, kernel_size=3, clamp=2.0)
    variables = random_variables(block, x, seed=2)
    _, logdet = block.apply(variables, x)

    def f(flat):
        return block.apply(variables, flat.reshape(shape))[0].reshape(-1)

    assert logdet.shape == (1,)
    np.testing.assert_allclose(float(logdet[0]), numerical_logdet(f, x.reshape(-1)), rtol=1e-4, atol=1e-4)


def test_allinone_stack_logdet_is_the_jacobian_logdet_per_sample():
    shape = (2, 2, 2, 5)  # odd channels: split 3 + 2 as FrEIA
    x = jax.random.normal(jax.random.key(1), shape)
    flow = flows.AllInOneFlow(5, steps=2, hidden_ratio=1.0, clamp=2.0)  # a 3x3 and a 1x1 subnet
    variables = random_variables(flow, x, seed=3)
    _, logdet = flow.apply(variables, x)
    for b in range(2):

        def f(flat, b=b):
            xb = x.at[b].set(flat.reshape(shape[1:]))
            return flow.apply(variables, xb)[0][b].reshape(-1)

        np.testing.assert_allclose(float(logdet[b]), numerical_logdet(f, x[b].reshape(-1)), rtol=1e-4, atol=1e-4)


def _scales_fn(module, variables, xs):
    sizes = [int(np.prod(x.shape)) for x in xs]
    shapes = [x.shape for x in xs]

    def f(flat):
        parts = jnp.split(flat, np.cumsum(sizes)[:-1])
        ys, _ = module.apply(variables, [p.reshape(s) for p, s in zip(parts, shapes)])
        return jnp.concatenate([y.reshape(-1) for y in ys])

    return f, jnp.concatenate([x.reshape(-1) for x in xs])


def test_csflow_coupling_logdet_is_the_jacobian_logdet():
    xs = csflow_inputs(jax.random.key(1), 1, 4, 4)  # 4x4, 2x2, 1x1 maps of 4 channels: 84 dims
    coupling = flows.ParallelGlowCoupling(4, hidden_channels=6, kernel_size=3, clamp=3.0)
    variables = random_variables(coupling, xs, seed=2)
    _, logdet = coupling.apply(variables, xs)
    f, flat = _scales_fn(coupling, variables, xs)
    assert abs(float(logdet[0])) > 0.1  # the gammas are no longer 0: a real transform
    np.testing.assert_allclose(float(logdet[0]), numerical_logdet(f, flat), rtol=1e-4, atol=1e-4)


def test_cross_scale_flow_logdet_is_the_jacobian_logdet():
    xs = csflow_inputs(jax.random.key(1), 1, 4, 5)  # blocks with 3x3 and 5x5 subnets, odd channels
    flow = flows.CrossScaleFlow(5, scales=3, blocks=2, hidden_channels=6, independent_scale_permutations=True)
    variables = random_variables(flow, xs, seed=4)
    _, logdet = flow.apply(variables, xs)
    f, flat = _scales_fn(flow, variables, xs)
    np.testing.assert_allclose(float(logdet[0]), numerical_logdet(f, flat), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ inverses


def test_allinone_inverse():
    x = jax.random.normal(jax.random.key(1), (3, 6, 5, 7))
    flow = flows.AllInOneFlow(7, steps=4)
    variables = random_variables(flow, x, seed=2)
    z, _ = jax.jit(flow.apply)(variables, x)
    assert not np.allclose(z, x)
    np.testing.assert_allclose(jax.jit(lambda v, z: flow.apply(v, z, method=flow.inverse))(variables, z), x, atol=1e-5)


@pytest.mark.parametrize("independent", [False, True])
def test_cross_scale_flow_inverse(independent):
    xs = csflow_inputs(jax.random.key(1), 2, 8, 6)
    flow = flows.CrossScaleFlow(6, blocks=2, hidden_channels=8, independent_scale_permutations=independent)
    variables = random_variables(flow, xs, seed=2, scale=0.2)
    zs, _ = jax.jit(flow.apply)(variables, xs)
    back = jax.jit(lambda v, z: flow.apply(v, z, method=flow.inverse))(variables, zs)
    for x, z, xb in zip(xs, zs, back):
        assert not np.allclose(z, x)
        np.testing.assert_allclose(xb, x, atol=1e-5)


def test_cross_scale_flow_starts_as_a_permutation():
    """gamma = 0 at init [original]: every coupling is the identity, z = permuted x, logdet 0."""
    xs = csflow_inputs(jax.random.key(1), 2, 8, 6)
    flow = flows.CrossScaleFlow(6, blocks=1, hidden_channels=4)
    variables = flow.init(jax.random.key(0), xs)
    zs, logdet = flow.apply(variables, xs)
    np.testing.assert_array_equal(logdet, 0.0)
    for x, z in zip(xs, zs):
        np.testing.assert_allclose(np.sort(np.asarray(z), axis=-1), np.sort(np.asarray(x), axis=-1))


def test_permutations_are_fixed_constants():
    x = jnp.zeros((1, 2, 2, 16))
    flow = flows.AllInOneFlow(16, steps=3, conv3x3_only=True)
    variables = flow.init(jax.random.key(0), x)
    perms = [np.asarray(variables["constants"][f"block_{i}"]["permutation"]) for i in range(3)]
    for p in perms:
        np.testing.assert_array_equal(np.sort(p), np.arange(16))
    assert len({tuple(p) for p in perms}) == 3  # one draw per block
    again = flow.init(jax.random.key(0), x)["constants"]
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), variables["constants"], again))


# ------------------------------------------------------------------ clamps


def test_soft_clamps_are_bounded():
    a = jnp.asarray([-1e9, -1e3, -3.0, 0.0, 3.0, 1e3, 1e9])
    assert float(jnp.max(jnp.abs(flows.soft_clamp_tanh(a, 2.0)))) <= 2.0
    atan = flows.soft_clamp_atan(a, 3.0)
    assert float(jnp.max(jnp.abs(atan))) <= 3.0 * 0.636 * math.pi / 2 < 3.0
    np.testing.assert_allclose(flows.soft_clamp_atan(jnp.asarray(1e-4), 3.0), 0.636e-4, rtol=1e-3)  # slope 0.636


def test_allinone_clamp_holds_for_large_subnet_outputs():
    x = 10.0 * jax.random.normal(jax.random.key(1), (2, 3, 3, 6))
    block = flows.AllInOneBlock(6, kernel_size=3, clamp=2.0)
    variables = random_variables(block, x, scale=0.0)  # global scale 1, offsets and biases 0
    params = variables["params"]
    subnet = jax.tree.map(lambda w: 1e3 * w, params["subnet"])  # subnet outputs in the thousands
    variables = dict(variables, params=dict(params, subnet=subnet))
    _, logdet = block.apply(variables, x)
    coupling = np.asarray(logdet)  # the global scale is 1 at init: log g = 0
    elements = 9 * 3  # H * W * c2 log-scales s, each with |s| <= clamp
    assert np.all(np.abs(coupling) <= 2.0 * elements + 1e-3)
    # Saturated: every s is +-2 (tanh(100s) = +-1), so the sum is 2 * (elements - 2 * negatives).
    np.testing.assert_allclose((coupling / 2.0 - elements) % 2.0, 0.0, atol=1e-3)


def test_csflow_clamp_holds_for_large_subnet_outputs():
    xs = [10.0 * x for x in csflow_inputs(jax.random.key(1), 2, 4, 6)]
    coupling = flows.ParallelGlowCoupling(6, hidden_channels=8, clamp=3.0)
    variables = random_variables(coupling, xs)
    variables = dict(variables, params=jax.tree.map(lambda w: 1e3 * w + 1.0, variables["params"]))
    zs, logdet = coupling.apply(variables, xs)
    elements = 6 * (16 + 4 + 1)  # every element gets one log-scale per coupling
    assert np.all(np.abs(np.asarray(logdet)) <= 3.0 * 0.999 * elements)
    assert all(np.all(np.abs(np.asarray(z)) <= flows.Z_LIMIT) for z in zs)


# ------------------------------------------------------------------ a NumPy reference of FrEIA's block


def conv_same_np(x, w, b):
    """x [B, H, W, I], w [k, k, I, O] (HWIO), zero padding k // 2: torch Conv2d(padding=k//2)."""
    k = w.shape[0]
    p = k // 2
    xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    h, wd = x.shape[1:3]
    out = np.zeros(x.shape[:3] + (w.shape[-1],))
    for dy in range(k):
        for dx in range(k):
            out += np.einsum("bhwi,io->bhwo", xp[:, dy : dy + h, dx : dx + wd], w[dy, dx])
    return out + b


def allinone_np(x, params, perm, clamp):
    """FrEIA AllInOneBlock.forward (affine, SOFTPLUS global affine, hard permutation), NHWC."""
    c = x.shape[-1]
    c1, c2 = c - c // 2, c // 2
    x1, x2 = x[..., :c1], x[..., c1:]
    sub = params["subnet"]
    h = np.maximum(conv_same_np(x1, sub["conv0"]["kernel"], sub["conv0"]["bias"]), 0.0)
    a = 0.1 * conv_same_np(h, sub["conv1"]["kernel"], sub["conv1"]["bias"])
    s = clamp * np.tanh(a[..., :c2])
    u = np.concatenate([x1, x2 * np.exp(s) + a[..., c2:]], axis=-1)
    g = 0.1 * np.log1p(np.exp(0.5 * params["global_scale"])) / 0.5  # 0.1 * Softplus(beta=0.5)
    y = (u * g + params["global_offset"])[..., perm]  # conv1x1 with w[i, perm[i]] = 1
    logdet = s.sum(axis=(1, 2, 3)) + x.shape[1] * x.shape[2] * np.log(g).sum()
    return y, logdet


def test_allinone_block_matches_numpy_freia_formula():
    x = jax.random.normal(jax.random.key(1), (2, 4, 3, 6))
    block = flows.AllInOneBlock(6, kernel_size=3, hidden_ratio=1.5, clamp=2.0)
    variables = random_variables(block, x, seed=2)
    y, logdet = block.apply(variables, x)
    params = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
    assert params["subnet"]["conv0"]["kernel"].shape == (3, 3, 3, 4)  # hidden = int(c1 * ratio) = 4
    ref_y, ref_logdet = allinone_np(
        np.asarray(x, np.float64), params, np.asarray(variables["constants"]["permutation"]), 2.0
    )
    np.testing.assert_allclose(y, ref_y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logdet, ref_logdet, rtol=1e-5, atol=1e-4)


def test_allinone_global_scale_starts_at_one():
    """FrEIA: gamma = 2 log(exp(5 * init) - 1) gives 0.1 * softplus_{0.5}(gamma) = init."""
    block = flows.AllInOneBlock(4)
    variables = block.init(jax.random.key(0), jnp.zeros((1, 2, 2, 4)))
    g = 0.2 * jax.nn.softplus(0.5 * variables["params"]["global_scale"])
    np.testing.assert_allclose(g, 1.0, rtol=1e-6)


# ------------------------------------------------------------------ parameter counts of the published models


def param_count(module, *args) -> int:
    shapes = jax.eval_shape(module.init, jax.random.key(0), *args)["params"]
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))


def test_fastflow_resnet18_flow_parameter_counts_match_anomalib():
    """anomalib 2.7 create_fast_flow_block(8 steps, ratio 1.0) on ResNet-18 layers 1-3 at 256 px,
    counted in the peer venv: 124,672 / 495,104 / 1,973,248 trainable parameters."""
    for channels, side, expected in [(64, 64, 124_672), (128, 32, 495_104), (256, 16, 1_973_248)]:
        x = jax.ShapeDtypeStruct((1, side, side, channels), jnp.float32)
        assert param_count(flows.AllInOneFlow(channels, steps=8), x) == expected


def test_csflow_parameter_count_matches_anomalib():
    """anomalib 2.7 CrossScaleFlow((3, 768, 768), 4 blocks, clamp 3, hidden 1024) on EfficientNet-B5's
    304-channel maps 24/12/6: 275,227,288 trainable parameters (counted in the peer venv)."""
    xs = [jax.ShapeDtypeStruct((1, s, s, 304), jnp.float32) for s in (24, 12, 6)]
    assert param_count(flows.CrossScaleFlow(304, scales=3, blocks=4, hidden_channels=1024), xs) == 275_227_288


def test_scale_mismatch_is_a_clear_error():
    flow = flows.CrossScaleFlow(4, blocks=1, hidden_channels=4)
    xs = [jnp.zeros((1, 4, 4, 4)), jnp.zeros((1, 3, 3, 4)), jnp.zeros((1, 1, 1, 4))]
    with pytest.raises(ValueError, match="halve exactly"):
        jax.eval_shape(flow.init, jax.random.key(0), xs)


# --- TorchConv's convolution per platform (nn/layers.conv2d) ------------------------------------

# (input shape, kernel, out channels, stride, padding): TorchConv pads k // 2; CS-Flow's cross
# convolutions at stride 1 and 2 on 2x2 / 4x4 maps, odd sides, FastFlow's 1x1, a 5x5 kernel.
TORCH_CONV_CASES = [
    ((2, 2, 2, 6), 3, 8, 1, 1),
    ((2, 4, 4, 8), 3, 6, 2, 1),
    ((1, 5, 3, 4), 3, 5, 2, 1),
    ((2, 3, 3, 4), 1, 6, 1, 0),
    ((1, 4, 4, 3), 5, 4, 1, 2),
    ((1, 2, 2, 3), 5, 4, 2, 2),
]


def _sin_loss(fn):
    return lambda *args: jnp.sum(jnp.sin(fn(*args)))


def _conv_forms(stride, padding):
    im2col = lambda a, b: layers.conv2d_im2col(a, b, stride, padding)  # noqa: E731
    native = lambda a, b: layers.conv2d_native(a, b, stride, padding)  # noqa: E731
    return im2col, native


@pytest.mark.gpu  # the forms must agree on a GPU too (benchmarks/device/run_gpu.py)
@pytest.mark.parametrize("shape,k,out,stride,padding", TORCH_CONV_CASES)
def test_conv2d_im2col_equals_lax_conv_in_value_and_gradient(shape, k, out, stride, padding):
    x = jax.random.normal(jax.random.key(0), shape)
    w = jax.random.normal(jax.random.key(1), (k, k, shape[-1], out)) * 0.3
    im2col, native = _conv_forms(stride, padding)
    pads = [(padding, padding)] * 2
    reference = jax.lax.conv_general_dilated(x, w, (stride, stride), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_array_equal(native(x, w), reference)
    np.testing.assert_allclose(im2col(x, w), reference, rtol=1e-5, atol=1e-5)
    g_im2col = jax.grad(_sin_loss(im2col), argnums=(0, 1))(x, w)
    g_native = jax.grad(_sin_loss(native), argnums=(0, 1))(x, w)
    np.testing.assert_allclose(g_im2col[0], g_native[0], rtol=1e-5, atol=1e-5)  # w.r.t. the input
    np.testing.assert_allclose(g_im2col[1], g_native[1], rtol=1e-5, atol=1e-5)  # w.r.t. the kernel
    # the dispatcher, run on this CPU, is the im2col form (every case's output map is small)
    conv = jax.jit(lambda a, b: layers.conv2d(a, b, stride, padding))
    np.testing.assert_array_equal(conv(x, w), jax.jit(im2col)(x, w))


def _op_counts(fn, *args, platform: str) -> Counter:
    """StableHLO op names -> count in fn's jitted lowering for `platform` (no device of it needed)."""
    text = export.export(jax.jit(fn), platforms=[platform])(*args).mlir_module()
    return Counter(re.findall(r"stablehlo\.([a-z_]+)", text))


@pytest.mark.gpu
@pytest.mark.parametrize("platform", ["cuda", "rocm", "tpu"])
def test_torch_conv_lowers_to_lax_conv_off_cpu_and_to_a_matmul_on_cpu_for_small_maps(platform):
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 8))
    w = jax.random.normal(jax.random.key(1), (3, 3, 8, 6))
    for stride in (1, 2):  # 16 and 4 output pixels: both small
        grad = jax.grad(_sin_loss(lambda a, b, s=stride: layers.conv2d(a, b, s, 1)), argnums=(0, 1))
        ops = _op_counts(grad, x, w, platform=platform)
        assert ops["convolution"] == 3 and ops["dot_general"] == 0, ops  # XLA's conv and its autodiff
        cpu = _op_counts(grad, x, w, platform="cpu")
        assert cpu["convolution"] == 0 and cpu["dot_general"] == 3, cpu  # forward, d/dx, d/dw
    # larger maps: XLA's conv on every platform, no platform_dependent at all
    big = jax.random.normal(jax.random.key(0), (1, 8, 8, 8))
    grad = jax.grad(_sin_loss(lambda a, b: layers.conv2d(a, b, 1, 1)), argnums=(0, 1))
    for p in (platform, "cpu"):
        ops = _op_counts(grad, big, w, platform=p)
        assert ops["convolution"] == 3 and ops["dot_general"] == 0 and ops["case"] == 0, ops


def test_cross_convolutions_use_the_cpu_matmul_on_small_maps(monkeypatch):
    """CS-Flow's TorchConvs go through nn/layers.conv2d: on CPU a 2x2 / 1x1 pyramid has no conv left."""
    module = flows.CrossConvolutions(4, 8, 3)
    xs = [jax.random.normal(jax.random.key(0), (1, 2, 2, 3)), jax.random.normal(jax.random.key(1), (1, 1, 1, 3))]
    variables = random_variables(module, xs)
    apply = lambda v: module.apply(v, xs)  # noqa: E731
    assert _op_counts(apply, variables, platform="cpu")["convolution"] == 0
    assert _op_counts(apply, variables, platform="cuda")["convolution"] == 6  # per scale 2, plus up and down
    outs = jax.jit(apply)(variables)
    monkeypatch.setattr(flows, "conv2d", lambda x, w, s, p: layers.conv2d_native(x, w, s, p))
    for a, b in zip(outs, jax.jit(apply)(variables), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
