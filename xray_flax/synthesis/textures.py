"""Texture sources for synthetic anomalies.

(a) `load_texture_bank`: DTD-layout images (<root>/images/<category>/*.jpg),
    loaded once on the host, resized to the patch, kept on the device.
(b) `procedural_texture`: fractal noise, stripes, blobs, fibres -- generated on
    the device from a key, no files needed.
(c) other patches of the same batch -- chosen in synthesize.py.
"""

import math
import pathlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from xray_flax.synthesis import perlin
from xray_flax.synthesis.augment import _between

PROCEDURAL_KINDS = ("fractal", "stripes", "blobs", "fibres")

# Value of the 1-entry placeholder bank returned when no DTD root is set. The
# spec gives the dtd source weight 0 in that case, so it is never drawn.
PLACEHOLDER_VALUE = 0.5


# --------------------------------------------------------------------------
# (a) DTD-layout bank (host side, runs once).


def dtd_image_paths(dtd_root: str) -> list[pathlib.Path]:
    """Sorted paths <dtd_root>/images/<category>/*.jpg (DRAEM's glob)."""
    return sorted(pathlib.Path(dtd_root).glob("images/*/*.jpg"))


def choose_texture_paths(paths: Sequence[pathlib.Path], limit: int, seed: int) -> list[pathlib.Path]:
    """At most `limit` paths, round-robin over categories, seeded shuffle.

    Round-robin so a small cap still spans all 47 DTD categories instead of the
    first few alphabetically.
    """
    rng = np.random.default_rng(seed)
    by_category: dict[str, list[pathlib.Path]] = {}
    for path in paths:
        by_category.setdefault(path.parent.name, []).append(path)
    queues = []
    for category in sorted(by_category):
        members = list(by_category[category])
        rng.shuffle(members)
        queues.append(members)
    chosen = []
    while len(chosen) < limit and any(queues):
        for queue in queues:
            if queue and len(chosen) < limit:
                chosen.append(queue.pop())
    return chosen


def _read_texture(path: pathlib.Path, patch_size: int, channels: int) -> np.ndarray:
    """One image -> float32 [patch, patch, C] in [0, 1].

    Whole image resized to the patch (aspect not kept), as DRAEM's cv2.resize.
    PIL's bilinear filter widens its support when shrinking (antialiased);
    cv2's INTER_LINEAR does not -- ours aliases less. Grey is PIL's 'L'
    (ITU-R 601 luma).
    """
    try:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB")
            img = img.resize((patch_size, patch_size), Image.Resampling.BILINEAR)
            array = np.asarray(img, dtype=np.float32) / 255.0
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"Cannot read texture image {path}: {err}") from err
    if channels == 1:
        array = array[..., None]
    return array


