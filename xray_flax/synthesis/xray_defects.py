"""Synthetic anomalies fitted to X-radiographs: density changes, not pasted textures.

DRAEM pastes a DTD texture into a Perlin blob. A defect in an X-radiograph of a painting is a
change of the density along the ray: a paint loss or a lacuna lets more radiation through
(darker), a filling, an inclusion or metal stops more (brighter), a scratch is a thin line, a
pin or a grain of lead a small spot. Each sample draws one kind:

  density  a Perlin region (DRAEM's mask, the generator's scale and threshold) with soft edges
           (Gaussian, sigma 1.5 px), darker or brighter;
  line     1-3 thin segments (Gaussian profile, sigma 0.6-2 px), 15-80 % of the patch long;
  spot     1-4 anti-aliased discs of radius 1-6 px (log-uniform), brighter 3 times in 4.

The change is additive, ``I_a = I + s * a * profile`` (profile scaled to peak 1) with ``a`` log-uniform in
[0.03, 0.35] of the intensity range and ``s = +-1``; the mask is ``profile > 0.5`` (where at least
half the change is). All of a sample's randomness comes from one uniform draw (each random call
site compiles its own threefry hash), the Perlin mask's from its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import dm_pix
import jax
import jax.numpy as jnp

from xray_flax import errors
from xray_flax.synthesis import perlin

KINDS = ("density", "line", "spot")
MAX_LINES = 3
MAX_SPOTS = 4
AMPLITUDE_RANGE = (0.03, 0.35)
# Probability that a kind's change is brighter (denser) than its surroundings.
BRIGHT_PROBABILITY = {"density": 0.5, "line": 0.5, "spot": 0.75}
_LINE_DRAWS = 1 + 5 * MAX_LINES
_SPOT_DRAWS = 1 + 4 * MAX_SPOTS
_DRAWS = 3 + _LINE_DRAWS + _SPOT_DRAWS


def check_kinds(kinds: Sequence[str]) -> None:
    """Raises a ConfigError (a ValueError) unless `kinds` is a non-empty selection of KINDS."""
    errors.require(kind_problems(kinds))


def kind_problems(kinds: Sequence[str]) -> list[str]:
    """config.synthesis.xray_defect_kinds must be a non-empty selection of KINDS."""
    if kinds and not set(kinds) - set(KINDS):
        return []
    listing = ", ".join(repr(k) for k in KINDS)
    return [f"config.synthesis.xray_defect_kinds={tuple(kinds)!r}: each must be one of {listing} (at least one)"]


def _between(u: jax.Array, lo: float, hi: float) -> jax.Array:
    return lo + (hi - lo) * u


def _log_between(u: jax.Array, lo: float, hi: float) -> jax.Array:
    return jnp.exp(_between(u, math.log(lo), math.log(hi)))


def segment_distance(ys: jax.Array, xs: jax.Array, y0, x0, y1, x1) -> jax.Array:
    """Euclidean distance of every pixel (ys [H, 1], xs [1, W]) to the segment (y0, x0)-(y1, x1)."""
    dy, dx = y1 - y0, x1 - x0
    t = jnp.clip(((ys - y0) * dy + (xs - x0) * dx) / jnp.maximum(dy * dy + dx * dx, 1e-6), 0.0, 1.0)
    return jnp.hypot(ys - (y0 + t * dy), xs - (x0 + t * dx))


def line_profile(u: jax.Array, shape: Sequence[int]) -> jax.Array:
    """[H, W] in [0, 1]: the brightest of 1-3 Gaussian-profile segments; u: 1 + 5 * MAX_LINES draws."""
    h, w = shape
    ys = jnp.arange(h, dtype=jnp.float32)[:, None]
    xs = jnp.arange(w, dtype=jnp.float32)[None, :]
    count = 1 + jnp.floor(u[0] * MAX_LINES)
    side = float(min(h, w))
    profile = jnp.zeros(shape, jnp.float32)
    for i in range(MAX_LINES):
        cy, cx, angle, length, sigma = u[1 + 5 * i : 6 + 5 * i]
        cy, cx = cy * h, cx * w
        angle = angle * math.pi
        half = 0.5 * _between(length, 0.15, 0.8) * side
        dy, dx = half * jnp.sin(angle), half * jnp.cos(angle)
        distance = segment_distance(ys, xs, cy - dy, cx - dx, cy + dy, cx + dx)
        line = jnp.exp(-0.5 * (distance / _between(sigma, 0.6, 2.0)) ** 2)
        profile = jnp.where(i < count, jnp.maximum(profile, line), profile)
    return profile


def spot_profile(u: jax.Array, shape: Sequence[int]) -> jax.Array:
    """[H, W] in [0, 1]: 1-4 anti-aliased discs of radius 1-6 px; u: 1 + 4 * MAX_SPOTS draws."""
    h, w = shape
    ys = jnp.arange(h, dtype=jnp.float32)[:, None]
    xs = jnp.arange(w, dtype=jnp.float32)[None, :]
    count = 1 + jnp.floor(u[0] * MAX_SPOTS)
    profile = jnp.zeros(shape, jnp.float32)
    for i in range(MAX_SPOTS):
        cy, cx, radius, _ = u[1 + 4 * i : 5 + 4 * i]
        distance = jnp.hypot(ys - cy * h, xs - cx * w)
        disc = jnp.clip(_log_between(radius, 1.0, 6.0) + 0.5 - distance, 0.0, 1.0)
        profile = jnp.where(i < count, jnp.maximum(profile, disc), profile)
    return profile


def density_profile(
    key: jax.Array,
    shape: Sequence[int],
    exponent_range: Sequence[int],
    threshold: float,
    rotation_range: Sequence[float],
) -> jax.Array:
    """[H, W] in [0, 1]: DRAEM's Perlin mask with edges softened by a Gaussian of 1.5 px."""
    mask = perlin.perlin_mask(key, shape, exponent_range, threshold, rotation_range)
    return dm_pix.gaussian_blur(mask[..., None], 1.5, kernel_size=9)[..., 0]


