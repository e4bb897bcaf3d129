"""The faster layer implementations (docs/performance.md) match the plain XLA formulations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xray_flax.models.layers import _align_corners_matrix, conv3x3_same, conv_general_dilated, upsample2x


def _plain_conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize("shape", [(2, 16, 12, 3), (1, 128, 64, 4)])  # one block; several row blocks
def test_blocked_weight_gradient_matches_xla(shape):
    x = jax.random.normal(jax.random.key(0), shape)
    w = jax.random.normal(jax.random.key(1), (3, 3, shape[-1], 5)) * 0.1
    loss = lambda conv: lambda x, w: jnp.sum(jnp.sin(conv(x, w)))  # noqa: E731
    ref = jax.grad(loss(_plain_conv), argnums=(0, 1))(x, w)
    new = jax.grad(loss(conv3x3_same), argnums=(0, 1))(x, w)
    np.testing.assert_allclose(conv3x3_same(x, w), _plain_conv(x, w), rtol=0, atol=0)
    np.testing.assert_allclose(new[0], ref[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(new[1], ref[1], rtol=1e-4, atol=1e-4)


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
