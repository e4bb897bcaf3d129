"""Per-painting robust polynomial regression from linearised RGB to every band: the closed-form,
training-free member of the regression family (Blazek et al. 2017 fit the visible-to-band
relation per painting; docs/papers.md, "Hidden content that can be measured").

For each painting and band, b ~ poly(linear RGB) is fitted to the painting's own pixels by
iteratively reweighted least squares; what the fit cannot explain, prediction - band, is the
signed residual (positive: the band is darker than the painting's own colour-to-band relation
predicts, as hidden carbon or dark paint makes it), turned into the map by `maps.form`. No
training, no truth: the painting's pixels only.

Public functions and the source of each choice
- `linearise(rgb)`: the inverse sRGB transfer function (IEC 61966-2-1) [ours: a camera's RGB is
  gamma encoded while the bands are linear reflectance; a low-degree polynomial on linear RGB
  matches the linear mixing of the paint model].
- `features(rgb, degree)` -> [..., F]: the monomials of (R, G, B) of total degree <= `degree`
  (1 -> 4 features, 2 -> 10, 3 -> 20) [ours: degree 2 default, measured in docs/results.md].
- `robust_fit(x, y, iterations, robust, ridge)` -> coefficients [N, F, B]: IRLS per image and
  band [Holland & Welsch 1977]: start from least squares, then `iterations` reweighted solves
  with weights from the residual scaled by its MAD (1.4826 x median |r - median r|):
  "huber" (default; w = min(1, c / |u|), c = 1.345) or "tukey" (bisquare, w = (1 - (u / c)^2)^2
  for |u| < c, c = 4.685) [the usual 95 %-efficiency constants]; "l2": no reweighting. A ridge of
  `ridge` x the mean diagonal keeps flat paintings solvable [ours]. `mask` [N, P] restricts
  each fit (and its scale) to some rows (the graph methods: one painting's superpixels).
- `init(key, batch)` -> {} and `dissimilarity(variables, batch, *, degree, robust, iterations,
  linear_rgb, sign, scale, combination)` -> {"per_band", "map", "signed" (prediction - band),
  "prediction", "band_weights"}.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp

from xray_flax.hidden_art import dissimilarity as dis
from xray_flax.hidden_art import maps

ROBUST = ("huber", "tukey", "l2")
DEGREES = (1, 2, 3)
_C = {"huber": 1.345, "tukey": 4.685}
_EPS = 1e-6


def linearise(rgb: jax.Array) -> jax.Array:
    """Inverse sRGB transfer: encoded [0, 1] -> linear [0, 1]."""
    x = jnp.clip(jnp.asarray(rgb, jnp.float32), 0.0, 1.0)
    return jnp.where(x <= 0.04045, x / 12.92, jnp.power((x + 0.055) / 1.055, 2.4))


def features(rgb: jax.Array, degree: int = 2) -> jax.Array:
    """[..., F] monomials of the last axis (3 channels) of total degree <= `degree`, constant first."""
    if degree not in DEGREES:
        raise ValueError(f"degree must be one of {DEGREES}, got {degree}")
    columns = [jnp.ones(rgb.shape[:-1], jnp.float32)]
    for d in range(1, degree + 1):
        for combo in itertools.combinations_with_replacement(range(3), d):
            term = rgb[..., combo[0]]
            for c in combo[1:]:
                term = term * rgb[..., c]
            columns.append(term)
    return jnp.stack(columns, axis=-1)


def _solve(x: jax.Array, y: jax.Array, w: jax.Array, ridge: float) -> jax.Array:
    """Weighted least squares per image and band: x [N, P, F], y [N, P, B], w [N, P, B] -> [N, F, B]."""
    gram = jnp.einsum("npf,npb,npg->nbfg", x, w, x)
    diag = jnp.mean(jnp.diagonal(gram, axis1=-2, axis2=-1), axis=-1)[..., None, None]
    gram = gram + ridge * (diag + _EPS) * jnp.eye(x.shape[-1], dtype=x.dtype)
    rhs = jnp.einsum("npf,npb,npb->nbf", x, w, y)
    return jnp.swapaxes(jnp.linalg.solve(gram, rhs[..., None])[..., 0], -1, -2)


def _weights(residual: jax.Array, robust: str, mask: jax.Array | None = None) -> jax.Array:
    if mask is not None:  # the scale from the rows that count only
        residual = jnp.where(mask[..., None], residual, jnp.nan)
    centre = jnp.nanmedian(residual, axis=1, keepdims=True)
    scale = maps.MAD_TO_STD * jnp.nanmedian(jnp.abs(residual - centre), axis=1, keepdims=True) + _EPS
    u = jnp.abs(residual / scale)
    if robust == "huber":
        w = jnp.minimum(1.0, _C["huber"] / jnp.maximum(u, _EPS))
    else:
        w = jnp.square(jnp.maximum(1.0 - jnp.square(u / _C["tukey"]), 0.0))
    return w if mask is None else jnp.where(mask[..., None], w, 0.0)


def robust_fit(
    x: jax.Array,
    y: jax.Array,
    *,
    iterations: int = 10,
    robust: str = "huber",
    ridge: float = 1e-6,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Coefficients [N, F, B] of y [N, P, B] ~ x [N, P, F] per image and band; see the module
    text. `mask` bool [N, P]: the rows of each fit (default all)."""
    if robust not in ROBUST:
        raise ValueError(f"robust {robust!r} is unknown; expected one of {ROBUST}")
    w = jnp.ones_like(y) if mask is None else jnp.broadcast_to(mask[..., None], y.shape).astype(y.dtype)
    coef = _solve(x, y, w, ridge)
    if robust == "l2":
        return coef
    for _ in range(int(iterations)):
        w = _weights(y - jnp.einsum("npf,nfb->npb", x, coef), robust, mask)
        coef = _solve(x, y, w, ridge)
    return coef


def init(key: jax.Array, batch: dict) -> dict:
    """Training-free: no variables."""
    del key
    dis.validate_batch(batch)
    return {}


def dissimilarity(
    variables: dict,
    batch: dict,
    *,
    degree: int = 2,
    robust: str = "huber",
    iterations: int = 10,
    linear_rgb: bool = True,
    **form,
) -> dict[str, jax.Array]:
    """Signed residual of each painting's own robust polynomial fit, in the map form `form`."""
    del variables
    n, h, w, b = dis.validate_batch(batch)
    rgb = linearise(batch["rgb"]) if linear_rgb else jnp.asarray(batch["rgb"], jnp.float32)
    x = features(rgb.reshape(n, h * w, 3), degree)
    y = jnp.asarray(batch["bands"], jnp.float32).reshape(n, h * w, b)
    prediction = jnp.einsum("npf,nfb->npb", x, robust_fit(x, y, iterations=iterations, robust=robust))
    prediction = prediction.reshape(n, h, w, b)
    signed = prediction - jnp.asarray(batch["bands"], jnp.float32)
    return {**maps.form(signed, **form), "signed": signed, "prediction": prediction}
