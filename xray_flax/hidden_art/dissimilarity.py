"""Per-band dissimilarity of a painting's RGB and its multispectral bands: the plain baseline, the
shared helpers of the pixel methods, and the 2024 tool's collage and overlay.

Pure `jax.numpy` on batches of the family's data model (common.md): ``{"rgb": [N, H, W, 3],
"bands": [N, H, W, B]}``, float32 in [0, 1]. Every function is jit-able (shapes are static).

Public functions and the source of each choice
- `grey(rgb)` -> [N, H, W]: ITU-R BT.601 luma (0.2989 R + 0.5870 G + 0.1140 B) through
  `dm_pix.rgb_to_grayscale` [ours: the common default (TensorFlow's, dm-pix's); the camera's sRGB
  values are used as they are, not linearised, as the issue's baseline states it: per-band
  normalisation removes any affine difference and the regression method models the rest].
- `normalise(images, method)`: per image and per channel over (H, W) [ours]. "zscore" (default):
  zero mean, unit standard deviation, so |a - b| of two normalised images is in units of their
  spread and a band's exposure or gain does not matter. "percentile": the 1st and 99th
  percentiles map to 0 and 1 (not clipped, so differences stay linear), robust to a few hot pixels.
- `combine(per_band, how)` -> [N, H, W]: the one hidden-content map, `maps.COMBINATIONS`
  (`xray_flax.hidden_art.maps`): "mean" over the bands [ours: no prior on which bands show the
  hidden layer]; "long_half": the mean over the last ceil(B/2) bands, for bands ordered by
  wavelength (the ArtExtract layout's ms_1..8, the simulator's 400-1000 nm) [ours: paint grows
  transparent towards the infrared, so the hidden layer shows there most]; "longest",
  "wavelength", "signal" (band weights, `maps.form`); "max" over the bands.
- `init(key, batch)` -> {} and `dissimilarity(variables, batch, ...)` -> {"per_band", "map",
  "signed"}: the PLAIN baseline of the issue. The signed difference is
  normalise(grey(RGB)) - normalise(band) (positive: the band darker than the RGB's luma says),
  turned into the map by `maps.form` (sign, noise normalisation, combination); the defaults
  (sign="absolute", scale="none", combination="mean") are the reference's
  |normalise(band) - normalise(grey(RGB))| averaged over the bands, the config's
  (configs/hidden_plain.py) the measured better form.
- `validate_batch(batch, what)`: clear errors for missing keys and mismatched shapes.
- `across_bands(per_band)`: per pixel, min-max normalisation across the bands [ArtExtract code],
  0 where all bands are equal (the reference's 1e-8 guard gives the same).
- `collage(per_band, threshold, reference_quantile)` -> {"collage": int32 [N, H, W] band index of
  the largest difference, -1 where too weak; "strength"; "across_bands"}. THE FIX of the reference's
  quirk (docs/papers.md, "ArtExtract"): there the threshold acted after the per-pixel min-max across
  bands, whose maximum is always 1, so it never changed the collage. Here the threshold acts on
  the strength = the pixel's largest difference (max over bands) divided by the image's
  `reference_quantile` of that maximum, clipped to [0, 1] [ours]. reference_quantile=1.0 is the
  image's largest difference; the default 0.99 keeps a few hot pixels from dimming the rest.
  threshold 0.5 [ArtExtract code; the write-up says 0.7]. The reference's clamp to [0.1, 1] is
  dropped: it changes neither the argmax nor this threshold.
- `overlay(rgb, hidden_map)` -> uint8 [N, H, W, 3]: the grey RGB (min-max stretched per image) with
  the map, divided by its per-image maximum, added to the blue channel and clipped [ArtExtract
  code, `view_output`; the grey is BT.601 here, the reference's channel mean there].
"""

from __future__ import annotations

from collections.abc import Mapping

import dm_pix as pix
import jax
import jax.numpy as jnp
import optax

from xray_flax.hidden_art import maps

NORMALISATIONS = ("zscore", "percentile")
COMBINATIONS = maps.COMBINATIONS
LUMA_STANDARD = "rec601"
# Keeps constant images finite: their normalised values are 0 (zscore) or the shifted raw values.
_EPS = 1e-6


def validate_batch(batch: dict, what: str = "the batch") -> tuple[int, int, int, int]:
    """(N, H, W, B) of a pixel-method batch; ValueError naming `what` if a key is missing or the
    shapes do not match (RGB [N, H, W, 3], bands [N, H, W, B])."""
    missing = [k for k in ("rgb", "bands") if k not in batch]
    if missing:
        raise ValueError(f"{what} lacks {missing}: pixel methods need 'rgb' [N, H, W, 3] and 'bands' [N, H, W, B]")
    rgb_shape, band_shape = tuple(batch["rgb"].shape), tuple(batch["bands"].shape)
    if len(rgb_shape) != 4 or rgb_shape[-1] != 3:
        raise ValueError(f"{what}: 'rgb' must be [N, H, W, 3], got {rgb_shape}")
    if len(band_shape) != 4 or band_shape[:3] != rgb_shape[:3] or band_shape[-1] < 1:
        raise ValueError(
            f"{what}: 'bands' must be [N, H, W, B] with the RGB's N, H, W {rgb_shape[:3]}, got {band_shape}"
        )
    return band_shape


