"""Synthetic anomalies (DRAEM style) as pure, jittable JAX functions.

    spec = SynthesisSpec.from_config(config.synthesis, channels)
    bank = load_texture_bank(config.synthesis, patch_size, channels)   # once
    out = synthesize_batch(key, images, bank, spec)  # image, mask, has_anomaly

See docs/synthesis.md.
"""

from xray_flax.synthesis.config import defaults
from xray_flax.synthesis.perlin import perlin_from_gradients, perlin_mask, perlin_noise
from xray_flax.synthesis.synthesize import SynthesisSpec, blend, synthesize_batch, synthesize_one
from xray_flax.synthesis.textures import load_texture_bank, procedural_texture

__all__ = [
    "SynthesisSpec",
    "blend",
    "defaults",
    "load_texture_bank",
    "perlin_mask",
    "perlin_from_gradients",
    "perlin_noise",
    "procedural_texture",
    "synthesize_batch",
    "synthesize_one",
]
