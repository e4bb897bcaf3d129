"""Building blocks shared by the reconstructive and discriminative networks.

All tensors are NHWC. Convolutions keep their bias even when a BatchNorm follows: it is
redundant mathematically, but the published models have it and parameter counts are part
of what the tests compare against the papers' networks.

Per-platform kernels. Four kernels have a form tuned on XLA:CPU (measured there only,
docs/performance.md) and XLA's native form; `jax.lax.platform_dependent` picks one when the
computation is lowered, so the same jitted or exported function gets the right one for the
platform it is lowered for, including `jax.export(..., platforms=["cuda"])` on a CPU-only
machine (a Python switch on jax.default_backend() would get that, and a CPU-device jit on a
GPU host, wrong). Both forms are traced; only the chosen one is lowered, and XLA folds the
remaining single-branch conditional away: on CPU the compiled program has the same
instructions as the CPU forms alone (tests/test_nn_platform.py; docs/performance.md,
"Per-platform kernels", for the whole NestedUNet train step and timings):

  kernel          XLA:CPU (``*_cpu``)                            GPU, TPU, others (``*_native``)
  conv3x3_same    custom_vjp: row-blocked / nine-matmul dL/dw     lax.conv_general_dilated, XLA's autodiff
  max_pool2       max over a reshaped 2x2 view                    nn.max_pool (lax.reduce_window)
  upsample2x      banded gathers, custom gather transpose         two dense interpolation einsums
  conv2d          one im2col matmul on output maps <= 36 px       lax.conv_general_dilated (any map)

The CPU tricks work around XLA:CPU's slow whole-image weight-gradient convolution, its slow
reduce_window backward, its slow scatter-adds, and its slow convolutions on tiny maps with many
channels (conv2d: torch.nn.Conv2d's convolution, for nn/flows.TorchConv, whose CPU form is
``conv2d_im2col``); none of that was measured on a GPU or TPU, where these rewrites may well
be slower, so those platforms keep XLA's native forms until a benchmark there shows otherwise.
Both forms are public (``conv3x3_same_cpu``,
``conv3x3_same_native``, ...) so tests and benchmarks can compare them on any machine.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any


def conv_kernel_init(scheme: str) -> Callable:
    """DRAEM initialises conv weights N(0, 0.02); 'default' is PyTorch's Kaiming-uniform."""
    if scheme == "draem":
        return nn.initializers.normal(stddev=0.02)
    if scheme == "default":
        # torch.nn.Conv2d: kaiming_uniform(a=sqrt(5)) == uniform(+-1/sqrt(fan_in)).
        return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
    raise ValueError(f"unknown init scheme {scheme!r}; expected 'draem' or 'default'")


def bn_scale_init(scheme: str) -> Callable:
    if scheme == "draem":
        return lambda key, shape, dtype=jnp.float32: 1.0 + 0.02 * jax.random.normal(key, shape, dtype)
    return nn.initializers.ones


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    if name == "leaky_relu":
        return lambda x: nn.leaky_relu(x, negative_slope=0.2)
    if name == "relu":
        return nn.relu
    raise ValueError(f"unknown activation {name!r}; expected 'leaky_relu' or 'relu'")


def scaled_width(base: int, multiplier: float) -> int:
    """Channel count for a width multiplier; small CPU configs shrink every level alike."""
    return max(1, int(round(base * multiplier)))


# XLA:CPU computes a 3x3 conv's weight gradient as one convolution that contracts over every
# pixel of the image; at 256-512 px that runs ~5x slower per FLOP than the forward conv
# (docs/performance.md, benchmarks/bench_conv.py). Summing the weight gradients of row blocks of
# about this many pixels keeps each contraction cache-sized: 3-4x faster, same result up to
# float summation order. Layers with at least 64 channels on both sides run fastest with half
# that block (2x faster for 128->128 at 128-256 px; benchmarks/bench_weight_grad.py).
_WGRAD_BLOCK_PIXELS = 4096
_WGRAD_BLOCK_PIXELS_WIDE = 2048
# The widest layers (in x out channels at least this) take the weight gradient as nine matmuls
# instead, one per kernel tap, each contracting the shifted input with the output gradient over
# the pixels: 3-4x faster than either conv form for 256-1024 channels at 32-128 px, slower for
# the narrow full-resolution layers (benchmarks/bench_weight_grad.py).
_WGRAD_DOT_MIN_CHANNEL_PRODUCT = 256 * 256
_NHWC = ("NHWC", "HWIO", "NHWC")