def grey(rgb: jax.Array) -> jax.Array:
    """BT.601 luma [..., H, W] of an RGB image [..., H, W, 3]."""
    return pix.rgb_to_grayscale(jnp.asarray(rgb, jnp.float32), luma_standard=LUMA_STANDARD)[..., 0]


def normalise(images: jax.Array, method: str = "zscore") -> jax.Array:
    """Per image and per channel normalisation of [N, H, W, C] over (H, W); see the module text."""
    images = jnp.asarray(images, jnp.float32)
    if method == "zscore":
        mean = jnp.mean(images, axis=(1, 2), keepdims=True)
        std = jnp.std(images, axis=(1, 2), keepdims=True)
        return (images - mean) / (std + _EPS)
    if method == "percentile":
        low, high = jnp.percentile(images, jnp.asarray([1.0, 99.0]), axis=(1, 2), keepdims=True)
        return (images - low) / (high - low + _EPS)
    raise ValueError(f"normalisation {method!r} is unknown; expected one of {NORMALISATIONS}")


def combine(per_band: jax.Array, how: str = "mean") -> jax.Array:
    """One map [N, H, W] from per-band differences [N, H, W, B]; see the module text."""
    if how == "mean":
        return jnp.mean(per_band, axis=-1)
    if how == "max":
        return jnp.max(per_band, axis=-1)
    if how not in COMBINATIONS:
        raise ValueError(f"combination {how!r} is unknown; expected one of {COMBINATIONS}")
    return maps.form(per_band, sign="signed", scale="none", combination=how)["map"]


def init(key: jax.Array, batch: dict) -> dict:
    """Training-free: no variables."""
    del key
    validate_batch(batch)
    return {}


def dissimilarity(
    variables: dict,
    batch: dict,
    *,
    normalisation: str = "zscore",
    combination: str = "mean",
    sign: str = "absolute",
    scale: str = "none",
) -> dict[str, jax.Array]:
    """The plain baseline: signed = normalise(grey(RGB)) - normalise(band) [N, H, W, B];
    per_band and map in the form (sign, scale, combination) of `maps.form`; the
    defaults give per_band = |normalise(band) - normalise(grey(RGB))| and its mean."""
    del variables
    validate_batch(batch)
    luma = normalise(grey(batch["rgb"])[..., None], normalisation)
    signed = luma - normalise(batch["bands"], normalisation)
    out = maps.form(signed, sign=sign, scale=scale, combination=combination)
    return {**out, "signed": signed}


def across_bands(per_band: jax.Array) -> jax.Array:
    """Per pixel min-max across the bands, [N, H, W, B] in [0, 1] (0 where the bands agree)."""
    low = jnp.min(per_band, axis=-1, keepdims=True)
    high = jnp.max(per_band, axis=-1, keepdims=True)
    span = high - low
    return jnp.where(span > 0, (per_band - low) / jnp.where(span > 0, span, 1.0), 0.0)


def collage(per_band: jax.Array, *, threshold: float = 0.5, reference_quantile: float = 0.99) -> dict[str, jax.Array]:
    """{"collage": int32 [N, H, W] argmax band (-1 where strength < threshold), "strength"
    float32 [N, H, W] in [0, 1], "across_bands" [N, H, W, B]}; see the module text."""
    if not 0.0 < reference_quantile <= 1.0:
        raise ValueError(f"reference_quantile must lie in (0, 1], got {reference_quantile}")
    per_band = jnp.asarray(per_band, jnp.float32)
    peak = jnp.max(per_band, axis=-1)
    reference = jnp.quantile(peak, reference_quantile, axis=(1, 2), keepdims=True)
    strength = jnp.clip(jnp.where(reference > 0, peak / jnp.where(reference > 0, reference, 1.0), 0.0), 0.0, 1.0)
    index = jnp.argmax(per_band, axis=-1).astype(jnp.int32)
    return {
        "collage": jnp.where(strength >= threshold, index, -1),
        "strength": strength,
        "across_bands": across_bands(per_band),
    }


def overlay(rgb: jax.Array, hidden_map: jax.Array) -> jax.Array:
    """uint8 [N, H, W, 3]: grey RGB (min-max per image) + map / max(map) on the blue channel."""
    luma = grey(rgb)
    low = jnp.min(luma, axis=(-2, -1), keepdims=True)
    high = jnp.max(luma, axis=(-2, -1), keepdims=True)
    luma = (luma - low) / (high - low + 1e-8)  # the reference's guard: a flat image shows black
    hidden_map = jnp.maximum(jnp.asarray(hidden_map, jnp.float32), 0.0)
    top = jnp.max(hidden_map, axis=(-2, -1), keepdims=True)
    blue = jnp.where(top > 0, hidden_map / jnp.where(top > 0, top, 1.0), 0.0)
    image = jnp.stack([luma, luma, jnp.clip(luma + blue, 0.0, 1.0)], axis=-1)
    return jnp.round(image * 255.0).astype(jnp.uint8)


def adam(config: Mapping | None, default_learning_rate: float) -> optax.GradientTransformation:
    """Adam (AdamW when config.weight_decay > 0) at config.learning_rate: the pixel methods' optimiser."""
    config = {} if config is None else config
    learning_rate = float(config.get("learning_rate", default_learning_rate))
    weight_decay = float(config.get("weight_decay", 0.0))
    if weight_decay > 0:
        return optax.adamw(learning_rate, weight_decay=weight_decay)
    return optax.adam(learning_rate)
