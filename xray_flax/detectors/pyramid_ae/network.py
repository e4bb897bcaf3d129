"""The pyramidal autoencoder network: conv encoder, pyramid pooling on its last map, conv decoder.

    x [B, P, P, C] -> encoder stages DoubleConv(w_0) .. DoubleConv(w_{L-1}), max-pool between
      -> F [B, P/2^(L-1), P/2^(L-1), w_{L-1}]
      -> pyramid pooling: cat(F, branch_1(F), .., branch_K(F)), branch_k = adaptive average
         pool to bins_k x bins_k -> 1x1 conv (no bias) to w_{L-1} // reductions_k -> BN -> ReLU
         -> bilinear (align-corners) resize back to F's size
      -> 1x1 conv (no bias) -> BN -> ReLU to `latent_channels` (the bottleneck)
      -> decoder: per stage, bilinear x2 up -> DoubleConv(w_l), l = L-2 .. 0
      -> conv3x3 to C -> sigmoid: the reconstruction in [0, 1]

The decoder has no skip connections: everything it reconstructs passes the bottleneck at
1/2^(L-1) resolution, so it cannot copy an anomaly from input to output. The branches follow
PIADE's PyramidPool (adaptive average pool, 1x1 conv without bias to C/1, C/2, C/4, C/8, BN,
ReLU); the grid sizes, the upsampling and the concatenation are PSPNet's (PIADE pools every
branch to 1x1 and feeds capsules instead). See the package docstring for what is whose.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xray_flax.nn.layers import DoubleConv, Dtype, conv_kernel_init, max_pool2, upsample2x


@functools.cache
def adaptive_pool_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] averaging matrix of torch's AdaptiveAvgPool along one axis.

    Output cell i averages inputs floor(i * n_in / n_out) .. ceil((i + 1) * n_in / n_out) - 1;
    the cells overlap when n_out does not divide n_in and repeat inputs when n_out > n_in.
    """
    m = np.zeros((n_out, n_in), np.float32)
    for i in range(n_out):
        start, end = (i * n_in) // n_out, -(-((i + 1) * n_in) // n_out)
        m[i, start:end] = 1.0 / (end - start)
    return m


@functools.cache
def linear_resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] align-corners linear interpolation (corner pixel centres map onto each other).

    Equals scipy.ndimage.zoom(order=1, grid_mode=False) along one axis; n_in = 1 broadcasts.
    """
    if n_in == 1 or n_out == 1:
        m = np.zeros((n_out, n_in), np.float32)
        m[:, 0] = 1.0
        return m
    pos = np.arange(n_out) * (n_in - 1) / (n_out - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, n_in - 2)
    frac = (pos - lo).astype(np.float32)
    m = np.zeros((n_out, n_in), np.float32)
    m[np.arange(n_out), lo] = 1.0 - frac
    m[np.arange(n_out), lo + 1] += frac
    return m


def separable_apply(x: jax.Array, rows: np.ndarray, cols: np.ndarray) -> jax.Array:
    """rows @ x @ cols.T over the H and W axes of NHWC `x` (or of [B, H, W] maps)."""
    rows, cols = jnp.asarray(rows, x.dtype), jnp.asarray(cols, x.dtype)
    if x.ndim == 3:
        return jnp.einsum("oh,bhw,pw->bop", rows, x, cols)
    return jnp.einsum("oh,bhwc,pw->bopc", rows, x, cols)


def adaptive_avg_pool(x: jax.Array, out_size: int) -> jax.Array:
    """torch.nn.AdaptiveAvgPool2d(out_size) of NHWC features (two small matmuls)."""
    _, h, w, _ = x.shape
    return separable_apply(x, adaptive_pool_matrix(h, out_size), adaptive_pool_matrix(w, out_size))


def resize_linear(x: jax.Array, height: int, width: int) -> jax.Array:
    """Align-corners bilinear resize of NHWC features or [B, H, W] maps to (height, width)."""
    return separable_apply(x, linear_resize_matrix(x.shape[1], height), linear_resize_matrix(x.shape[2], width))


class Conv1x1BNReLU(nn.Module):
    """1x1 conv without bias (a BatchNorm follows, as in PIADE's PyramidPool) -> BN -> ReLU."""

    features: int
    init_scheme: str = "default"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = nn.Conv(
            self.features,
            (1, 1),
            use_bias=False,
            kernel_init=conv_kernel_init(self.init_scheme),
            dtype=self.dtype,
            param_dtype=jnp.float32,
        )(x)
        # PyTorch's BatchNorm2d defaults, as the shared ConvBNAct (PIADE's momentum 0.95 not kept).
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype)(x)
        return nn.relu(x)


class PyramidPooling(nn.Module):
    """cat(x, branches): each branch pools x to a bins x bins grid, reduces its channels and is
    resized back to x's size."""

    bins: Sequence[int]
    reductions: Sequence[int]
    init_scheme: str = "default"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if len(self.bins) != len(self.reductions):
            raise ValueError(f"pyramid_bins {tuple(self.bins)} and pyramid_reductions {tuple(self.reductions)} differ")
        _, h, w, c = x.shape
        outs = [x]
        for k, (bins, reduction) in enumerate(zip(self.bins, self.reductions)):
            branch = adaptive_avg_pool(x, int(bins))
            branch = Conv1x1BNReLU(branch_width(c, reduction), self.init_scheme, self.dtype, name=f"branch_{k}")(
                branch, train
            )
            outs.append(resize_linear(branch, h, w))
        return jnp.concatenate(outs, axis=-1)


def branch_width(channels: int, reduction: int) -> int:
    if reduction < 1:
        raise ValueError(f"pyramid reductions must be >= 1, got {reduction}")
    return max(1, channels // int(reduction))


class PyramidAutoencoder(nn.Module):
    out_channels: int = 1
    widths: Sequence[int] = (32, 64, 128, 256)
    bins: Sequence[int] = (1, 2, 3, 6)
    reductions: Sequence[int] = (1, 2, 4, 8)
    latent_channels: int = 32
    init_scheme: str = "default"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        """images [B, H, W, C] in [0, 1] -> reconstruction [B, H, W, out_channels] in [0, 1]."""
        multiple = size_multiple(len(self.widths))
        if images.shape[1] % multiple or images.shape[2] % multiple:
            raise ValueError(
                f"the pyramidal autoencoder with {len(self.widths)} stages needs sizes divisible by {multiple}, "
                f"got {images.shape[1:3]}"
            )
        kw = dict(act="relu", init_scheme=self.init_scheme, dtype=self.dtype)
        h = images.astype(self.dtype)
        for level, width in enumerate(self.widths):
            h = DoubleConv(width, name=f"enc_{level}", **kw)(h if level == 0 else max_pool2(h), train)
        h = PyramidPooling(self.bins, self.reductions, self.init_scheme, self.dtype, name="pyramid")(h, train)
        h = Conv1x1BNReLU(self.latent_channels, self.init_scheme, self.dtype, name="bottleneck")(h, train)
        for level, width in enumerate(reversed(tuple(self.widths[:-1]))):
            h = DoubleConv(width, name=f"dec_{level}", **kw)(upsample2x(h), train)
        out = nn.Conv(
            self.out_channels,
            (3, 3),
            padding=1,
            kernel_init=conv_kernel_init(self.init_scheme),
            dtype=self.dtype,
            param_dtype=jnp.float32,
            name="out",
        )(h)
        return jax.nn.sigmoid(out.astype(jnp.float32))


def size_multiple(stages: int) -> int:
    """Patch sides must be multiples of this: one exact halving per max-pool."""
    return 2 ** (stages - 1)
