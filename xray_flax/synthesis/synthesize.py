"""DRAEM's anomaly generator as one pure, jittable function of a key.

Per sample (DRAEM data_loader.py, MVTecDRAEMTrainDataset.transform_image):
  1. optionally rotate the normal image (p = rotate_normal_probability);
  2. with probability anomaly_probability: Perlin mask M, texture A (DTD bank,
     procedural, or another patch of the batch), `num_augmentations` random
     augmentations of A, blend;
  3. has_anomaly = 1 only if an anomaly was drawn AND M is not empty; the mask
     is zeroed otherwise, so mask and has_anomaly always agree.

Blends (`blend`):
  'paper': I_a = I(1-M) + beta*A*M + (1-beta)*I*M, beta ~ U[0.2, 1]
           (Mezina et al. eq. (1), where A denotes the texture inside M).
  'draem': I_a = I(1-M) + (1-beta)*A*M + beta*I*M, beta ~ U[0, 0.8)
           (DRAEM code: beta weights the ORIGINAL image). beta_range is taken
           from the config in both cases; set (0.0, 0.8) for 'draem'.

Differences from DRAEM's code: textures may also be procedural or other batch
patches (DRAEM: DTD only); the normal-image rotation defaults to off (see
config.py); augmentation approximations are listed in augment.py.
"""

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from xray_flax import config_rules, errors
from xray_flax.synthesis import augment, perlin, xray_defects
from xray_flax.synthesis import textures as textures_lib

SOURCES = ("dtd", "procedural", "batch")
BLENDS = ("paper", "draem")
BATCH_MODES = ("auto", "map", "vmap")
KEY = "config.synthesis"


def _ordered_range(key: str, value, low: float | None, high: float | None) -> list[str]:
    """(lo, hi) with low <= lo <= hi <= high."""
    problems = config_rules.numbers_in(key, value, 2, low, high)
    if not problems and value[0] > value[1]:
        problems.append(f"{key}={tuple(value)!r}: the first value must not exceed the second")
    return problems