def load_texture_bank(synthesis_config: ml_collections.ConfigDict, patch_size: int, channels: int) -> np.ndarray:
    """Texture bank float32 [N, patch, patch, channels] in [0, 1].

    With `dtd_root` empty, returns a single mid-grey placeholder (N = 1); the
    spec then gives the dtd source weight 0, so the placeholder is never used.
    Procedural textures are not pre-rendered: they are made per step on the
    device, which gives an unlimited variety at no memory cost.

    Raises:
      FileNotFoundError: dtd_root is set but holds no images/*/*.jpg.
      ValueError: an image cannot be decoded (the message names the file).
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    root = synthesis_config.dtd_root
    if not root:
        return np.full((1, patch_size, patch_size, channels), PLACEHOLDER_VALUE, np.float32)
    paths = dtd_image_paths(root)
    if not paths:
        raise FileNotFoundError(
            f"No texture images found: expected {root}/images/<category>/*.jpg (DTD layout) under dtd_root={root!r}."
        )
    chosen = choose_texture_paths(paths, synthesis_config.max_textures, synthesis_config.texture_seed)
    bank = np.empty((len(chosen), patch_size, patch_size, channels), np.float32)
    for i, path in enumerate(chosen):
        bank[i] = _read_texture(path, patch_size, channels)
    return bank


# --------------------------------------------------------------------------
# (b) Procedural textures (device side, pure JAX, [H, W] in [0, 1]).


def _normalise(x: jax.Array) -> jax.Array:
    """Min-max to [0, 1] so every texture uses the full intensity range."""
    lo, hi = jnp.min(x), jnp.max(x)
    return (x - lo) / jnp.maximum(hi - lo, 1e-6)


def _pixel_grid(shape: Sequence[int]):
    """Pixel coordinates in units of the patch height, [H, 1] and [1, W]."""
    height, width = shape
    y = jnp.arange(height, dtype=jnp.float32)[:, None] / height
    x = jnp.arange(width, dtype=jnp.float32)[None, :] / height
    return y, x


def _draws(key: jax.Array, count: int, lattices: Sequence[int] = ()):
    """`count` scalars ~ U[0, 1) and one gradient lattice per entry of
    `lattices` (side lengths), all from ONE random call.

    Every jax.random call site compiles its own copy of the threefry hash;
    drawing everything at once keeps the jitted train step quick to compile.
    """
    sizes = [count] + [side * side for side in lattices]
    u = jax.random.uniform(key, (sum(sizes),))
    pieces = jnp.split(u, np.cumsum(sizes)[:-1])
    gradients = [perlin.gradients_from_uniform(p.reshape(side, side)) for p, side in zip(pieces[1:], lattices)]
    return pieces[0], gradients


def fractal_noise(key: jax.Array, shape: Sequence[int], octaves: int = 4) -> jax.Array:
    """Sum of Perlin octaves, amplitude halving as resolution doubles (1/f).

    The base lattice has 1, 2 or 4 cells; octave o has 2**o times more.
    """
    max_exponent = 2 + octaves - 1
    side = 2**max_exponent + 1
    u = jax.random.uniform(key, (1 + octaves * side * side,))
    base = jnp.floor(u[0] * 3).astype(jnp.int32)
    gradients = perlin.gradients_from_uniform(u[1:].reshape(octaves, side, side))
    exponents = base + jnp.arange(octaves)
    resolutions = jnp.left_shift(1, jnp.stack([exponents, exponents], -1))
    # vmap over octaves: one compiled Perlin instead of `octaves` copies.
    layers = jax.vmap(perlin.perlin_from_gradients, in_axes=(0, None, 0))(gradients, shape, resolutions)
    amplitudes = 0.5 ** jnp.arange(octaves, dtype=jnp.float32)
    return _normalise(jnp.tensordot(amplitudes, layers, axes=1))


def stripes(key: jax.Array, shape: Sequence[int]) -> jax.Array:
    """Wavy parallel bands: a sinusoid with a Perlin-warped phase."""
    u, (warp_gradients,) = _draws(key, 4, lattices=(2,))
    y, x = _pixel_grid(shape)
    frequency = _between(u[0], 2.0, 24.0)  # cycles per patch height
    angle = _between(u[1], 0.0, math.pi)
    phase = _between(u[2], 0.0, 2 * math.pi)
    warp_amount = _between(u[3], 0.0, 3.0)
    warp = perlin.perlin_from_gradients(warp_gradients, shape, jnp.array([1, 1]))
    along = y * jnp.cos(angle) + x * jnp.sin(angle)
    return 0.5 + 0.5 * jnp.sin(2 * math.pi * frequency * along + phase + warp_amount * warp)


def blobs(key: jax.Array, shape: Sequence[int], count: int = 12) -> jax.Array:
    """Soft round spots: a sum of Gaussians of random centre, size and sign."""
    u, _ = _draws(key, 4 * count)
    u = u.reshape(4, count, 1)
    y, x = _pixel_grid(shape)
    y, x = y[:, 0], x[0]  # [H], [W]
    centre_y = u[0]
    centre_x = u[1] * (shape[1] / shape[0])
    sigma = _between(u[2], 0.02, 0.15)
    weight = _between(u[3], -0.5, 1.0)
    # A round Gaussian is separable: sum_k w_k g_k(y) g_k(x) is one [H, K] x
    # [K, W] matmul instead of K full-size exp images.
    along_y = weight * jnp.exp(-((y - centre_y) ** 2) / (2 * sigma**2))  # [K, H]
    along_x = jnp.exp(-((x - centre_x) ** 2) / (2 * sigma**2))  # [K, W]
    return _normalise(along_y.T @ along_x)


def fibres(key: jax.Array, shape: Sequence[int]) -> jax.Array:
    """Thin bright roughly parallel strands (canvas threads, wood grain)."""
    u, (warp_gradients, modulation_gradients) = _draws(key, 3, lattices=(3, 3))
    y, x = _pixel_grid(shape)
    frequency = _between(u[0], 16.0, 64.0)  # strands per patch height
    angle = _between(u[1], 0.0, math.pi)
    sharpness = _between(u[2], 4.0, 24.0)  # higher power -> thinner strands
    warp = perlin.perlin_from_gradients(warp_gradients, shape, jnp.array([2, 2]))
    modulation = perlin.perlin_from_gradients(modulation_gradients, shape, jnp.array([1, 2]))
    along = y * jnp.cos(angle) + x * jnp.sin(angle)
    strands = jnp.abs(jnp.sin(math.pi * frequency * along + 4.0 * warp))
    return _normalise(strands**sharpness * (1.0 + 0.5 * modulation))


_GENERATORS = {"fractal": fractal_noise, "stripes": stripes, "blobs": blobs, "fibres": fibres}


def procedural_texture(
    key: jax.Array, shape: Sequence[int], channels: int, kinds: Sequence[str] = PROCEDURAL_KINDS
) -> jax.Array:
    """A random procedural texture, float32 [H, W, channels] in [0, 1].

    The kind is drawn uniformly from `kinds` and run through lax.switch. For
    RGB each channel is scaled by a random factor in [0.6, 1] (a tint), so the
    hue augmentation has colour to work on.
    """
    key_choice, key_texture = jax.random.split(key)
    u = jax.random.uniform(key_choice, (1 + channels,))
    branches = [lambda k, g=_GENERATORS[name]: g(k, shape) for name in kinds]
    kind = jnp.minimum(jnp.floor(u[0] * len(branches)).astype(jnp.int32), len(branches) - 1)
    texture = jax.lax.switch(kind, branches, key_texture)[..., None]
    if channels == 1:
        return texture
    return texture * _between(u[1:], 0.6, 1.0)
