"""The faster layer implementations (docs/performance.md) match the plain XLA formulations."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xray_flax.nn import layers
from xray_flax.nn.layers import _align_corners_matrix, conv3x3_same, conv_general_dilated, max_pool2, upsample2x


def _plain_conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))


# one row block; several row blocks; several of the smaller blocks of 64+ channel layers; wide
# enough for the nine-matmul weight gradient
@pytest.mark.parametrize(
    "shape,out", [((2, 16, 12, 3), 5), ((1, 128, 64, 4), 5), ((1, 64, 64, 64), 64), ((2, 8, 6, 256), 256)]
)
def test_fast_weight_gradients_match_xla(shape, out):
    assert (shape[-1] * out >= layers._WGRAD_DOT_MIN_CHANNEL_PRODUCT) == (out == 256)
    if out == 64:
        assert layers._weight_grad_rows(64, 64, 64, 64) == 32 < layers._weight_grad_rows(64, 64, 32, 64)  # 2 blocks
    x = jax.random.normal(jax.random.key(0), shape)
    w = jax.random.normal(jax.random.key(1), (3, 3, shape[-1], out)) * 0.1
    loss = lambda conv: lambda x, w: jnp.sum(jnp.sin(conv(x, w)))  # noqa: E731
    ref = jax.grad(loss(_plain_conv), argnums=(0, 1))(x, w)
    new = jax.grad(loss(conv3x3_same), argnums=(0, 1))(x, w)
    np.testing.assert_allclose(conv3x3_same(x, w), _plain_conv(x, w), rtol=0, atol=0)
    np.testing.assert_allclose(new[0], ref[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(new[1], ref[1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [(2, 8, 6, 3), (1, 9, 7, 2)])  # even; odd sizes drop the last row/column
def test_max_pool_matches_reduce_window(shape):
    x = jax.random.normal(jax.random.key(0), shape)  # continuous values: no ties inside a window
    ref = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2))  # noqa: E731
    np.testing.assert_array_equal(max_pool2(x), ref(x))
    g_new = jax.grad(lambda x: jnp.sum(jnp.sin(max_pool2(x))))(x)
    g_ref = jax.grad(lambda x: jnp.sum(jnp.sin(ref(x))))(x)
    np.testing.assert_allclose(g_new, g_ref, rtol=0, atol=0)


def test_max_pool_shares_the_gradient_of_a_tie():
    x = jnp.array([[1.0, 3.0], [3.0, 0.0]]).reshape(1, 2, 2, 1)
    g = jax.grad(lambda x: jnp.sum(max_pool2(x)))(x)
    np.testing.assert_allclose(g.reshape(2, 2), [[0.0, 0.5], [0.5, 0.0]])


def test_conv_hook_falls_back_for_other_convs():
    x = jnp.ones((1, 8, 8, 2))
    w = jnp.ones((1, 1, 2, 3))
    out = conv_general_dilated(x, w, (1, 1), ((0, 0), (0, 0)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(out, 2.0)


def test_upsample_gathers_match_interpolation_matrices():
    x = jax.random.normal(jax.random.key(0), (2, 5, 7, 3))
    mh, mw = jnp.asarray(_align_corners_matrix(5, 10)), jnp.asarray(_align_corners_matrix(7, 14))
    dense = lambda x: jnp.einsum("pw,bowc->bopc", mw, jnp.einsum("oh,bhwc->bowc", mh, x))  # noqa: E731
    np.testing.assert_allclose(upsample2x(x), dense(x), atol=1e-6)
    g_new = jax.grad(lambda x: jnp.sum(jnp.sin(upsample2x(x))))(x)
    g_ref = jax.grad(lambda x: jnp.sum(jnp.sin(dense(x))))(x)
    np.testing.assert_allclose(g_new, g_ref, atol=1e-5)
