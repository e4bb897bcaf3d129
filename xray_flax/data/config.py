"""Defaults and documentation of the `config.data` section.

Every knob the input pipeline reads lives here, with the reason it exists. `configs/*.py`
take `defaults()` and override what they need (the CPU default run uses small patches from a
few simulated scans; the paper setting is patch_size=512 on real scans).
"""

from __future__ import annotations

import os

import ml_collections

from xray_flax import config_rules
from xray_flax.data import simulate

SOURCES = ("simulated", "scans", "mvtec", "folder", "tfds")
NORMALIZATIONS = ("bit_depth", "percentile")
BORDER_POLICIES = ("pad", "shift", "drop")
BACKGROUND_RULES = ("none", "dark_fraction", "low_std")
RGB_TO_GRAY = ("luminance", "mean")
CHANNELS = (1, 3)
FOLDER_DIRS = ("normal_dir", "abnormal_dir", "normal_test_dir", "mask_dir")


def defaults() -> ml_collections.ConfigDict:
    """Returns the `config.data` section with every field documented."""
    c = ml_collections.ConfigDict()

    # --- where the images come from -------------------------------------------------------
    # 'simulated': procedural X-radiographs of paintings generated into `simulated.cache_dir`
    #              (NOT real data; see docs/data.md). Laid out like 'scans'.
    # 'scans':     `root` holds full scans (*.png/*.tif/*.tiff) with optional `<name>_mask.png`
    #              pixel masks and/or a CSV of per-patch labels (`labels_csv`).
    # 'mvtec':     MVTec AD category folder: train/good, test/<type>, ground_truth/<type>; a
    #              defect type without ground_truth/<type>/ has image labels only.
    # 'folder':    anomalib-style folders of normal / abnormal images (`folder` below); with
    #              only `root` set, `root` holds normal images only (everything labelled normal).
    # 'tfds':      an array_record dataset written by `xray_flax.data.tfds_builder` under
    #              `tfds.data_dir`; patches are read back through the same Grain pipeline.
    c.source = "simulated"
    c.root = ""
    # CSV with columns image,x,y,label (x, y = top-left corner of a patch_size patch; label 0/1),
    # as the paper's expert labels. Relative paths are resolved against `root`. '' = look for
    # `<root>/labels.csv`, use it when present.
    c.labels_csv = ""
    # Suffix that marks a pixel mask next to its scan: `<stem><mask_suffix>.png`.
    c.mask_suffix = "_mask"

    # --- source='folder': anomalib's Folder layout ----------------------------------------
    # Datasets sorted into folders by image label, without MVTec's fixed names. Each folder
    # is searched recursively; relative paths are relative to `root` when `root` is set.
    # With normal_dir '' the folder source falls back to `root` = normal images only.
    c.folder = ml_collections.ConfigDict()
    # Normal images (image label 0), split by image into train/val/test by split_fractions,
    # or into train/val by their train:val ratio when normal_test_dir is given.
    c.folder.normal_dir = ""
    # Anomalous images (image label 1), '' = none. They never train: they go to val and
    # test by the val:test ratio of split_fractions (all to test when the val fraction is 0).
    c.folder.abnormal_dir = ""
    # Normal images held out for the test split, '' = none: keeps a fixed test set (e.g. a
    # benchmark's) apart from the normals that train.
    c.folder.normal_test_dir = ""
    # Pixel masks of the abnormal images, '' = none (then image labels only: tiles of an
    # abnormal image are unknown, -1, unless the image is a single tile). A mask has the
    # image's stem, with or without `mask_suffix`, in the same subfolder as the image below
    # abnormal_dir. An abnormal image without one is an error: mask_dir promises pixel
    # labels, and a misnamed mask would otherwise quietly leave that image's tiles unknown.
    c.folder.mask_dir = ""

    # --- how pixels are read ---------------------------------------------------------------
    c.channels = 1  # 1 = grayscale (RGB converted with `rgb_to_gray`), 3 = RGB (gray repeated).
    c.rgb_to_gray = "luminance"  # 'luminance' (ITU-R 601 weights) | 'mean'.
    # 'bit_depth': value / (2**bits - 1); keeps the scanner's absolute scale across scans.
    # 'percentile': per-image (v - p_lo) / (p_hi - p_lo), clipped to [0, 1]; evens out exposure
    # differences between scans at the cost of comparability of absolute density.
    c.normalization = "bit_depth"
    c.percentiles = (0.5, 99.5)
    # Decoded PNGs (which cannot be read by region) kept per worker process.
    c.png_cache_images = 8

    # --- tiling --------------------------------------------------------------------------
    c.patch_size = 64  # The paper uses 512; the CPU default run uses 64-96.
    # stride < patch_size gives overlapping tiles; stride > patch_size samples sparsely (gaps
    # between tiles, e.g. to thin out a huge scan).
    c.stride = 64
    # Tiles that would cross the right/bottom border:
    # 'pad'   - keep them, pixels outside the image are zeros (every pixel covered once more);
    # 'shift' - move the last tile inside so it ends at the border (more overlap, no padding);
    # 'drop'  - discard them (the border strip narrower than a stride is never seen).
    c.border = "shift"
    # Skip tiles that are background (panel margins, film border) by a configurable rule:
    # 'dark_fraction': skip when >= `background.max_fraction` of its pixels are < `threshold`.
    # 'low_std':       skip when the tile's std of values is < `threshold` (flat areas).
    # 'none':          keep every tile.
    c.background = ml_collections.ConfigDict()
    c.background.rule = "dark_fraction"
    c.background.threshold = 0.08
    c.background.max_fraction = 0.5
    # A tile is anomalous when at least this fraction of its pixels is masked (mask layouts).
    c.min_anomalous_fraction = 0.002
    # Training tiles must be clean: drop any tile with a single masked pixel, even when it is
    # below `min_anomalous_fraction`, because DRAEM learns "normal" from these.
    c.train_exclude_any_masked = True
    # Tiles of scans without any label source (no mask, no CSV row): use them for training as
    # normal (True) or leave them out of training (False). They get label -1 in evaluation.
    c.train_on_unlabelled = True

    # --- splits (always by image, never by patch) ------------------------------------------
    c.split_fractions = (0.6, 0.2, 0.2)  # train, val, test
    c.split_seed = 0

    # --- loading -------------------------------------------------------------------------
    c.workers = 0  # 0 = in-process; N > 0 = N Grain worker processes (mp_prefetch).
    c.prefetch = 4  # Per-worker buffer (workers > 0) or thread prefetch buffer (workers = 0).
    c.read_threads = 2  # Threads reading tiles inside each process.
    c.shuffle_seed = 0

    # --- simulated scans (source='simulated') ------------------------------------------------
    c.simulated = ml_collections.ConfigDict()
    c.simulated.n_scans = 8
    c.simulated.height = 1280
    c.simulated.width = 1024
    c.simulated.support = "mixed"  # 'panel' | 'canvas' | 'mixed' (alternate per scan).
    # Anomalies per scan, per kind (the kinds the paper names), for a 1280x1024 scan; with
    # scale_counts_to_area other sizes get counts scaled by area (>= 1 of each kind asked for),
    # which keeps ~20 % of 64 px tiles anomalous at any scan size.
    c.simulated.scale_counts_to_area = True
    # 1.0: anomalies at full strength (easy: a hand-made max-deviation score already separates
    # them); lower values (e.g. 0.3) make them subtle.
    c.simulated.anomaly_contrast = 1.0
    # 'easy' (the default data: a smoke test, a hand-made score separates its anomalies) or
    # 'hard' (xray_flax/data/radiograph.py: a radiograph's imaging chain, normal structures
    # that look like defects, small, thin and faint anomalies; configs/hard.py). [ours, docs/data.md]
    c.simulated.difficulty = "easy"
    # Hard setting only: scratches (thin partial losses) and old fillings (texture changes).
    c.simulated.scratches = 0
    c.simulated.fillings = 0
    c.simulated.paint_losses = 8
    c.simulated.white_spots = 10
    c.simulated.nails = 5
    c.simulated.foreign_objects = 3
    c.simulated.margin = 0.04  # Dark film margin around the panel, fraction of each side.
    c.simulated.seed = 0
    # 'png' (16-bit PNG, like the paper's scans; decoded once per worker) or 'tiff' (tiled,
    # zlib; read region by region).
    c.simulated.file_format = "png"
    # '' = ~/.cache/xray_flax/simulated/<hash of these params>; XRAY_FLAX_CACHE overrides ~/.cache.
    c.simulated.cache_dir = ""

    # --- TFDS / array_record (source='tfds') -------------------------------------------------
    c.tfds = ml_collections.ConfigDict()
    c.tfds.data_dir = ""  # Where `tfds_builder.build_tfds` wrote the dataset.
    c.tfds.name = "xray_patches"
    return c


