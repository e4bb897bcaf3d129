"""Depthwise convolution (one kxk filter per channel, `feature_group_count == channels`), per platform.

XLA:CPU runs a grouped convolution with one channel per group 20-40x slower than the same
result written as a sum of k*k shifted, strided slices of the padded input, each multiplied by
one tap of the filter (measured in docs/performance.md: e.g. 128x128x48 3x3, batch 8: 289 ms
against 7.8 ms), which XLA fuses into one elementwise loop. EfficientNet's MBConv blocks (the
Lite0 backbone of every CPU config, B5 of CS-Flow) are mostly such convolutions.

`depthwise_conv` picks the shifted-slice form on XLA:CPU and `lax.conv_general_dilated` on
every other platform, through `jax.lax.platform_dependent` as in nn/layers.py: the shifted
form was measured on CPU only, so GPU and TPU keep XLA's native kernel until a benchmark there
says otherwise. Both forms are public (`depthwise_conv_cpu`, `depthwise_conv_native`) so tests
and benchmarks can compare them on any machine. Gradients of the CPU form are XLA's autodiff
of slices and multiplies (pads and adds, no scatter).

`conv_general_dilated` is a drop-in for `nn.Conv(conv_general_dilated=...)`: the NHWC depthwise
case goes to `depthwise_conv`, anything else to lax unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

_NHWC = ("NHWC", "HWIO", "NHWC")
Padding = str | Sequence[tuple[int, int]]


def _explicit_padding(x_shape, k: tuple[int, int], strides: tuple[int, int], padding: Padding):
    if isinstance(padding, str):
        return jax.lax.padtype_to_pads(x_shape[1:3], k, strides, padding)
    return [tuple(p) for p in padding]


def depthwise_conv_native(x: jax.Array, w: jax.Array, strides=(1, 1), padding: Padding = "SAME") -> jax.Array:
    """x [B, H, W, C], w [kh, kw, 1, C] -> [B, Ho, Wo, C] with XLA's grouped convolution."""
    return jax.lax.conv_general_dilated(
        x, w, tuple(strides), padding, dimension_numbers=_NHWC, feature_group_count=x.shape[-1]
    )


def depthwise_conv_cpu(x: jax.Array, w: jax.Array, strides=(1, 1), padding: Padding = "SAME") -> jax.Array:
    """The same result as a sum of kh*kw strided slices of the zero-padded input times one filter tap."""
    kh, kw = w.shape[:2]
    sh, sw = strides
    (pt, pb), (pl, pr) = _explicit_padding(x.shape, (kh, kw), (sh, sw), padding)
    xp = jnp.pad(x, ((0, 0), (max(pt, 0), max(pb, 0)), (max(pl, 0), max(pr, 0)), (0, 0)))
    # Negative padding (cropping) is legal in lax; apply it as a slice.
    xp = xp[:, max(-pt, 0) : xp.shape[1] - max(-pb, 0), max(-pl, 0) : xp.shape[2] - max(-pr, 0)]
    ho = (xp.shape[1] - kh) // sh + 1
    wo = (xp.shape[2] - kw) // sw + 1
    out = None
    for i in range(kh):
        for j in range(kw):
            tap = jax.lax.slice(
                xp,
                (0, i, j, 0),
                (xp.shape[0], i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, xp.shape[3]),
                (1, sh, sw, 1),
            )
            term = tap * w[i, j, 0]
            out = term if out is None else out + term
    return out


def depthwise_conv(x: jax.Array, w: jax.Array, strides=(1, 1), padding: Padding = "SAME") -> jax.Array:
    """Depthwise conv: depthwise_conv_cpu on XLA:CPU, depthwise_conv_native elsewhere (module docstring)."""
    strides = tuple(strides)
    return jax.lax.platform_dependent(
        x,
        w,
        cpu=lambda a, b: depthwise_conv_cpu(a, b, strides, padding),
        default=lambda a, b: depthwise_conv_native(a, b, strides, padding),
    )


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
    """Drop-in for lax.conv_general_dilated (nn.Conv's hook): NHWC/HWIO depthwise convolutions
    without dilation go through depthwise_conv; anything else to lax."""
    undilated = all(d is None or tuple(d) == (1, 1) for d in (lhs_dilation, rhs_dilation))
    if (
        not kwargs
        and precision is None
        and undilated
        and lhs.ndim == 4
        and rhs.shape[2] == 1
        and feature_group_count == lhs.shape[-1] == rhs.shape[-1]
        and jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
        == jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
    ):
        return depthwise_conv(lhs, rhs, tuple(window_strides), padding)
    return jax.lax.conv_general_dilated(
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