def xray_defect(
    key: jax.Array,
    image: jax.Array,
    kinds: Sequence[str] = KINDS,
    exponent_range: Sequence[int] = (0, 5),
    threshold: float = 0.5,
    rotation_range: Sequence[float] = (-90.0, 90.0),
) -> tuple[jax.Array, jax.Array]:
    """One X-ray defect in `image` [H, W, C] in [0, 1]: (defective image, unclipped; mask [H, W, 1])."""
    check_kinds(kinds)
    key_mask, key_draws = jax.random.split(key)
    u = jax.random.uniform(key_draws, (_DRAWS,))
    shape = image.shape[:2]
    builders = {
        "density": lambda: density_profile(key_mask, shape, exponent_range, threshold, rotation_range),
        "line": lambda: line_profile(u[3 : 3 + _LINE_DRAWS], shape),
        "spot": lambda: spot_profile(u[3 + _LINE_DRAWS :], shape),
    }
    kinds = tuple(kinds)
    kind = jnp.minimum(jnp.floor(u[0] * len(kinds)).astype(jnp.int32), len(kinds) - 1)
    if len(kinds) == 1:
        profile = builders[kinds[0]]()
    else:
        profile = jax.lax.switch(kind, [builders[name] for name in kinds])
    # Peak 1, so the amplitude is the change at the defect's centre whatever its size (a blurred
    # small blob or a thin line between pixel centres peaks below 1).
    profile = profile / jnp.maximum(jnp.max(profile), 1e-6)
    bright_probability = jnp.asarray([BRIGHT_PROBABILITY[name] for name in kinds])[kind]
    sign = jnp.where(u[1] < bright_probability, 1.0, -1.0)
    amplitude = sign * _log_between(u[2], *AMPLITUDE_RANGE)
    mask = (profile > 0.5).astype(jnp.float32)[..., None]
    return image + amplitude * profile[..., None], mask