def resolve(path: str, root: str) -> str:
    """A path of the data section: `~` expanded, relative to `root` when `root` is set."""
    path = os.path.expanduser(path)
    return os.path.join(os.path.expanduser(root), path) if path and root and not os.path.isabs(path) else path


def check(data: ml_collections.ConfigDict, *, reads_data: bool = True) -> list[str]:
    """The problems of the `config.data` section, one sentence each (none: it is fine).

    `reads_data`: the run reads the configured images (train, evaluate), so the folders and
    files named must exist; predict reads only the scans given to it.
    """
    key = "config.data"
    problems = config_rules.one_of(f"{key}.source", data.source, SOURCES)
    problems += config_rules.one_of(f"{key}.normalization", data.normalization, NORMALIZATIONS)
    problems += config_rules.one_of(f"{key}.border", data.border, BORDER_POLICIES)
    problems += config_rules.one_of(f"{key}.background.rule", data.background.rule, BACKGROUND_RULES)
    problems += config_rules.one_of(f"{key}.rgb_to_gray", data.rgb_to_gray, RGB_TO_GRAY)
    problems += config_rules.one_of(f"{key}.channels", data.channels, CHANNELS)
    problems += config_rules.integer(f"{key}.patch_size", data.patch_size, 1)
    problems += config_rules.integer(f"{key}.stride", data.stride, 1)
    problems += _percentile_problems(data.percentiles)
    problems += config_rules.fraction(f"{key}.background.threshold", data.background.threshold)
    problems += config_rules.fraction(f"{key}.background.max_fraction", data.background.max_fraction)
    problems += config_rules.fraction(f"{key}.min_anomalous_fraction", data.min_anomalous_fraction)
    problems += _split_problems(data.split_fractions)
    problems += config_rules.integer(f"{key}.png_cache_images", data.png_cache_images, 0)
    problems += config_rules.integer(f"{key}.workers", data.workers, 0)
    problems += config_rules.integer(f"{key}.prefetch", data.prefetch, 1)
    problems += config_rules.integer(f"{key}.read_threads", data.read_threads, 1)
    if data.source == "simulated":
        problems += simulate.SimulationParams.config_problems(data.simulated)
    if reads_data:
        problems += _path_problems(data)
    return problems


