"""SuperSimpleNet's feature-level synthetic anomalies: Perlin masks and where the noise goes (pure).

Per training step [paper, anomalib anomaly_generator.py, original code]:

* the batch of b tiles is duplicated (2b rows: each tile once with and once without, or twice
  with different, synthetic anomalies);
* each of the 2b rows draws a binary Perlin mask at the feature resolution: Perlin noise with
  2^kx x 2^ky lattice cells, kx, ky ~ U{min_exponent .. max_exponent} independently, thresholded
  at `threshold` (> threshold = anomalous); with probability 1 - `anomaly_probability` (0.5) the
  mask is emptied;
* noise ~ N(0, noise_std^2) per feature value is added inside the mask, not where a real
  anomaly's mask is (anomalib: no overlap), and not at all on labelled anomalous tiles when
  `noise_on_labelled_anomalies` is off (the original code's `bad` = False);
* the targets: mask = real mask OR noise mask, label = real label OR any(noise mask).

The Perlin noise is xray_flax/synthesis/perlin.py's (DRAEM's algorithm, the same as the
references' `rand_perlin_2d`), evaluated on the feature grid directly. Where this differs:

* the references draw the noise on the next power of two of the feature side and resize it
  bilinearly to the side; here the noise is evaluated on the side itself (perlin.py's
  "generate larger, crop"). The same noise when the side is a power of two (64 at 256 px,
  16 and 32 on our 64- and 128-px tiles). [ours]
* the references' exponents are 0..5 (torch.randint(0, 6)), 32 cells at most, 2 feature pixels
  per cell on a 64-pixel map; on a smaller map 32 cells is finer than a pixel (every pixel on a
  lattice point, where Perlin noise is 0; anomalib's generator fails there). The exponent is
  capped at log2(next power of two of the side) - 1, the same two pixels per cell at the
  finest: 3 on a 16-pixel map, 4 on 32, 5 on 64 (the reference's value). [ours]
* anomalib rescales a noise field whose every value is <= threshold to [-1, 1] by its minimum and
  maximum, so that a mask that is kept is never empty; the original code keeps such masks
  empty (their tiles are normal: the label follows the mask). `rescale_empty` picks
  (default: anomalib's). [anomalib; original code]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from xray_flax.synthesis import perlin


def max_exponent_for(height: int, width: int, max_exponent: int) -> int:
    """The largest lattice exponent used on an h x w feature map (module docstring): at least two
    feature pixels per cell on the shorter side's next power of two, never above `max_exponent`."""
    side = min(int(height), int(width))
    power = max(1, (side - 1).bit_length())  # log2 of the next power of two >= side
    return max(0, min(int(max_exponent), power - 1))


def perlin_field(key: jax.Array, shape: tuple[int, int], min_exponent: int, max_exponent: int) -> jax.Array:
    """Perlin noise [h, w] with 2^kx x 2^ky cells, k ~ U{min_exponent .. max_exponent} per axis."""
    exponents, gradients, _ = perlin.mask_draws(key, (min_exponent, max_exponent), (0.0, 0.0))
    return perlin.perlin_from_gradients(gradients, shape, jnp.left_shift(1, exponents))


def perlin_mask(
    key: jax.Array,
    shape: tuple[int, int],
    *,
    threshold: float,
    min_exponent: int,
    max_exponent: int,
    anomaly_probability: float,
    rescale_empty: bool,
) -> jax.Array:
    """One binary mask float32 [h, w]: thresholded Perlin noise, emptied with probability
    1 - anomaly_probability (module docstring)."""
    noise_key, keep_key = jax.random.split(key)
    noise = perlin_field(noise_key, shape, min_exponent, max_exponent)
    if rescale_empty:
        low, high = jnp.min(noise), jnp.max(noise)
        rescaled = (noise - low) / jnp.maximum(high - low, 1e-12) * 2.0 - 1.0
        noise = jnp.where(high > threshold, noise, rescaled)
    mask = (noise > threshold).astype(jnp.float32)
    keep = jax.random.uniform(keep_key) < anomaly_probability
    return jnp.where(keep, mask, jnp.zeros_like(mask))


def perlin_masks(key: jax.Array, count: int, shape: tuple[int, int], **options) -> jax.Array:
    """`count` independent masks [count, h, w] (`perlin_mask`'s options)."""
    return jax.vmap(lambda k: perlin_mask(k, shape, **options))(jax.random.split(key, count))


def noise_targets(
    perlin: jax.Array, real_masks: jax.Array, real_labels: jax.Array, *, noise_on_labelled_anomalies: bool
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(noise mask [n, h, w], target mask [n, h, w], target label [n]) of the already duplicated
    rows: the Perlin masks [n, h, w] minus the real anomalies' masks [n, h, w] (and minus every
    labelled anomalous row unless `noise_on_labelled_anomalies`); targets are the real ones
    OR the noise. Masks and labels are 0/1 floats. [anomalib AnomalyGenerator.forward]"""
    noise_mask = perlin * (1.0 - real_masks)
    if not noise_on_labelled_anomalies:
        noise_mask = noise_mask * (1.0 - real_labels)[:, None, None]
    target_mask = jnp.where(real_masks + noise_mask > 0, 1.0, 0.0)
    synthetic = jnp.any(noise_mask > 0, axis=(1, 2)).astype(jnp.float32)
    target_label = jnp.where(real_labels + synthetic > 0, 1.0, 0.0)
    return noise_mask, target_mask, target_label
