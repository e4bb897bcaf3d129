"""DRAEM's texture augmentations as pure JAX functions on [H, W, C] in [0, 1].

Each op is `op(u, image) -> image`: it maps uniform variates u to its
parameters with DRAEM's ranges (VitjanZ/DRAEM data_loader.py, imgaug) and returns values
in [0, 1]. `augment` applies `n` distinct ops in random order via lax.switch,
as DRAEM's randAugmenter does (np.random.choice(10, 3, replace=False)).

dm-pix supplies gamma, brightness, hue/saturation conversion, solarize and
rotate; posterize, autocontrast, equalize and sharpen are written here.

Where we differ from DRAEM's imgaug ops:
  * brightness_contrast: imgaug's MultiplyAndAddToBrightness acts on the Y of
    YCbCr; we scale and shift all channels (identical for grey images).
  * hue_saturation: imgaug adds to hue and saturation in OpenCV's uint8 HSV;
    we add the same fractions (+-50/255 of a turn, +-50/255 saturation) in
    float HSV. Skipped for 1-channel images (no hue).
  * autocontrast: PIL's cutoff logic on a 256-bin histogram, but the remap is
    continuous (PIL truncates to uint8): differs from PIL by < 1/255.
  * equalize: scikit-image's equalize_hist (256 bins over [min, max],
    interpolated CDF), not PIL's uint8 LUT -- smooth output for float X-rays.
  * everything works in float32; no uint8 round trip.
"""

from collections.abc import Callable, Sequence

import dm_pix as pix
import jax
import jax.numpy as jnp

from xray_flax import errors
from xray_flax.synthesis import perlin

Augmentation = Callable[[jax.Array, jax.Array], jax.Array]

_LEVELS = 256  # histogram bins: the 8-bit levels PIL / imgaug work with


# ---------------------------------------------------------------------------
# Deterministic kernels (parameters explicit) -- tested against references.


def gamma(image: jax.Array, gamma_value: jax.Array) -> jax.Array:
    """image ** gamma (gamma may be per channel, shape [C])."""
    return pix.adjust_gamma(image, gamma_value)


def brightness_contrast(image: jax.Array, multiply: jax.Array, add: jax.Array) -> jax.Array:
    """clip(image * multiply + add, 0, 1)."""
    return jnp.clip(pix.adjust_brightness(image * multiply, add), 0.0, 1.0)


def sharpen(image: jax.Array, factor: jax.Array) -> jax.Array:
    """PIL ImageEnhance.Sharpness: blend of the image and its SMOOTH filter.

    out = smooth + factor * (image - smooth); factor 0 blurs, 1 is identity,
    2 sharpens. SMOOTH is the 3x3 kernel [[1,1,1],[1,5,1],[1,1,1]] / 13; as in
    PIL, the one-pixel border keeps the original values.
    """
    height, width = image.shape[:2]
    padded = jnp.pad(image, ((1, 1), (1, 1), (0, 0)), mode="edge")
    neighbours = sum(padded[dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3))
    smooth = (neighbours + 4.0 * image) / 13.0
    interior = jnp.zeros((height, width, 1), bool).at[1:-1, 1:-1].set(True)
    smooth = jnp.where(interior, smooth, image)
    return jnp.clip(smooth + factor * (image - smooth), 0.0, 1.0)


def hue_saturation(image: jax.Array, hue_shift: jax.Array, saturation_shift: jax.Array) -> jax.Array:
    """RGB only: hue += hue_shift (turns, wraps), saturation += shift (clipped)."""
    hsv = pix.rgb_to_hsv(jnp.clip(image, 0.0, 1.0))
    hue = (hsv[..., 0] + hue_shift) % 1.0
    saturation = jnp.clip(hsv[..., 1] + saturation_shift, 0.0, 1.0)
    rgb = pix.hsv_to_rgb(jnp.stack([hue, saturation, hsv[..., 2]], axis=-1))
    return jnp.clip(rgb, 0.0, 1.0)


def solarize(image: jax.Array, threshold: jax.Array) -> jax.Array:
    """Invert values >= threshold."""
    return pix.solarize(image, threshold)


