"""Defaults for `config.synthesis`: the synthetic-anomaly generator (DRAEM style).

Every field says what it controls and where its default comes from:
  [DRAEM code]  VitjanZ/DRAEM, data_loader.py (MVTecDRAEMTrainDataset)
  [paper]       Mezina et al., npj Heritage Science 2025, eq. (1)
  [ours]        a choice of this project, with the reason.
"""

import ml_collections

from xray_flax import config_rules, errors
from xray_flax.synthesis import synthesize


def defaults() -> ml_collections.ConfigDict:
    """Returns the `config.synthesis` section with documented defaults."""
    c = ml_collections.ConfigDict()

    # --- Perlin mask -------------------------------------------------------
    # Per-axis lattice resolution is 2**k, k drawn uniformly and independently
    # per axis from this inclusive range. [DRAEM code: torch.randint(0, 6) -> 0..5]
    c.scale_exponent_range = (0, 5)
    # Noise (in [-1, 1] after the sqrt(2) scaling) above this becomes anomaly.
    # [DRAEM code: threshold = 0.5]
    c.threshold = 0.5
    # The noise image is rotated by an angle drawn uniformly from this range, in
    # degrees, before thresholding. [DRAEM code: iaa.Affine(rotate=(-90, 90))]
    c.mask_rotation_range = (-90.0, 90.0)

    # --- Blend ---------------------------------------------------------------
    # 'paper': I_a = I(1-M) + beta*A*M + (1-beta)*I*M, beta weights the TEXTURE.
    #          [paper eq. (1), beta ~ U[0.2, 1]]
    # 'draem': I_a = I(1-M) + (1-beta)*A*M + beta*I*M, beta weights the ORIGINAL.
    #          [DRAEM code: beta = rand * 0.8, i.e. beta_range = (0.0, 0.8)]
    c.blend = "paper"
    # beta ~ U[beta_range). Set (0.0, 0.8) together with blend='draem'.
    # [paper: (0.2, 1.0)]
    c.beta_range = (0.2, 1.0)
    # Probability that a sample gets an anomaly; otherwise the image is returned
    # unchanged with a zero mask and has_anomaly = 0. [DRAEM code: 0.5]
    c.anomaly_probability = 0.5
    # Probability that the normal image is rotated before the anomaly is pasted.
    # [DRAEM code: 0.3] -- [ours: 0.0] because the rotation fills the corners
    # with black, and black regions are exactly what paint loss looks like in an
    # X-ray: the model would learn "black corner = normal".
    c.rotate_normal_probability = 0.0
    # Angle range for that rotation, degrees. [DRAEM code: (-90, 90)]
    c.normal_rotation_range = (-90.0, 90.0)

    # --- Texture sources (relative weights, renormalised) -------------------
    # dtd: a random image from the DTD-layout bank (needs dtd_root). [DRAEM code]
    # procedural: fractal noise / stripes / blobs / fibres made on the device.
    #   [ours: no files needed; X-ray-like structure]
    # batch: another patch of the same batch (self-similar anomalies). [ours]
    # A source whose input is missing (dtd without dtd_root) gets weight 0.
    c.texture_sources = ml_collections.ConfigDict(dict(dtd=0.5, procedural=0.3, batch=0.2))
    # Kinds of procedural texture, drawn uniformly. [ours; see textures.py]
    c.procedural_kinds = ("fractal", "stripes", "blobs", "fibres")
    # Root of a DTD-layout folder: <dtd_root>/images/<category>/*.jpg.
    # '' -> no DTD; load_texture_bank then returns a 1-entry grey placeholder.
    c.dtd_root = ""
    # At most this many DTD images are kept in the device-resident bank (a
    # seeded, category-balanced choice). 256 grey 512x512 float32 = 256 MiB.
    # [ours: DRAEM uses all 5640 images, which is ~5.6 GiB at 512x512 grey]
    c.max_textures = 256
    # Seed of the choice of bank images (not of the per-step randomness).
    c.texture_seed = 0

    # --- Texture augmentations ----------------------------------------------
    # How many augmentations, drawn without replacement and applied in random
    # order, per texture. [DRAEM code: 3]
    c.num_augmentations = 3
    # The pool. [DRAEM code: these ten imgaug ops; see augment.py for the
    # parameters and where our versions differ] 'hue_saturation' is skipped
    # automatically for 1-channel images.
    c.augmentations = (
        "gamma",
        "brightness_contrast",
        "sharpen",
        "hue_saturation",
        "solarize",
        "posterize",
        "invert",
        "autocontrast",
        "equalize",
        "rotate",
    )

    # --- X-ray defects (xray_defects.py) ----------------------------------------
    # Share of the anomalous samples that get an X-ray defect (a density change: a soft
    # darker or brighter Perlin region, thin lines, small spots) instead of a pasted texture.
    # [ours: X-ray defects are density changes, not textures; docs/results.md measures them] 0 keeps DRAEM's
    # generator, as the paper (configs/paper.py) and DRAEM configs are.
    c.xray_defect_probability = 0.0
    # Kinds drawn uniformly. [ours; see xray_defects.py]
    c.xray_defect_kinds = ("density", "line", "spot")

    # --- Execution -----------------------------------------------------------
    # 'map': samples one after another (lax.map); lax.switch then runs only the
    #        chosen augmentation -- cheapest on CPU.
    # 'vmap': samples in parallel; a batched lax.switch evaluates EVERY branch
    #        and selects -- more FLOPs but no serial loop, better on GPU.
    # 'auto': 'map' on a single CPU device, 'vmap' otherwise (GPU/TPU, or a
    #        multi-device mesh where the batch axis is sharded). [ours]
    c.batch_mode = "auto"
    return c


def check(section: ml_collections.ConfigDict, channels: int, *, reads_files: bool = True) -> list[str]:
    """The problems of the `config.synthesis` section, one sentence each (none: it is fine).

    `reads_files`: the run synthesises anomalies (train), so a DTD folder named must exist.
    """
    try:
        synthesize.SynthesisSpec.from_config(section, channels)
        problems = []
    except errors.ConfigError as e:
        problems = errors.problems_of(e)
    problems += config_rules.integer("config.synthesis.max_textures", section.max_textures, 1)
    if reads_files and section.dtd_root and section.texture_sources.dtd:
        problems += config_rules.folder("config.synthesis.dtd_root", section.dtd_root)
    return problems