def _conv3x3_same(x: jax.Array, w: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=_NHWC)


def _weight_grad_rows(h: int, w: int, cin: int, cout: int) -> int:
    pixels = _WGRAD_BLOCK_PIXELS_WIDE if min(cin, cout) >= 64 else _WGRAD_BLOCK_PIXELS
    rows = max(1, min(h, pixels // max(w, 1)))
    return rows if h % rows == 0 else h


def conv3x3_same_native(x: jax.Array, w: jax.Array) -> jax.Array:
    """3x3, stride 1, zero padding 1, NHWC/HWIO: lax's conv and XLA's own gradient (GPU, TPU)."""
    return _conv3x3_same(x, w)


@jax.custom_vjp
def conv3x3_same_cpu(x: jax.Array, w: jax.Array) -> jax.Array:
    """3x3, stride 1, zero padding 1, NHWC/HWIO: lax's conv with a row-blocked weight gradient."""
    return _conv3x3_same(x, w)


def _conv3x3_fwd(x, w):
    return _conv3x3_same(x, w), (x, w)


def _weight_grad_dots(x: jax.Array, g: jax.Array) -> jax.Array:
    """dL/dw of conv3x3_same as nine [in, pixels] @ [pixels, out] products, in float32."""
    _, h, width, cin = x.shape
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    g2 = g.reshape(-1, g.shape[-1])
    taps = [
        jax.lax.dot_general(
            padded[:, kh : kh + h, kw : kw + width, :].reshape(-1, cin),
            g2,
            (((0,), (0,)), ((), ())),
            preferred_element_type=jnp.float32,
        )
        for kh in range(3)
        for kw in range(3)
    ]
    return jnp.stack(taps).reshape(3, 3, cin, g.shape[-1])


def _weight_grad_row_blocks(x: jax.Array, g: jax.Array, w: jax.Array) -> jax.Array:
    """dL/dw of conv3x3_same as a sum of row-block weight gradients, in float32."""
    _, h, width, cin = x.shape
    rows = _weight_grad_rows(h, width, cin, w.shape[-1])
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    zero = jnp.zeros(w.shape, w.dtype)

    def block_grad(start):
        xb, gb = padded[:, start : start + rows + 2], g[:, start : start + rows]
        valid = lambda k: jax.lax.conv_general_dilated(xb, k, (1, 1), "VALID", dimension_numbers=_NHWC)  # noqa: E731
        return jax.vjp(valid, zero)[1](gb)[0].astype(jnp.float32)

    # Unrolled on purpose: inside a fori_loop XLA:CPU runs these convs ~10x slower.
    return sum(block_grad(start) for start in range(0, h, rows))


def _conv3x3_bwd(residuals, g):
    x, w = residuals
    dx = jax.vjp(lambda x_: _conv3x3_same(x_, w), x)[1](g)[0]
    if x.shape[-1] * w.shape[-1] >= _WGRAD_DOT_MIN_CHANNEL_PRODUCT:
        dw = _weight_grad_dots(x, g)
    else:
        dw = _weight_grad_row_blocks(x, g, w)
    return dx, dw.astype(w.dtype)


# jit: the bwd is traced once per shape and reused. Inside platform_dependent (a cond) JAX
# transposes each branch twice, which without it traced every conv's unrolled row blocks twice
# (the 512-px train gradient's trace ~1.6x longer). XLA inlines it: the same compiled
# instructions, at most scheduled in another order (no difference in the timings).
conv3x3_same_cpu.defvjp(_conv3x3_fwd, jax.jit(_conv3x3_bwd))


def conv3x3_same(x: jax.Array, w: jax.Array) -> jax.Array:
    """3x3, stride 1, zero padding 1, NHWC/HWIO: conv3x3_same_cpu on XLA:CPU, else the native conv.

    Same forward on every platform; only the gradient's formulation differs (module docstring).
    """
    return jax.lax.platform_dependent(x, w, cpu=conv3x3_same_cpu, default=conv3x3_same_native)


def conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    precision=None,
    **kwargs,
):
    """Drop-in for lax.conv_general_dilated (nn.Conv's hook): the 3x3 'same' NHWC case that
    every conv of these networks is goes through conv3x3_same; anything else goes to lax."""
    plain = lambda: jax.lax.conv_general_dilated(  # noqa: E731
        lhs,
        rhs,
        window_strides,
        padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        precision=precision,
        **kwargs,
    )
    if (
        kwargs
        or precision is not None
        or feature_group_count != 1
        or lhs.ndim != 4
        or rhs.shape[:2] != (3, 3)
        or tuple(window_strides) != (1, 1)
        or isinstance(padding, str)
        or tuple(map(tuple, padding)) != ((1, 1), (1, 1))
        or any(d not in (None, (1, 1)) and tuple(d) != (1, 1) for d in (lhs_dilation, rhs_dilation))
        or jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
        != jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
    ):
        return plain()
    return conv3x3_same(lhs, rhs)


class ConvBNAct(nn.Module):
    """conv3x3 -> BatchNorm -> activation."""

    features: int
    act: str = "relu"
    init_scheme: str = "draem"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = nn.Conv(
            self.features,
            (3, 3),
            padding=1,
            kernel_init=conv_kernel_init(self.init_scheme),
            dtype=self.dtype,
            param_dtype=jnp.float32,
            conv_general_dilated=conv_general_dilated,
        )(x)
        # momentum 0.9 / eps 1e-5 are PyTorch's BatchNorm2d defaults (momentum=0.1 there).
        x = nn.BatchNorm(
            use_running_average=not train,
            momentum=0.9,
            epsilon=1e-5,
            scale_init=bn_scale_init(self.init_scheme),
            dtype=self.dtype,
            param_dtype=jnp.float32,
        )(x)
        return activation(self.act)(x)


class DoubleConv(nn.Module):
    """Two ConvBNAct layers: the 'VGG block' of UNet++ and the U-Net level block."""

    features: int
    mid_features: int | None = None
    act: str = "relu"
    init_scheme: str = "draem"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        mid = self.mid_features or self.features
        x = ConvBNAct(mid, self.act, self.init_scheme, self.dtype)(x, train)
        return ConvBNAct(self.features, self.act, self.init_scheme, self.dtype)(x, train)


def max_pool2_cpu(x: jax.Array) -> jax.Array:
    """2x2 max pooling, stride 2, odd trailing rows/columns dropped (as nn.max_pool's VALID).

    A max over a reshaped [.., 2, .., 2, ..] view rather than lax.reduce_window: the same
    forward, and a backward that is one elementwise pass instead of reduce_window's
    select-and-gather over packed (value, index) pairs, 6x faster on XLA:CPU at 256 px. On an
    exact tie inside a window the gradient is shared equally between the tied inputs (the
    reduce_window form and PyTorch give it all to one); the sum is the same.
    """
    b, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def max_pool2_native(x: jax.Array) -> jax.Array:
    """2x2 max pooling as nn.max_pool (lax.reduce_window; a tie's gradient goes to one input)."""
    return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")


def max_pool2(x: jax.Array) -> jax.Array:
    """2x2 max pooling, stride 2, VALID: max_pool2_cpu on XLA:CPU, max_pool2_native elsewhere.

    Identical forward; the gradient differs only on exact ties inside a window (max_pool2_cpu).
    """
    return jax.lax.platform_dependent(x, cpu=max_pool2_cpu, default=max_pool2_native)


def _align_corners_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Linear-interpolation matrix [n_out, n_in] mapping corner pixel centres onto each other."""
    if n_in == 1:
        return np.ones((n_out, 1), np.float32)
    pos = np.arange(n_out) * (n_in - 1) / (n_out - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, n_in - 2)
    frac = pos - lo
    m = np.zeros((n_out, n_in), np.float32)
    m[np.arange(n_out), lo] = 1.0 - frac
    m[np.arange(n_out), lo + 1] += frac
    return m


def _align_corners_matrix_in_graph(n_in: int, n_out: int, dtype: Dtype) -> jax.Array:
    """_align_corners_matrix built from iotas inside the computation (XLA folds or fuses it).

    A numpy matrix would become a constant of the lowered module, and inside platform_dependent
    every lowering, the CPU one included, would carry it unused (the 512-px NestedUNet train
    gradient's StableHLO grew from 1.6 to 4.4 MB). Integer arithmetic keeps the taps exact.
    """
    if n_in == 1:
        return jnp.ones((n_out, 1), dtype)
    scaled = jax.lax.iota(jnp.int32, n_out) * (n_in - 1)  # output index * (n_out - 1) / (n_out - 1)
    lo = jnp.minimum(scaled // (n_out - 1), n_in - 2)[:, None]
    rem = scaled[:, None] - lo * (n_out - 1)  # frac * (n_out - 1), exact
    w_lo, w_hi = ((n_out - 1 - rem) / (n_out - 1)).astype(dtype), (rem / (n_out - 1)).astype(dtype)
    cols = jax.lax.iota(jnp.int32, n_in)[None, :]
    return jnp.where(cols == lo, w_lo, 0) + jnp.where(cols == lo + 1, w_hi, 0)


def _band(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a sparse [n_out, n_in] matrix as (column indices [n_out, T], weights [n_out, T]).

    T is the most non-zeros in any row; shorter rows are padded with weight 0 on column 0.
    """
    nonzero = [np.flatnonzero(row) for row in matrix]
    taps = max(1, max(len(cols) for cols in nonzero))
    index = np.zeros((matrix.shape[0], taps), np.int32)
    weight = np.zeros((matrix.shape[0], taps), np.float32)
    for r, cols in enumerate(nonzero):
        index[r, : len(cols)] = cols
        weight[r, : len(cols)] = matrix[r, cols]
    return index, weight


def _apply_band(x: jax.Array, axis: int, index: np.ndarray, weight: np.ndarray) -> jax.Array:
    """matrix @ x along `axis` for a banded matrix given by _band: a few gathers, no matmul."""
    shape = [1] * x.ndim
    shape[axis] = index.shape[0]
    out = None
    for t in range(index.shape[1]):
        term = jnp.take(x, index[:, t], axis=axis) * jnp.asarray(weight[:, t], x.dtype).reshape(shape)
        out = term if out is None else out + term
    return out


@functools.cache
def _interpolation_op(n_in: int, axis: int) -> Callable[[jax.Array], jax.Array]:
    """x -> align-corners linear x2 interpolation along `axis`, with a gather-based transpose.

    Differentiating the gathers directly would give scatter-adds, which XLA:CPU runs far
    slower than gathers; the transpose of the interpolation matrix is banded too (at most
    3 taps per row), so the backward pass is written as gathers as well.
    """
    matrix = _align_corners_matrix(n_in, 2 * n_in)
    forward, backward = _band(matrix), _band(np.ascontiguousarray(matrix.T))

    @jax.custom_vjp
    def interpolate(x):
        return _apply_band(x, axis, *forward)

    def fwd(x):
        return interpolate(x), None

    def bwd(_, g):
        return (_apply_band(g, axis, *backward),)

    interpolate.defvjp(fwd, bwd)
    return interpolate


def upsample2x_cpu(x: jax.Array, align_corners: bool = True) -> jax.Array:
    """Bilinear x2 upsampling of NHWC features, as banded gathers with a gather transpose.

    align_corners=True is what the reference UNet++ code and the PyTorch peer use
    (nn.Upsample(align_corners=True)); jax.image.resize only offers half-pixel centres. Each
    output pixel mixes two neighbours per axis, so the interpolation is written as two
    weighted gathers per axis: 45x faster on CPU than the dense interpolation matmuls
    (upsample2x_native), whose cost grows as n^3 (docs/performance.md).
    """
    b, h, w, c = x.shape
    if not align_corners:
        return jax.image.resize(x, (b, 2 * h, 2 * w, c), method="bilinear")
    x = _interpolation_op(h, 1)(x)
    return _interpolation_op(w, 2)(x)


def upsample2x_native(x: jax.Array, align_corners: bool = True) -> jax.Array:
    """Bilinear x2 upsampling of NHWC features as two dense interpolation einsums.

    The [2n, n] align-corners matrices applied along H, then W: XLA's plainest differentiable
    form (the gradient is the transposed matmul). Chosen over the same gathers without a
    custom_vjp because their autodiff is a scatter-add, which GPUs run with float atomics (a
    run-dependent summation order) and TPUs run slowly, while dense matmuls are what both
    are built for. It costs 12*n^3*C FLOPs per upsample (~12% of the 512-px inference's on
    XLA's count), in the compute dtype and at the platform's default matmul precision.
    """
    b, h, w, c = x.shape
    if not align_corners:
        return jax.image.resize(x, (b, 2 * h, 2 * w, c), method="bilinear")
    mh, mw = _align_corners_matrix_in_graph(h, 2 * h, x.dtype), _align_corners_matrix_in_graph(w, 2 * w, x.dtype)
    return jnp.einsum("pw,bowc->bopc", mw, jnp.einsum("oh,bhwc->bowc", mh, x))


def upsample2x(x: jax.Array, align_corners: bool = True) -> jax.Array:
    """Bilinear x2 upsampling of NHWC features: upsample2x_cpu on XLA:CPU, upsample2x_native elsewhere.

    The two forms agree up to float rounding (same interpolation weights).
    """
    if not align_corners:
        return upsample2x_native(x, align_corners=False)  # jax.image.resize on every platform
    return jax.lax.platform_dependent(x, cpu=upsample2x_cpu, default=upsample2x_native)


# XLA:CPU runs a convolution whose output map is tiny but whose channels are many (CS-Flow's cross
# convolutions, 152-1024 channels on 2x2-8x8 maps) far below its matmul speed: 152->1024 3x3 on a
# 2x2 map, batch 8, takes 60-320 ms forward against 1-2 ms as one im2col matmul, and the stride-2
# 1024->304 from 4x4 to 2x2 200-460 ms forward+backward against 9-12 ms. Up to 6x6 output maps the
# matmul is faster or within about 10 %; from 8x8 up neither form wins consistently and the
# matmul's 1024->304 forward is 1.4-1.8x slower, so only output maps of at most this many pixels
# take it (benchmarks/bench_flow_conv.py, docs/performance.md).
_IM2COL_MAX_PIXELS = 36


def conv2d_native(x: jax.Array, w: jax.Array, stride: int = 1, padding: int = 0) -> jax.Array:
    """torch.nn.Conv2d's convolution on NHWC/HWIO (square stride, symmetric zero padding): lax's conv."""
    return jax.lax.conv_general_dilated(
        x, w, (stride, stride), ((padding, padding), (padding, padding)), dimension_numbers=_NHWC
    )


def conv2d_im2col(x: jax.Array, w: jax.Array, stride: int = 1, padding: int = 0) -> jax.Array:
    """conv2d_native as one matmul: the kh*kw strided slices of the padded input stacked along
    channels (in HWIO's (kh, kw, in) order), contracted with the kernel reshaped to [kh*kw*in, out].

    Its autodiff is slices, pads and adds around two matmuls: no scatter, no convolution.
    """
    kh, kw, cin, cout = w.shape
    xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    ho, wo = (xp.shape[1] - kh) // stride + 1, (xp.shape[2] - kw) // stride + 1
    taps = [
        jax.lax.slice(
            xp,
            (0, i, j, 0),
            (xp.shape[0], i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1, cin),
            (1, stride, stride, 1),
        )
        for i in range(kh)
        for j in range(kw)
    ]
    cols = taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)
    return jax.lax.dot_general(cols, w.reshape(kh * kw * cin, cout), (((3,), (0,)), ((), ())))


def _conv2d_output_pixels(x_shape, w_shape, stride: int, padding: int) -> int:
    ho = (x_shape[1] + 2 * padding - w_shape[0]) // stride + 1
    wo = (x_shape[2] + 2 * padding - w_shape[1]) // stride + 1
    return ho * wo


def conv2d(x: jax.Array, w: jax.Array, stride: int = 1, padding: int = 0) -> jax.Array:
    """torch.nn.Conv2d's convolution on NHWC/HWIO: conv2d_im2col on XLA:CPU when the output map has
    at most _IM2COL_MAX_PIXELS pixels, else (and on every other platform) conv2d_native.

    The two forms agree up to float summation order.
    """
    native = functools.partial(conv2d_native, stride=stride, padding=padding)
    if _conv2d_output_pixels(x.shape, w.shape, stride, padding) > _IM2COL_MAX_PIXELS:
        return native(x, w)
    im2col = functools.partial(conv2d_im2col, stride=stride, padding=padding)
    return jax.lax.platform_dependent(x, w, cpu=im2col, default=native)
