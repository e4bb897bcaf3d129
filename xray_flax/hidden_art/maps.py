"""Map forms shared by every hidden-art method: the sign, the per-band noise normalisation and the
band combination that turn a method's per-band residual into the one hidden-content map.

Every method computes a SIGNED per-band residual ``residual`` [N, H, W, B]: positive where the
band is darker than the method expects from the RGB (prediction - band for the regression
family; the analogous difference for the plain baseline and the embedding methods). Hidden
carbon and dark earlier paint only ever DARKEN a band (their reflectance is below the ground's,
docs/hidden_art.md), so the sign carries information the absolute value throws away.

Public functions and the source of each choice
- `form(residual, *, sign, scale, combination, wavelengths=None)` -> {"per_band", "map",
  "band_weights" [N, B]}:
  * sign (`SIGNS`): "signed" keeps the residual (high = darker than expected) [ours, docs/results.md: the
    absolute value halves the AUROC's room, it ranks brighter-than-expected pixels as hidden];
    "absolute" is |residual|, the reference tools' form, kept for comparison.
  * scale (`SCALES`): "noise" divides each image's band by its robust noise scale,
    1.4826 x the median absolute deviation of the residual from its median (the standard
    deviation for Gaussian noise; a minority of hidden pixels does not move it) [ours]; "none"
    leaves the residual in band units.
  * combination (`COMBINATIONS`): "longest" the last band (bands ordered by wavelength, as the
    simulator's 400-1,000 nm and ArtExtract's ms_1..8); "wavelength": weights growing linearly
    from 0 at the first band's wavelength to 1 at the last (paint grows transparent towards the
    infrared: the hidden contrast t^2 rises with the wavelength) [ours]; "signal": per image,
    each band weighted by its measured excess of darker-than-expected pixels, relu(q99 + q01) of
    the normalised residual (0 for a symmetric residual: noise alone; truth-free) [ours], equal
    weights where no band has any; "mean" over the bands; "long_half" the mean over the last
    ceil(B/2) bands; "max" over the bands (`dissimilarity.combine`).
  `wavelengths` [B] nm defaults to evenly spaced bands (only the order and spacing matter).
- `check_form(sign, scale, combination)`: ValueError naming the bad value (configs check
  them through `xray_flax.errors.ConfigError` in `hidden_art.methods`).

Defaults (`DEFAULT_FORM`: signed, noise-scaled, the longest band) were chosen by measurement
on the validation paintings of simulation seed 0 only (docs/results.md, "Map forms": for the
per-painting regression, signed beats absolute by 0.02-0.10 AUROC in every combination, and
the longest band beats every weighting tried: the shorter bands add more noise and pigment
error than hidden signal); every method's config states its own.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

SIGNS = ("signed", "absolute")
SCALES = ("noise", "none")
COMBINATIONS = ("longest", "wavelength", "signal", "mean", "long_half", "max")
DEFAULT_FORM = {"sign": "signed", "scale": "noise", "combination": "longest"}
MAD_TO_STD = 1.4826  # 1 / Phi^-1(3/4): the MAD of a Gaussian times this is its standard deviation
_EPS = 1e-6


def check_form(sign: str, scale: str, combination: str) -> None:
    for value, allowed, what in (
        (sign, SIGNS, "sign"),
        (scale, SCALES, "scale"),
        (combination, COMBINATIONS, "combination"),
    ):
        if value not in allowed:
            raise ValueError(f"map {what} {value!r} is unknown; expected one of {allowed}")


def robust_scale(values: jax.Array) -> jax.Array:
    """[N, 1, 1, B]: 1.4826 x the median absolute deviation over (H, W) per image and band."""
    centre = jnp.median(values, axis=(1, 2), keepdims=True)
    return MAD_TO_STD * jnp.median(jnp.abs(values - centre), axis=(1, 2), keepdims=True)


def wavelength_weights(n_bands: int, wavelengths=None) -> jax.Array:
    """[B] weights rising linearly from 0 (shortest band) to 1 (longest), summing to 1; one band: [1]."""
    if n_bands == 1:
        return jnp.ones((1,), jnp.float32)
    lam = jnp.arange(n_bands, dtype=jnp.float32) if wavelengths is None else jnp.asarray(wavelengths, jnp.float32)
    if lam.shape != (n_bands,):
        raise ValueError(f"wavelengths must be [{n_bands}], got {tuple(lam.shape)}")
    w = (lam - lam.min()) / jnp.maximum(lam.max() - lam.min(), _EPS)
    return w / jnp.sum(w)


def signal_weights(z: jax.Array) -> jax.Array:
    """[N, B]: relu(q99 + q01) of each image's band residual (its darker-than-expected excess),
    normalised to sum 1; equal weights where every band's excess is 0."""
    q = jnp.quantile(z, jnp.asarray([0.01, 0.99]), axis=(1, 2))  # [2, N, B]
    excess = jnp.maximum(q[0] + q[1], 0.0)
    total = jnp.sum(excess, axis=-1, keepdims=True)
    equal = jnp.full_like(excess, 1.0 / z.shape[-1])
    return jnp.where(total > 0, excess / jnp.where(total > 0, total, 1.0), equal)


def _weights(z: jax.Array, combination: str, wavelengths) -> jax.Array:
    n, b = z.shape[0], z.shape[-1]
    if combination == "longest":
        return jnp.broadcast_to(jnp.zeros((b,), jnp.float32).at[-1].set(1.0), (n, b))
    if combination == "wavelength":
        return jnp.broadcast_to(wavelength_weights(b, wavelengths), (n, b))
    if combination == "signal":
        return signal_weights(z)
    if combination == "mean":
        return jnp.full((n, b), 1.0 / b, jnp.float32)
    if combination == "long_half":
        return jnp.broadcast_to(jnp.zeros((b,), jnp.float32).at[b // 2 :].set(1.0 / (b - b // 2)), (n, b))
    raise ValueError(f"combination {combination!r} has no band weights")


def form(
    residual: jax.Array,
    *,
    sign: str = DEFAULT_FORM["sign"],
    scale: str = DEFAULT_FORM["scale"],
    combination: str = DEFAULT_FORM["combination"],
    wavelengths=None,
) -> dict[str, jax.Array]:
    """{"per_band" [N, H, W, B], "map" [N, H, W], "band_weights" [N, B]} of a signed residual
    [N, H, W, B] (positive = darker than expected); see the module text."""
    check_form(sign, scale, combination)
    z = jnp.asarray(residual, jnp.float32)
    if scale == "noise":
        z = z / (robust_scale(z) + _EPS)
    if sign == "absolute":
        z = jnp.abs(z)
    if combination == "max":
        weights = jnp.zeros(z.shape[:1] + z.shape[-1:], jnp.float32)
        return {"per_band": z, "map": jnp.max(z, axis=-1), "band_weights": weights}
    weights = _weights(z, combination, wavelengths)
    return {"per_band": z, "map": jnp.einsum("nhwb,nb->nhw", z, weights), "band_weights": weights}
