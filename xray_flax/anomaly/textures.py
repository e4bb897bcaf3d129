"""Texture sources for synthetic anomalies.

(a) `load_texture_bank`: DTD-layout images (<root>/images/<category>/*.jpg),
    loaded once on the host, resized to the patch, kept on the device.
(b) `procedural_texture`: fractal noise, stripes, blobs, fibres -- generated on
    the device from a key, no files needed.
(c) other patches of the same batch -- chosen in synthesize.py.
"""

import math
import pathlib
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from xray_flax.anomaly import perlin

PROCEDURAL_KINDS = ('fractal', 'stripes', 'blobs', 'fibres')

# Value of the 1-entry placeholder bank returned when no DTD root is set. The
# spec gives the dtd source weight 0 in that case, so it is never drawn.
PLACEHOLDER_VALUE = 0.5


# --------------------------------------------------------------------------
# (a) DTD-layout bank (host side, runs once).


def dtd_image_paths(dtd_root: str) -> list[pathlib.Path]:
  """Sorted paths <dtd_root>/images/<category>/*.jpg (DRAEM's glob)."""
  return sorted(pathlib.Path(dtd_root).glob('images/*/*.jpg'))


def _balanced_choice(paths: Sequence[pathlib.Path], limit: int,
                     seed: int) -> list[pathlib.Path]:
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


def _read_texture(path: pathlib.Path, patch_size: int,
                  channels: int) -> np.ndarray:
  """One image -> float32 [patch, patch, C] in [0, 1].

  Whole image resized to the patch (aspect not kept), as DRAEM's cv2.resize.
  PIL's bilinear filter widens its support when shrinking (antialiased);
  cv2's INTER_LINEAR does not -- ours aliases less. Grey is PIL's 'L'
  (ITU-R 601 luma).
  """
  try:
    with Image.open(path) as img:
      img = img.convert('L' if channels == 1 else 'RGB')
      img = img.resize((patch_size, patch_size), Image.Resampling.BILINEAR)
      array = np.asarray(img, dtype=np.float32) / 255.0
  except (OSError, ValueError, Image.DecompressionBombError) as err:
    raise ValueError(f'Cannot read texture image {path}: {err}') from err
  if channels == 1:
    array = array[..., None]
  return array


def load_texture_bank(anomaly_config: ml_collections.ConfigDict,
                      patch_size: int, channels: int) -> np.ndarray:
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
    raise ValueError(f'channels must be 1 or 3, got {channels}')
  root = anomaly_config.dtd_root
  if not root:
    return np.full((1, patch_size, patch_size, channels), PLACEHOLDER_VALUE,
                   np.float32)
  paths = dtd_image_paths(root)
  if not paths:
    raise FileNotFoundError(
        f'No texture images found: expected {root}/images/<category>/*.jpg '
        f'(DTD layout) under dtd_root={root!r}.')
  chosen = _balanced_choice(paths, anomaly_config.max_textures,
                            anomaly_config.texture_seed)
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


def fractal_noise(key: jax.Array, shape: Sequence[int],
                  octaves: int = 4) -> jax.Array:
  """Sum of Perlin octaves, amplitude halving as resolution doubles (1/f)."""
  key_base, key_octaves = jax.random.split(key)
  base = jax.random.randint(key_base, (), 0, 3)  # lattice 1, 2 or 4 cells
  total = jnp.zeros(shape, jnp.float32)
  for octave, octave_key in enumerate(jax.random.split(key_octaves, octaves)):
    exponent = base + octave
    total += 0.5**octave * perlin.perlin_noise(
        octave_key, shape, jnp.stack([exponent, exponent]),
        max_scale_exponent=2 + octaves - 1)
  return _normalise(total)


def stripes(key: jax.Array, shape: Sequence[int]) -> jax.Array:
  """Wavy parallel bands: a sinusoid with a Perlin-warped phase."""
  keys = jax.random.split(key, 5)
  y, x = _pixel_grid(shape)
  frequency = jax.random.uniform(keys[0], (), minval=2.0, maxval=24.0)
  angle = jax.random.uniform(keys[1], (), maxval=math.pi)
  phase = jax.random.uniform(keys[2], (), maxval=2 * math.pi)
  warp_amount = jax.random.uniform(keys[3], (), maxval=3.0)
  warp = perlin.perlin_noise(keys[4], shape, jnp.array([1, 1]), 1)
  along = y * jnp.cos(angle) + x * jnp.sin(angle)
  return 0.5 + 0.5 * jnp.sin(2 * math.pi * frequency * along + phase +
                             warp_amount * warp)


def blobs(key: jax.Array, shape: Sequence[int],
          count: int = 12) -> jax.Array:
  """Soft round spots: a sum of Gaussians of random centre, size and sign."""
  keys = jax.random.split(key, 4)
  y, x = _pixel_grid(shape)
  aspect = shape[1] / shape[0]
  centre_y = jax.random.uniform(keys[0], (count, 1, 1))
  centre_x = jax.random.uniform(keys[1], (count, 1, 1), maxval=aspect)
  sigma = jax.random.uniform(keys[2], (count, 1, 1), minval=0.02, maxval=0.15)
  weight = jax.random.uniform(keys[3], (count, 1, 1), minval=-0.5, maxval=1.0)
  squared = (y[None] - centre_y)**2 + (x[None] - centre_x)**2
  return _normalise(jnp.sum(weight * jnp.exp(-squared / (2 * sigma**2)),
                            axis=0))


def fibres(key: jax.Array, shape: Sequence[int]) -> jax.Array:
  """Thin bright roughly parallel strands (canvas threads, wood grain)."""
  keys = jax.random.split(key, 5)
  y, x = _pixel_grid(shape)
  frequency = jax.random.uniform(keys[0], (), minval=16.0, maxval=64.0)
  angle = jax.random.uniform(keys[1], (), maxval=math.pi)
  sharpness = jax.random.uniform(keys[2], (), minval=4.0, maxval=24.0)
  warp = perlin.perlin_noise(keys[3], shape, jnp.array([2, 2]), 1)
  modulation = perlin.perlin_noise(keys[4], shape, jnp.array([1, 2]), 1)
  along = y * jnp.cos(angle) + x * jnp.sin(angle)
  strands = jnp.abs(jnp.sin(math.pi * frequency * along + 4.0 * warp))
  return _normalise(strands**sharpness * (1.0 + 0.5 * modulation))


_GENERATORS = {'fractal': fractal_noise, 'stripes': stripes, 'blobs': blobs,
               'fibres': fibres}


def procedural_texture(key: jax.Array, shape: Sequence[int], channels: int,
                       kinds: Sequence[str] = PROCEDURAL_KINDS) -> jax.Array:
  """A random procedural texture, float32 [H, W, channels] in [0, 1].

  The kind is drawn uniformly from `kinds` and run through lax.switch. For
  RGB each channel is scaled by a random factor in [0.6, 1] (a tint), so the
  hue augmentation has colour to work on.
  """
  key_kind, key_texture, key_tint = jax.random.split(key, 3)
  branches = [lambda k, g=_GENERATORS[name]: g(k, shape) for name in kinds]
  kind = jax.random.randint(key_kind, (), 0, len(branches))
  texture = jax.lax.switch(kind, branches, key_texture)[..., None]
  if channels == 1:
    return texture
  tint = jax.random.uniform(key_tint, (channels,), minval=0.6, maxval=1.0)
  return texture * tint
