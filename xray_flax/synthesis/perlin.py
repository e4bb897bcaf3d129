"""2-D Perlin (gradient) noise and DRAEM's thresholded Perlin mask, in JAX.

The algorithm is DRAEM's `rand_perlin_2d_np` (VitjanZ/DRAEM, perlin.py): a
lattice of random unit gradients, per-pixel dot products with the four corner
gradients, quintic fade 6t^5 - 15t^4 + 10t^3, bilinear blend, times sqrt(2).

Static shapes under jit although the lattice resolution is random per sample:
the gradient lattice is always drawn at the largest resolution R_max + 1 points
per axis, and a sample with resolution r < R_max uses its top-left
(r + 1) x (r + 1) corner -- i.i.d. gradients either way, so the distribution is
unchanged. The cell a pixel falls in is computed from integer coordinates,
never by materialising a per-resolution grid.

Patch sizes that are not a multiple of R_max: the noise is defined on the
padded length ceil(n / R_max) * R_max (a multiple of every 2^k <= R_max, where
DRAEM's algorithm is exact) and only the first n pixels are evaluated --
"generate larger, crop" without the larger array. DRAEM itself only supports
multiples (its np.repeat tiling fails otherwise).
"""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp


def fade(t: jax.Array) -> jax.Array:
    """Perlin's quintic fade 6t^5 - 15t^4 + 10t^3 (C2-continuous at cell edges)."""
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def gradients_from_uniform(u: jax.Array) -> jax.Array:
    """Unit vectors at angles 2*pi*u: [..., Ly, Lx] -> [..., Ly, Lx, 2]."""
    angles = 2.0 * math.pi * u
    return jnp.stack([jnp.cos(angles), jnp.sin(angles)], axis=-1)


def random_gradients(key: jax.Array, lattice_shape: Sequence[int]) -> jax.Array:
    """Unit gradient vectors at angles ~ U[0, 2pi), shape [Ly, Lx, 2] (DRAEM)."""
    return gradients_from_uniform(jax.random.uniform(key, tuple(lattice_shape)))


def padded_length(n: int, max_resolution: int) -> int:
    """Smallest multiple of `max_resolution` that is >= n (static)."""
    return -(-n // max_resolution) * max_resolution


def _cells_and_fractions(n: int, padded: int, resolution: jax.Array):
    """Integer cell index and in-cell fraction for pixels 0..n-1.

    Pixel i sits at lattice coordinate i * r / padded. Computing it with integer
    arithmetic keeps the cell index exact (a float i * delta can land a hair
    below an integer and pick the wrong cell).
    """
    position = jnp.arange(n, dtype=jnp.int32) * resolution.astype(jnp.int32)
    cell = position // padded
    fraction = (position % padded).astype(jnp.float32) / padded
    return cell, fraction


def perlin_from_gradients(gradients: jax.Array, shape: Sequence[int], resolution: jax.Array) -> jax.Array:
    """Perlin noise [H, W] in about [-1, 1] from a given gradient lattice.

    Args:
      gradients: [Ly, Lx, 2] unit vectors; Ly - 1 and Lx - 1 are the largest
        resolutions this lattice supports (static).
      shape: (H, W), static.
      resolution: int [2], lattice cells along (H, W); may be traced. Each must
        divide Ly - 1 (resp. Lx - 1), e.g. powers of two up to a power of two.

    Returns:
      float32 [H, W]. Equal to DRAEM's rand_perlin_2d_np(padded shape,
      resolution) with these gradients, cropped to (H, W).
    """
    height, width = shape
    max_res_y, max_res_x = gradients.shape[0] - 1, gradients.shape[1] - 1
    resolution = jnp.asarray(resolution)
    cell_y, frac_y = _cells_and_fractions(height, padded_length(height, max_res_y), resolution[0])
    cell_x, frac_x = _cells_and_fractions(width, padded_length(width, max_res_x), resolution[1])

    fy = frac_y[:, None]
    fx = frac_x[None, :]

    def corner_dot(dy: int, dx: int) -> jax.Array:
        # Gather rows first ([H, Lx, 2]) then columns: two cheap 1-D gathers
        # instead of one 2-D gather per pixel.
        g = gradients[cell_y + dy][:, cell_x + dx]
        return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)

    n00 = corner_dot(0, 0)
    n10 = corner_dot(1, 0)
    n01 = corner_dot(0, 1)
    n11 = corner_dot(1, 1)
    ty = fade(fy)
    tx = fade(fx)
    # Same nesting as DRAEM: lerp along axis 0 first, then along axis 1.
    along_y0 = n00 + ty * (n10 - n00)
    along_y1 = n01 + ty * (n11 - n01)
    return math.sqrt(2.0) * (along_y0 + tx * (along_y1 - along_y0))


