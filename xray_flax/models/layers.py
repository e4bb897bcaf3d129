"""Building blocks shared by the reconstructive and discriminative networks.

All tensors are NHWC. Convolutions keep their bias even when a BatchNorm follows: it is
redundant mathematically, but the published models have it and parameter counts are part
of what the tests compare against the papers' networks.
"""

from __future__ import annotations

from typing import Any, Callable

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


class ConvBNAct(nn.Module):
    """conv3x3 -> BatchNorm -> activation."""

    features: int
    act: str = "relu"
    init_scheme: str = "draem"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = nn.Conv(self.features, (3, 3), padding=1, kernel_init=conv_kernel_init(self.init_scheme),
                    dtype=self.dtype, param_dtype=jnp.float32)(x)
        # momentum 0.9 / eps 1e-5 are PyTorch's BatchNorm2d defaults (momentum=0.1 there).
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                         scale_init=bn_scale_init(self.init_scheme), dtype=self.dtype,
                         param_dtype=jnp.float32)(x)
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


def max_pool2(x: jax.Array) -> jax.Array:
    return nn.max_pool(x, (2, 2), strides=(2, 2))


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


def upsample2x(x: jax.Array, align_corners: bool = True) -> jax.Array:
    """Bilinear x2 upsampling of NHWC features.

    align_corners=True is what the reference UNet++ code and the PyTorch peer use
    (nn.Upsample(align_corners=True)); jax.image.resize only offers half-pixel centres, so
    that case is two small interpolation matmuls, which XLA fuses well.
    """
    b, h, w, c = x.shape
    if not align_corners:
        return jax.image.resize(x, (b, 2 * h, 2 * w, c), method="bilinear")
    mh = jnp.asarray(_align_corners_matrix(h, 2 * h), x.dtype)
    mw = jnp.asarray(_align_corners_matrix(w, 2 * w), x.dtype)
    x = jnp.einsum("oh,bhwc->bowc", mh, x)
    return jnp.einsum("pw,bowc->bopc", mw, x)