def posterize(image: jax.Array, bits: jax.Array) -> jax.Array:
    """PIL ImageOps.posterize: keep the top `bits` bits of the 8-bit value."""
    levels = jnp.round(jnp.clip(image, 0.0, 1.0) * 255.0).astype(jnp.int32)
    mask = jnp.left_shift(jnp.int32(255), 8 - bits) & 255
    return (levels & mask).astype(jnp.float32) / 255.0


def invert(image: jax.Array) -> jax.Array:
    return 1.0 - image


def _channel_histograms(levels: jax.Array) -> jax.Array:
    """[C, 256] counts of integer levels [H, W, C] in 0..255."""
    channels = levels.shape[-1]
    flat = (levels + _LEVELS * jnp.arange(channels)).reshape(-1)
    return jnp.bincount(flat, length=_LEVELS * channels).reshape(channels, _LEVELS)


def autocontrast(image: jax.Array, cutoff_percent: jax.Array) -> jax.Array:
    """PIL ImageOps.autocontrast(cutoff), per channel, continuous remap.

    Drop cutoff% of the pixels at each end of the 256-bin histogram, map the
    remaining [lo, hi] levels linearly onto [0, 1]; hi <= lo leaves the channel
    unchanged (PIL does the same).
    """
    image = jnp.clip(image, 0.0, 1.0)
    levels = jnp.round(image * 255.0).astype(jnp.int32)
    histogram = _channel_histograms(levels)  # [C, 256]
    total = levels.shape[0] * levels.shape[1]
    cut = jnp.floor(total * cutoff_percent / 100.0)
    from_low = jnp.cumsum(histogram, axis=1)
    from_high = jnp.cumsum(histogram[:, ::-1], axis=1)[:, ::-1]
    level = jnp.arange(_LEVELS)
    lo = jnp.min(jnp.where(from_low > cut, level, _LEVELS), axis=1)
    hi = jnp.max(jnp.where(from_high > cut, level, -1), axis=1)
    span = (hi - lo).astype(jnp.float32)
    stretched = (image * 255.0 - lo) / jnp.maximum(span, 1.0)
    return jnp.where(span > 0, jnp.clip(stretched, 0.0, 1.0), image)


def equalize(image: jax.Array) -> jax.Array:
    """skimage.exposure.equalize_hist(nbins=256), per channel.

    256 bins spanning the channel's [min, max]; output = the normalised CDF
    linearly interpolated at the bin centres.
    """

    def one_channel(channel):
        lo, hi = jnp.min(channel), jnp.max(channel)
        width = jnp.maximum(hi - lo, 1e-12) / _LEVELS
        position = (channel - lo) / width  # in bins, 0..256
        bins = jnp.clip(jnp.floor(position), 0, _LEVELS - 1).astype(jnp.int32)
        histogram = jnp.bincount(bins.reshape(-1), length=_LEVELS)
        cdf = jnp.cumsum(histogram).astype(jnp.float32)
        cdf = cdf / cdf[-1]
        # np.interp(x, bin centres, cdf) without a search: the centres are
        # evenly spaced, so the left neighbour is floor(position - 0.5); values
        # beyond the first / last centre take the end value, as np.interp does.
        left_position = jnp.clip(position - 0.5, 0.0, _LEVELS - 1.0)
        left = jnp.minimum(jnp.floor(left_position).astype(jnp.int32), _LEVELS - 2)
        fraction = left_position - left
        return cdf[left] * (1.0 - fraction) + cdf[left + 1] * fraction

    channels = [one_channel(image[..., c]) for c in range(image.shape[-1])]
    return jnp.stack(channels, axis=-1)


def rotate(image: jax.Array, degrees: jax.Array) -> jax.Array:
    """Bilinear rotation about the centre, corners filled with 0 (imgaug)."""
    return jnp.clip(perlin.rotate_degrees(image, degrees), 0.0, 1.0)


# ---------------------------------------------------------------------------
# Random ops with DRAEM's parameter ranges: op(u, image) -> image, where u is
# float32 [VARIATES] ~ U[0, 1) mapped to the op's parameters. `augment` draws
# all u with one random call (each jax.random call site costs compile time).

VARIATES = 4


def _between(u: jax.Array, lo: float, hi: float) -> jax.Array:
    """u ~ U[0, 1) mapped linearly onto [lo, hi)."""
    return lo + (hi - lo) * u