def perlin_noise(
    key: jax.Array, shape: Sequence[int], scale_exponents: jax.Array, max_scale_exponent: int
) -> jax.Array:
    """Perlin noise [H, W] with per-axis resolution 2**scale_exponents.

    Args:
      key: draws the gradient lattice.
      shape: (H, W), static.
      scale_exponents: int [2], may be traced; each in [0, max_scale_exponent].
      max_scale_exponent: static; sets the lattice size 2**max + 1 per axis.
    """
    lattice = 2**max_scale_exponent + 1
    gradients = random_gradients(key, (lattice, lattice))
    resolution = jnp.left_shift(1, jnp.asarray(scale_exponents, jnp.int32))
    return perlin_from_gradients(gradients, shape, resolution)


def rotate_degrees(image: jax.Array, degrees: jax.Array, fill: float = 0.0) -> jax.Array:
    """Rotates [H, W, C] about its centre, bilinear, constant fill.

    Same result as scipy.ndimage.rotate(reshape=False, order=1,
    mode='constant') and dm_pix.rotate(order=1, mode='constant'), and the
    constant-0 fill of imgaug's Affine(rotate) used by DRAEM: a source point
    outside [0, n-1] gives `fill`. Written here instead of calling
    dm_pix.rotate because pix interpolates in 3-D (the channel axis too): 8
    gathers per value, ~40x slower on CPU at 512x512, and at +-90 degrees float
    error in the channel coordinate can push a whole channel outside and fill
    it with cval.
    """
    height, width, channels = image.shape
    theta = jnp.deg2rad(jnp.asarray(degrees, jnp.float32))
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    centre_y, centre_x = (height - 1) / 2, (width - 1) / 2
    y = jnp.arange(height, dtype=jnp.float32)[:, None] - centre_y
    x = jnp.arange(width, dtype=jnp.float32)[None, :] - centre_x
    # Pull resampling: where does each output pixel come from?
    src_y = cos * y + sin * x + centre_y
    src_x = -sin * y + cos * x + centre_x
    # A hair of slack so that float error at exactly +-90 degrees (cos = -4e-8)
    # does not push a whole edge row outside; scipy keeps that row too.
    slack = 1e-4
    inside = (src_y >= -slack) & (src_y <= height - 1 + slack) & (src_x >= -slack) & (src_x <= width - 1 + slack)
    y0 = jnp.clip(jnp.floor(src_y), 0, height - 1)
    x0 = jnp.clip(jnp.floor(src_x), 0, width - 1)
    wy = (src_y - y0)[..., None]
    wx = (src_x - x0)[..., None]
    y0 = y0.astype(jnp.int32)
    x0 = x0.astype(jnp.int32)
    y1 = jnp.minimum(y0 + 1, height - 1)
    x1 = jnp.minimum(x0 + 1, width - 1)
    flat = image.reshape(height * width, channels)

    def at(yy, xx):
        return flat[yy * width + xx]

    top = at(y0, x0) * (1 - wx) + at(y0, x1) * wx
    bottom = at(y1, x0) * (1 - wx) + at(y1, x1) * wx
    rotated = top * (1 - wy) + bottom * wy
    return jnp.where(inside[..., None], rotated, jnp.asarray(fill, image.dtype))


def perlin_mask(
    key: jax.Array,
    shape: Sequence[int],
    exponent_range: Sequence[int],
    threshold: float,
    rotation_range: Sequence[float],
) -> jax.Array:
    """DRAEM's anomaly mask: rotated Perlin noise > threshold, float32 [H, W].

    Per-axis scale 2**k, k ~ U{lo..hi}; rotation ~ U(rotation_range) degrees;
    corners uncovered by the rotation are filled with 0 (below any positive
    threshold), as imgaug's Affine does in DRAEM. All randomness comes from one
    draw (see `mask_draws`).
    """
    exponents, gradients, angle = mask_draws(key, exponent_range, rotation_range)
    noise = perlin_from_gradients(gradients, shape, jnp.left_shift(1, exponents))
    rotated = rotate_degrees(noise[..., None], angle)[..., 0]
    return (rotated > threshold).astype(jnp.float32)


def mask_draws(key: jax.Array, exponent_range: Sequence[int], rotation_range: Sequence[float]):
    """(scale exponents int [2], gradients [L, L, 2], angle) for perlin_mask.

    One random call (each call site compiles its own threefry hash).
    """
    lo, hi = exponent_range
    side = 2**hi + 1
    u = jax.random.uniform(key, (3 + side * side,))
    exponents = jnp.minimum(lo + jnp.floor(u[:2] * (hi - lo + 1)), hi)
    angle = rotation_range[0] + (rotation_range[1] - rotation_range[0]) * u[2]
    gradients = gradients_from_uniform(u[3:].reshape(side, side))
    return exponents.astype(jnp.int32), gradients, angle