def _percentile_problems(percentiles) -> list[str]:
    key = "config.data.percentiles"
    problems = config_rules.numbers_in(key, percentiles, 2, 0.0, 100.0)
    if not problems and not percentiles[0] < percentiles[1]:
        problems.append(f"{key}={tuple(percentiles)!r}: the low percentile must be below the high one")
    return problems


def _split_problems(fractions) -> list[str]:
    """Three non-negative weights of train, val and test, not all 0 (the code divides by their sum)."""
    key = "config.data.split_fractions"
    problems = config_rules.numbers_in(key, fractions, 3, 0.0, None)
    if not problems and sum(fractions) <= 0:
        problems.append(f"{key}={tuple(fractions)!r}: train, val and test cannot all be 0")
    return problems


def _path_problems(data: ml_collections.ConfigDict) -> list[str]:
    """The folders and files a source reads must exist."""
    key = "config.data"
    folders = {name: data.get("folder", {}).get(name, "") for name in FOLDER_DIRS}
    problems = []
    if data.source in ("scans", "mvtec") or (data.source == "folder" and not folders["normal_dir"]):
        problems += config_rules.folder(f"{key}.root", data.root, f"for {key}.source={data.source!r}", expand=True)
    elif data.source == "folder" and data.root:
        problems += config_rules.folder(f"{key}.root", data.root, expand=True)
    if data.source == "folder":
        for name, path in folders.items():
            if path:
                problems += config_rules.folder(f"{key}.folder.{name}", resolve(path, data.root))
    if data.source == "scans" and data.labels_csv:
        problems += config_rules.file(f"{key}.labels_csv", resolve(data.labels_csv, data.root))
    if data.source == "tfds":
        problems += config_rules.folder(
            f"{key}.tfds.data_dir", data.tfds.data_dir, f"for {key}.source='tfds'", expand=True
        )
    return problems