@dataclasses.dataclass(frozen=True)
class SynthesisSpec:
    """Static description of the generator (hashable: a static jit argument).

    Build it with `SynthesisSpec.from_config(config.synthesis, channels)`; field
    meanings are documented in anomaly/config.py.
    """

    channels: int
    scale_exponent_range: tuple[int, int] = (0, 5)
    threshold: float = 0.5
    mask_rotation_range: tuple[float, float] = (-90.0, 90.0)
    blend: str = "paper"
    beta_range: tuple[float, float] = (0.2, 1.0)
    anomaly_probability: float = 0.5
    rotate_normal_probability: float = 0.0
    normal_rotation_range: tuple[float, float] = (-90.0, 90.0)
    # Normalised weights of (dtd, procedural, batch); dtd is 0 without dtd_root.
    source_weights: tuple[float, float, float] = (0.0, 1.0, 0.0)
    procedural_kinds: tuple[str, ...] = textures_lib.PROCEDURAL_KINDS
    # Augmentation pool after dropping ops that do not apply to `channels`.
    augmentations: tuple[str, ...] = tuple(augment.OPS)
    num_augmentations: int = 3
    batch_mode: str = "auto"
    # Share of anomalous samples that get an X-ray defect (xray_defects.py) instead of a texture.
    xray_defect_probability: float = 0.0
    xray_defect_kinds: tuple[str, ...] = xray_defects.KINDS

    def __post_init__(self):
        errors.require(self.problems())
        # Drops RGB-only ops for grey images, so a spec built directly (not from_config) is valid too.
        object.__setattr__(self, "augmentations", augment.usable_ops(tuple(self.augmentations), self.channels))

    def problems(self) -> list[str]:
        """What is wrong with this spec, one sentence each naming its config key."""
        problems = config_rules.one_of("config.data.channels", self.channels, (1, 3))
        problems += _ordered_range(f"{KEY}.scale_exponent_range", self.scale_exponent_range, 0, 10)
        problems += config_rules.number(f"{KEY}.threshold", self.threshold)
        problems += _ordered_range(f"{KEY}.mask_rotation_range", self.mask_rotation_range, None, None)
        problems += config_rules.one_of(f"{KEY}.blend", self.blend, BLENDS)
        problems += _ordered_range(f"{KEY}.beta_range", self.beta_range, 0.0, 1.0)
        for name in ("anomaly_probability", "rotate_normal_probability", "xray_defect_probability"):
            problems += config_rules.fraction(f"{KEY}.{name}", getattr(self, name))
        problems += _ordered_range(f"{KEY}.normal_rotation_range", self.normal_rotation_range, None, None)
        weights = self.source_weights
        if len(weights) != len(SOURCES) or min(weights) < 0 or sum(weights) <= 0:
            problems.append(
                f"{KEY}.texture_sources={dict(zip(SOURCES, weights))}: the weights of {config_rules.listing(SOURCES)} "
                "must be non-negative with a positive sum"
            )
        unknown = [k for k in self.procedural_kinds if k not in textures_lib.PROCEDURAL_KINDS]
        if unknown or not self.procedural_kinds:
            problems.append(
                f"{KEY}.procedural_kinds={tuple(self.procedural_kinds)!r}: each must be one of "
                f"{config_rules.listing(textures_lib.PROCEDURAL_KINDS)}"
            )
        ops = augment.op_problems(self.augmentations)
        problems += ops
        usable = () if ops else augment.usable_ops(tuple(self.augmentations), self.channels)
        if not ops and not (config_rules.is_int(self.num_augmentations) and 0 <= self.num_augmentations <= len(usable)):
            problems.append(
                f"{KEY}.num_augmentations={self.num_augmentations!r} must be an int in [0, {len(usable)}]: "
                f"{len(usable)} augmentations are usable with {self.channels} channel(s): {usable}"
            )
        problems += config_rules.one_of(f"{KEY}.batch_mode", self.batch_mode, BATCH_MODES)
        problems += xray_defects.kind_problems(self.xray_defect_kinds)
        return problems

    @classmethod
    def from_config(cls, synthesis_config: ml_collections.ConfigDict, channels: int) -> "SynthesisSpec":
        c = synthesis_config
        weights = {name: float(c.texture_sources[name]) for name in SOURCES}
        if not c.dtd_root:
            weights["dtd"] = 0.0  # no bank: the placeholder must never be drawn
        total = sum(weights.values())
        none_left = []
        if total <= 0 and min(weights.values()) >= 0:
            none_left.append(
                f"{KEY}.texture_sources={dict(c.texture_sources)}: no texture source left "
                f"({KEY}.dtd_root={c.dtd_root!r}, and dtd needs a root)"
            )
            total = 1.0
        try:
            spec = cls._from_config(c, channels, tuple(weights[name] / total for name in SOURCES))
        except errors.ConfigError as e:
            errors.require(none_left + errors.problems_of(e))
        errors.require(none_left)
        return spec

    @classmethod
    def _from_config(cls, c: ml_collections.ConfigDict, channels: int, source_weights) -> "SynthesisSpec":
        return cls(
            channels=channels,
            scale_exponent_range=tuple(int(v) for v in c.scale_exponent_range),
            threshold=float(c.threshold),
            mask_rotation_range=tuple(float(v) for v in c.mask_rotation_range),
            blend=c.blend,
            beta_range=tuple(float(v) for v in c.beta_range),
            anomaly_probability=float(c.anomaly_probability),
            rotate_normal_probability=float(c.rotate_normal_probability),
            normal_rotation_range=tuple(float(v) for v in c.normal_rotation_range),
            source_weights=source_weights if sum(source_weights) > 0 else (0.0, 1.0, 0.0),
            procedural_kinds=tuple(c.procedural_kinds),
            augmentations=tuple(c.augmentations),
            num_augmentations=int(c.num_augmentations),
            batch_mode=c.batch_mode,
            xray_defect_probability=float(c.get("xray_defect_probability", 0.0)),
            xray_defect_kinds=tuple(c.get("xray_defect_kinds", xray_defects.KINDS)),
        )