def _integer_between(u, lo, hi):
    """Integer uniform on {lo, ..., hi} from u ~ U[0, 1)."""
    return jnp.minimum(lo + jnp.floor(u * (hi - lo + 1)).astype(jnp.int32), hi)


def random_gamma(u, image):
    # iaa.GammaContrast((0.5, 2.0), per_channel=True)
    return gamma(image, _between(u[: image.shape[-1]], 0.5, 2.0))


def random_brightness_contrast(u, image):
    # iaa.MultiplyAndAddToBrightness(mul=(0.8, 1.2), add=(-30, 30))
    return brightness_contrast(image, _between(u[0], 0.8, 1.2), _between(u[1], -30.0, 30.0) / 255.0)


def random_sharpen(u, image):
    # iaa.pillike.EnhanceSharpness() -> factor ~ U(0, 2)
    return sharpen(image, _between(u[0], 0.0, 2.0))


def random_hue_saturation(u, image):
    # iaa.AddToHueAndSaturation((-50, 50), per_channel=True): independent
    # hue and saturation values, each +-50 on imgaug's 255 scale.
    return hue_saturation(image, _between(u[0], -50.0, 50.0) / 255.0, _between(u[1], -50.0, 50.0) / 255.0)


def random_solarize(u, image):
    # iaa.Solarize(0.5, threshold=(32, 128)): applied with probability 0.5.
    solarized = solarize(image, _between(u[1], 32.0, 128.0) / 255.0)
    return jnp.where(u[0] < 0.5, solarized, image)


def random_posterize(u, image):
    # iaa.Posterize() -> nb_bits ~ U{1..8}
    return posterize(image, _integer_between(u[0], 1, 8))


def random_invert(u, image):
    del u  # iaa.Invert() has p=1
    return invert(image)


def random_autocontrast(u, image):
    # iaa.pillike.Autocontrast() -> cutoff ~ U{0..20} percent
    return autocontrast(image, _integer_between(u[0], 0, 20))


def random_equalize(u, image):
    del u  # iaa.pillike.Equalize() has no parameter
    return equalize(image)


def random_rotate(u, image):
    # iaa.Affine(rotate=(-45, 45))
    return rotate(image, _between(u[0], -45.0, 45.0))


OPS: dict[str, Augmentation] = {
    "gamma": random_gamma,
    "brightness_contrast": random_brightness_contrast,
    "sharpen": random_sharpen,
    "hue_saturation": random_hue_saturation,
    "solarize": random_solarize,
    "posterize": random_posterize,
    "invert": random_invert,
    "autocontrast": random_autocontrast,
    "equalize": random_equalize,
    "rotate": random_rotate,
}

RGB_ONLY = frozenset({"hue_saturation"})


def usable_ops(names: Sequence[str], channels: int) -> tuple[str, ...]:
    """The ops of `names` that apply to `channels`; raises on unknown names."""
    errors.require(op_problems(names))
    return tuple(n for n in names if channels == 3 or n not in RGB_ONLY)


def op_problems(names: Sequence[str]) -> list[str]:
    """config.synthesis.augmentations must name ops of `OPS`."""
    unknown = [n for n in names if n not in OPS]
    if not unknown:
        return []
    listing = ", ".join(repr(n) for n in OPS)
    return [f"config.synthesis.augmentations={tuple(names)!r}: unknown {unknown}; known: {listing}"]


def augment(key: jax.Array, image: jax.Array, names: Sequence[str], count: int) -> jax.Array:
    """Applies `count` distinct ops of `names`, in random order (DRAEM).

    `names` and `count` are static. Under vmap, lax.switch with a batched index
    evaluates every branch; under lax.map only the chosen one runs.
    """
    if count == 0 or not names:
        return image
    branches = [OPS[name] for name in names]
    u = jax.random.uniform(key, (len(branches) + count * VARIATES,))
    # A random permutation as the argsort of uniforms: distinct ops, random
    # order (DRAEM: np.random.choice(10, 3, replace=False)).
    order = jnp.argsort(u[: len(branches)])[:count]
    variates = u[len(branches) :].reshape(count, VARIATES)

    def apply_one(step, image):
        return jax.lax.switch(order[step], branches, variates[step], image)

    # A loop, not an unrolled Python for: the branches are compiled once.
    image = jax.lax.fori_loop(0, count, apply_one, image)
    return jnp.clip(image, 0.0, 1.0)