def blend(image: jax.Array, texture: jax.Array, mask: jax.Array, beta: jax.Array, mode: str) -> jax.Array:
    """Pastes `texture` into `image` inside `mask` (see module docstring)."""
    texture_weight = beta if mode == "paper" else 1.0 - beta
    inside = texture_weight * texture + (1.0 - texture_weight) * image
    return image * (1.0 - mask) + inside * mask


def _choose_texture(
    key: jax.Array, textures: jax.Array, batch_images: jax.Array, index: jax.Array, spec: SynthesisSpec
) -> jax.Array:
    """One texture [H, W, C] from a source drawn by spec.source_weights."""
    shape = batch_images.shape[1:3]
    batch_size = batch_images.shape[0]
    key_choice, key_procedural = jax.random.split(key)
    u = jax.random.uniform(key_choice, (2,))

    def pick(u, count):
        return jnp.minimum(jnp.floor(u * count).astype(jnp.int32), count - 1)

    def from_dtd():
        return textures[pick(u[1], textures.shape[0])]

    def from_procedural():
        return textures_lib.procedural_texture(key_procedural, shape, spec.channels, spec.procedural_kinds)

    def from_batch():
        # Another patch of the batch (itself when the batch has one patch).
        offset = 1 + pick(u[1], max(batch_size - 1, 1))
        return batch_images[(index + offset) % batch_size]

    makers = dict(dtd=from_dtd, procedural=from_procedural, batch=from_batch)
    # Only sources with weight > 0 become branches: a batched lax.switch runs
    # every branch, so dropping unused ones is free speed.
    used = [(name, w) for name, w in zip(SOURCES, spec.source_weights) if w > 0]
    if len(used) == 1:
        return makers[used[0][0]]()
    cumulative = jnp.cumsum(jnp.array([w for _, w in used]))
    source = jnp.minimum(jnp.sum(u[0] * cumulative[-1] >= cumulative), len(used) - 1)
    return jax.lax.switch(source, [makers[name] for name, _ in used])


def synthesize_one(
    key: jax.Array,
    image: jax.Array,
    index: jax.Array,
    textures: jax.Array,
    batch_images: jax.Array,
    spec: SynthesisSpec,
) -> dict[str, jax.Array]:
    """One sample; `batch_images` is the whole batch (for the batch source)."""
    key_draws, key_mask, key_texture, key_augment = jax.random.split(key, 4)
    # [rotate normal?, normal angle, anomaly?, beta]
    u = jax.random.uniform(key_draws, (4,))
    if spec.rotate_normal_probability > 0:
        lo, hi = spec.normal_rotation_range
        rotated = jnp.clip(perlin.rotate_degrees(image, lo + (hi - lo) * u[1]), 0.0, 1.0)
        image = jnp.where(u[0] < spec.rotate_normal_probability, rotated, image)
    lo, hi = spec.beta_range
    beta = lo + (hi - lo) * u[3]

    def with_texture(image):
        mask = perlin.perlin_mask(
            key_mask, image.shape[:2], spec.scale_exponent_range, spec.threshold, spec.mask_rotation_range
        )[..., None]
        texture = _choose_texture(key_texture, textures, batch_images, index, spec)
        texture = augment.augment(key_augment, texture, spec.augmentations, spec.num_augmentations)
        has_anomaly = (jnp.sum(mask) > 0).astype(jnp.float32)
        return blend(image, texture, mask, beta, spec.blend), mask, has_anomaly

    def with_xray_defect(image):
        defective, mask = xray_defects.xray_defect(
            key_mask,
            image,
            spec.xray_defect_kinds,
            spec.scale_exponent_range,
            spec.threshold,
            spec.mask_rotation_range,
        )
        return defective, mask, (jnp.sum(mask) > 0).astype(jnp.float32)

    def with_anomaly(image):
        if spec.xray_defect_probability == 0:
            return with_texture(image)
        if spec.xray_defect_probability == 1:
            return with_xray_defect(image)
        # Its own draw (fold_in), so the generator without X-ray defects keeps its random stream.
        u_defect = jax.random.uniform(jax.random.fold_in(key_draws, 1))
        return jax.lax.cond(u_defect < spec.xray_defect_probability, with_xray_defect, with_texture, image)

    def without_anomaly(image):
        return (image, jnp.zeros(image.shape[:2] + (1,), jnp.float32), jnp.zeros((), jnp.float32))

    # lax.cond: under lax.map the texture work is skipped for normal samples;
    # under vmap it turns into a select (both sides computed).
    out_image, mask, has_anomaly = jax.lax.cond(u[2] < spec.anomaly_probability, with_anomaly, without_anomaly, image)
    return dict(image=jnp.clip(out_image, 0.0, 1.0), mask=mask, has_anomaly=has_anomaly)


def _resolved_batch_mode(spec: SynthesisSpec) -> str:
    if spec.batch_mode != "auto":
        return spec.batch_mode
    # lax.map walks the batch axis serially; with several devices the batch is
    # sharded across them and a serial walk would gather it, so use vmap there.
    single_cpu = jax.default_backend() == "cpu" and jax.device_count() == 1
    return "map" if single_cpu else "vmap"


@functools.partial(jax.jit, static_argnames="spec")
def synthesize_batch(key: jax.Array, images: jax.Array, textures: jax.Array, spec: SynthesisSpec) -> dict[str, Any]:
    """Synthetic anomalies for a batch.

    Args:
      key: PRNG key; the output is a deterministic function of it.
      images: float32 [B, H, W, C] in [0, 1] (normal patches).
      textures: float32 [N, H, W, C] in [0, 1] from load_texture_bank (same H,
        W, C as images); not read when the dtd source weight is 0.
      spec: SynthesisSpec (static).

    Returns:
      dict(image=[B, H, W, C] in [0, 1], mask=[B, H, W, 1] in {0, 1},
      has_anomaly=[B] in {0, 1}), all float32.
    """
    images = jnp.asarray(images, jnp.float32)
    if images.ndim != 4 or images.shape[-1] != spec.channels:
        raise ValueError(f"images must be [B, H, W, {spec.channels}], got {images.shape}")
    if spec.source_weights[0] > 0 and textures.shape[1:] != images.shape[1:]:
        raise ValueError(
            f"texture bank {textures.shape} does not match images "
            f"{images.shape}: load it with the same patch size and "
            "channels"
        )
    textures = jnp.asarray(textures, jnp.float32)
    batch_size = images.shape[0]
    keys = jax.random.split(key, batch_size)
    indices = jnp.arange(batch_size)
    if _explicitly_sharded_batch(images):
        raise ValueError(
            "synthesize_batch got a batch with an Explicit-axis sharding "
            "(jax.make_mesh's default axis type). The per-sample texture choice "
            "indexes across the batch, which Explicit sharding forbids; build the "
            "mesh with Auto axes (jax.sharding.Mesh(devices, names), as "
            "xray_flax.parallel does) and let XLA place the work."
        )
    mode = _resolved_batch_mode(spec)
    one = functools.partial(synthesize_one, textures=textures, batch_images=images, spec=spec)
    if mode == "vmap":
        return jax.vmap(one)(keys, images, indices)
    return jax.lax.map(lambda args: one(*args), (keys, images, indices))


def _explicitly_sharded_batch(images: jax.Array) -> bool:
    """True when the batch axis is sharded over an Explicit mesh axis."""
    try:
        spec = jax.typeof(images).sharding.spec
    except AttributeError:
        return False
    return bool(len(spec)) and spec[0] is not None
