"""Procedural X-radiographs of paintings: the embedded default data.

THESE ARE SIMULATED IMAGES, not scans of real paintings. They exist so that the default run
exercises the full pipeline (16-bit full-size scans, tiling, masks, splits) without
downloading anything. Point `config.data.source = 'scans'` and `config.data.root` at real
scans to work on real data (docs/data.md).

A radiograph shows how much each point of the painting attenuates X-rays; in the usual
positive display dense material (lead white, metal) is bright and thin or missing material is
dark. The model here adds attenuation layers:

  film margin (dark) | support: wood panel (grain, board joins) or canvas (weave)
  + ground layer + lead-white paint following a composition (shapes, gradients, folds)
  + brushwork (directional streaks where there is paint) - craquelure (dark crack network)
  -> anomalies -> blur (detector PSF) -> signal-dependent noise -> 16-bit quantisation.

Anomalies, each with a pixel mask, are the kinds Mezina et al. (2025) name: paint loss (very
dark: paint and ground gone, support shows), white spots where none are expected (lead-white
drips, fillings), pins and nails (metal: brightest), foreign objects (wires, staples, plates).

Everything is deterministic given (params, seed) and vectorised NumPy / SciPy: a 1280x1024
scan takes a fraction of a second.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import types

import numpy as np
import tifffile
from PIL import Image
from scipy import ndimage

from xray_flax import config_rules, errors, files, logs
from xray_flax.data import kinds, radiograph, sim_primitives

# Bump when the generator changes so cached scans are regenerated.
GENERATOR_VERSION = 3
DIFFICULTIES = ("easy", "hard")
ANOMALY_KINDS = ("paint_losses", "scratches", "fillings", "white_spots", "nails", "foreign_objects")
SUPPORTS = ("panel", "canvas", "mixed")
FILE_FORMATS = ("png", "tiff")
KEY = "config.data.simulated"

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SimulationParams:
    n_scans: int = 8
    height: int = 1280
    width: int = 1024
    support: str = "mixed"  # 'panel' | 'canvas' | 'mixed'
    paint_losses: int = 8
    white_spots: int = 10
    nails: int = 5
    foreign_objects: int = 3
    margin: float = 0.04
    seed: int = 0
    file_format: str = "png"  # 'png' (like the paper's scans) | 'tiff' (tiled, zlib)
    # The counts are for a REFERENCE_HEIGHT x REFERENCE_WIDTH scan; other sizes get them scaled
    # by area (at least one of each kind asked for), so the anomalous share of tiles stays
    # about the same when scans shrink or grow. False: the counts are taken literally.
    scale_counts_to_area: bool = True
    # Scales every anomaly's departure from the painting: 1 = full (paint loss to bare support,
    # metal near white), 0.3 = subtle. The default is easy on purpose (see docs/data.md).
    anomaly_contrast: float = 1.0
    # 'easy': the display-domain generator of this module (a smoke test: a hand-made score
    # separates its anomalies). 'hard': xray_flax/data/radiograph.py, the radiograph's physics
    # with small, thin and low-contrast anomalies as well as obvious ones (docs/data.md).
    difficulty: str = "easy"
    # Anomaly kinds of the hard setting only (per 1280x1024 scan, scaled like the others).
    scratches: int = 0
    fillings: int = 0

    def __post_init__(self):
        errors.require(self.problems())

    def problems(self) -> list[str]:
        """What is wrong with these parameters, one sentence each naming its config.data.simulated key."""
        problems = config_rules.one_of(f"{KEY}.difficulty", self.difficulty, DIFFICULTIES)
        problems += config_rules.one_of(f"{KEY}.support", self.support, SUPPORTS)
        problems += config_rules.one_of(f"{KEY}.file_format", self.file_format, FILE_FORMATS)
        for name in ("n_scans", "height", "width"):
            problems += config_rules.integer(f"{KEY}.{name}", getattr(self, name), 1)
        for name in ANOMALY_KINDS:
            problems += config_rules.integer(f"{KEY}.{name}", getattr(self, name), 0)
        problems += config_rules.number(f"{KEY}.margin", self.margin, 0.0, 0.5, high_open=True)
        problems += config_rules.number(f"{KEY}.anomaly_contrast", self.anomaly_contrast, 0.0)
        if self.difficulty == "easy" and (self.scratches or self.fillings):
            problems.append(
                f"{KEY}.scratches={self.scratches} and {KEY}.fillings={self.fillings}: these exist in the hard "
                f"setting only; set {KEY}.difficulty='hard' or leave them at 0"
            )
        return problems

    @staticmethod
    def config_problems(sim_config) -> list[str]:
        """The problems of `config.data.simulated` as given (no conversion: a float where an int
        belongs is one), the knobs it lacks at their defaults."""
        values = {k: sim_config.get(k, v) for k, v in dataclasses.asdict(SimulationParams()).items()}
        return SimulationParams.problems(types.SimpleNamespace(**values))

    @staticmethod
    def from_config(sim_config) -> SimulationParams:
        return SimulationParams(
            n_scans=int(sim_config.n_scans),
            height=int(sim_config.height),
            width=int(sim_config.width),
            support=str(sim_config.support),
            paint_losses=int(sim_config.paint_losses),
            white_spots=int(sim_config.white_spots),
            nails=int(sim_config.nails),
            foreign_objects=int(sim_config.foreign_objects),
            margin=float(sim_config.margin),
            seed=int(sim_config.seed),
            # .get: configs written before these fields existed still load
            file_format=str(sim_config.get("file_format", "png")),
            scale_counts_to_area=bool(sim_config.get("scale_counts_to_area", True)),
            anomaly_contrast=float(sim_config.get("anomaly_contrast", 1.0)),
            difficulty=str(sim_config.get("difficulty", "easy")),
            scratches=int(sim_config.get("scratches", 0)),
            fillings=int(sim_config.get("fillings", 0)),
        )

    def anomaly_counts(self) -> dict:
        """Anomalies per scan of each kind, after scaling to the scan's area."""
        counts = {k: getattr(self, k) for k in ANOMALY_KINDS}
        if not self.scale_counts_to_area:
            return counts
        ratio = self.height * self.width / (sim_primitives.REFERENCE_HEIGHT * sim_primitives.REFERENCE_WIDTH)
        return {k: (max(1, int(round(n * ratio))) if n > 0 else 0) for k, n in counts.items()}

    def fingerprint(self) -> str:
        fields = dataclasses.asdict(self)
        if self.difficulty == "easy":  # the fields the easy generator ignores: caches stay valid
            for name in ("difficulty", "scratches", "fillings"):
                fields.pop(name)
        text = json.dumps({"version": GENERATOR_VERSION, **fields}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------
# Anomalies: each changes the image in place inside its region and marks it, with its kind, in
# `marks` (sim_primitives.AnomalyMarks; marking draws nothing from the rng).


def add_paint_loss(rng, image, support_only, marks):
    """Paint and ground gone: the region drops to the bare support (very dark)."""
    marks.kind("paint_loss")
    h, w = image.shape
    cy, cx = rng.uniform(0.06, 0.94) * h, rng.uniform(0.06, 0.94) * w
    (sy, sx), region = sim_primitives.blob(rng, image.shape, cy, cx, rng.uniform(7, 28), roughness=0.5)
    # Losses range from a thinned paint layer to bare support.
    depth = rng.uniform(0.55, 1.0)
    lost = image[sy, sx] - depth * (image[sy, sx] - support_only[sy, sx])
    image[sy, sx] = np.where(region, lost, image[sy, sx])
    marks.mark((sy, sx), region)


def add_white_spot(rng, image, marks):
    """Dense lead-white spot (drip, old filling) where the composition has none."""
    marks.kind("white_spot")
    h, w = image.shape
    cy, cx = rng.uniform(0.06, 0.94) * h, rng.uniform(0.06, 0.94) * w
    (sy, sx), region = sim_primitives.blob(rng, image.shape, cy, cx, rng.uniform(4, 12), roughness=0.25)
    image[sy, sx] = np.where(region, np.maximum(image[sy, sx] + rng.uniform(0.18, 0.45), 0.7), image[sy, sx])
    marks.mark((sy, sx), region)


def _segment(shape, y0, x0, y1, x1, width):
    sl, dist = sim_primitives.segment_distance(shape, y0, x0, y1, x1, width)
    return sl, dist <= width / 2


def _paint_metal(image, marks, sl, region, level):
    sy, sx = sl
    image[sy, sx] = np.where(region, np.maximum(image[sy, sx], level), image[sy, sx])
    marks.mark(sl, region)


def add_nail(rng, image, marks):
    """Pin or nail: a round head and a shaft, metal = the brightest thing on the film."""
    marks.kind("nail")
    h, w = image.shape
    cy, cx = rng.uniform(0.05, 0.95) * h, rng.uniform(0.05, 0.95) * w
    level = rng.uniform(0.9, 0.98)
    head = rng.uniform(3.5, 8)
    sl, region = sim_primitives.blob(rng, image.shape, cy, cx, head, roughness=0.05)
    _paint_metal(image, marks, sl, region, level)
    angle, length = rng.uniform(0, 2 * np.pi), rng.uniform(12, 40)
    sl, region = _segment(
        image.shape, cy, cx, cy + length * np.sin(angle), cx + length * np.cos(angle), rng.uniform(2, 4)
    )
    _paint_metal(image, marks, sl, region, level - 0.05)


def add_foreign_object(rng, image, marks):
    """A wire (polyline), a staple (U) or a small plate (rectangle)."""
    marks.kind("foreign_object")
    h, w = image.shape
    cy, cx = rng.uniform(0.08, 0.92) * h, rng.uniform(0.08, 0.92) * w
    level = rng.uniform(0.75, 0.95)
    kind = rng.integers(0, 3)
    if kind == 0:  # wire
        y, x = cy, cx
        angle = rng.uniform(0, 2 * np.pi)
        for _ in range(int(rng.integers(3, 6))):
            angle += rng.normal(0, 0.6)
            ny, nx = y + 15 * np.sin(angle), x + 15 * np.cos(angle)
            sl, region = _segment(image.shape, y, x, ny, nx, 2.0)
            _paint_metal(image, marks, sl, region, level)
            y, x = ny, nx
    elif kind == 1:  # staple
        angle = rng.uniform(0, np.pi)
        length, leg = rng.uniform(20, 40), rng.uniform(6, 12)
        dy, dx = np.sin(angle), np.cos(angle)
        ny, nx = -dx, dy
        ay, ax = cy - dy * length / 2, cx - dx * length / 2
        by, bx = cy + dy * length / 2, cx + dx * length / 2
        for y0, x0, y1, x1 in (
            (ay, ax, by, bx),
            (ay, ax, ay + ny * leg, ax + nx * leg),
            (by, bx, by + ny * leg, bx + nx * leg),
        ):
            sl, region = _segment(image.shape, y0, x0, y1, x1, 3.0)
            _paint_metal(image, marks, sl, region, level)
    else:  # plate
        hh, ww = rng.uniform(8, 22), rng.uniform(8, 22)
        y0, y1 = int(max(cy - hh, 0)), int(min(cy + hh, h))
        x0, x1 = int(max(cx - ww, 0)), int(min(cx + ww, w))
        region = np.ones((y1 - y0, x1 - x0), bool)
        _paint_metal(image, marks, (slice(y0, y1), slice(x0, x1)), region, level * 0.85)


# ------------------------------------------------------------------------------------------
# One scan.


def simulate_scan(params: SimulationParams, index: int):
    """(uint16 [H, W] radiograph, bool [H, W] anomaly mask) for scan `index`."""
    scan, marks = simulate_scan_with_kinds(params, index)
    return scan, marks.mask


def simulate_scan_with_kinds(params: SimulationParams, index: int):
    """(uint16 [H, W] radiograph, sim_primitives.AnomalyMarks: the bool mask and the uint8 kind
    map, bit k for sim_primitives.KIND_NAMES[k]) for scan `index`."""
    if params.difficulty == "hard":
        return radiograph.simulate_scan_with_kinds(params, index)
    # Separate streams for the painting, the anomalies and the noise: the same painting with
    # and without anomalies differs only inside the masks (plus the blur's reach).
    rng, anomaly_rng, noise_rng = (np.random.default_rng([params.seed, index, k]) for k in range(3))
    shape = (params.height, params.width)
    h, w = shape
    support_kind = params.support
    if support_kind == "mixed":
        support_kind = "panel" if index % 2 == 0 else "canvas"
    support = (
        sim_primitives.wood_panel(rng, shape) if support_kind == "panel" else sim_primitives.canvas_weave(rng, shape)
    )
    support_level = 0.16 + 0.03 * support  # wood or canvas alone: dark
    ground = 0.08 + 0.01 * sim_primitives.smooth_noise(rng, shape, 200.0)
    paint = sim_primitives.composition(rng, shape)
    strokes = sim_primitives.brushwork(rng, shape)
    cracks = sim_primitives.craquelure(rng, shape, cell=rng.uniform(25, 50))
    image = support_level + ground + 0.45 * paint * (1 + 0.12 * strokes) - 0.07 * cracks * (0.3 + paint)
    area = h * w / (sim_primitives.REFERENCE_HEIGHT * sim_primitives.REFERENCE_WIDTH)
    image += sim_primitives.highlights(rng, shape, paint, max(int(round(60 * area)), 1))
    if support_kind == "panel":
        image += 0.04 * sim_primitives.knots(rng, shape, int(rng.integers(1, 4)))

    marks = sim_primitives.AnomalyMarks(shape)
    painting = image.copy() if params.anomaly_contrast != 1.0 else None
    counts = params.anomaly_counts()
    for _ in range(counts["paint_losses"]):
        add_paint_loss(anomaly_rng, image, support_level, marks)
    for _ in range(counts["white_spots"]):
        add_white_spot(anomaly_rng, image, marks)
    for _ in range(counts["nails"]):
        add_nail(anomaly_rng, image, marks)
    for _ in range(counts["foreign_objects"]):
        add_foreign_object(anomaly_rng, image, marks)
    if painting is not None:
        image = painting + np.float32(params.anomaly_contrast) * (image - painting)

    # Film margin outside the panel: nothing attenuates, so it is nearly black.
    outside = sim_primitives.film_margin(shape, params.margin)
    image[outside] = 0.02
    marks.clear(outside)

    image = ndimage.gaussian_filter(image, 0.7)  # detector / film blur
    sigma = 0.004 + 0.012 * np.sqrt(np.clip(image, 0, None))  # signal-dependent (quantum) noise
    image = image + sigma * noise_rng.standard_normal(shape).astype(np.float32)
    scan = np.clip(image, 0.0, 1.0) * 60000.0 + 1500.0  # use most of the 16-bit range, offset
    return np.round(scan).astype(np.uint16), marks


# ------------------------------------------------------------------------------------------
# Cache on disk.


def default_cache_root() -> str:
    base = os.environ.get("XRAY_FLAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "xray_flax")
    return os.path.join(base, "simulated")


def cache_dir_for(params: SimulationParams, cache_dir: str = "") -> str:
    return cache_dir or os.path.join(default_cache_root(), params.fingerprint())


def _write_image(path, array, file_format):
    if file_format == "tiff":
        tifffile.imwrite(path, array, tile=(256, 256), compression="zlib", compressionargs={"level": 1})
    else:
        Image.fromarray(array).save(path, compress_level=1)


def is_complete(folder: str, params) -> bool:
    """Whether `folder` holds a finished simulation of `params` (its manifest, written last,
    carries params.fingerprint()); shared by the simulators of both families."""
    try:
        with open(os.path.join(folder, "manifest.json")) as f:
            return json.load(f).get("fingerprint") == params.fingerprint()
    except (OSError, ValueError):
        return False


def _manifest(params: SimulationParams) -> dict:
    return {
        "fingerprint": params.fingerprint(),
        "params": dataclasses.asdict(params),
        "generator_version": GENERATOR_VERSION,
        "kinds": list(sim_primitives.KIND_NAMES),
        "kind_maps": "scan_XXX_kinds.npz: uint8 bit sets, bit k set where the anomaly kind kinds[k] is drawn",
        "note": "SIMULATED X-radiographs (xray_flax.data.simulate), not real scans.",
    }


def _mask_path(folder: str, index: int) -> str:
    return os.path.join(folder, f"scan_{index:03d}_mask.png")


def _kind_map_path(folder: str, index: int) -> str:
    return os.path.join(folder, f"scan_{index:03d}{kinds.KIND_MAP_SUFFIX}")


def add_kind_maps(folder: str, params: SimulationParams) -> None:
    """Gives a cache simulated before kinds were recorded its kind maps, in place.

    Cheaper for users than a new fingerprint: the scans, masks, folder and paths stay as they
    are (splits.json, scores.csv and TFDS indexes name them) and nothing is rewritten; the
    scans are simulated once more (seconds; about a minute for the hard setting) for their
    kinds. A mask that does not come out as stored (another NumPy's float rounding may move a
    pixel) leaves the kinds unknown, recorded in the manifest so that it is tried once; so
    does a cache that cannot be written to."""
    manifest_path = os.path.join(folder, "manifest.json")
    with open(manifest_path) as f:
        manifest = json.load(f)
    problem = None
    try:
        with logs.timed(log, f"adding anomaly kind maps to {folder}, simulated before they existed", "added them"):
            for i in range(params.n_scans):
                _, marks = simulate_scan_with_kinds(params, i)
                if not np.array_equal(np.asarray(Image.open(_mask_path(folder, i))) > 0, marks.mask):
                    problem = f"scan {i}'s mask differs from the one simulated now"
                    break
                kinds.write_kind_map(_kind_map_path(folder, i), marks.kinds, sim_primitives.KIND_NAMES)
            manifest.update(_manifest(params) if problem is None else {"kinds": None, "kinds_unknown": problem})
            files.write_text_atomic(manifest_path, json.dumps(manifest, indent=2))
    except OSError as e:  # a read-only shared cache: the scans are still usable
        problem = f"cannot write there ({e})"
    if problem is not None:
        log.warning("%s: anomaly kinds stay unknown (no per-kind metrics): %s", folder, problem)


def _has_kinds_record(folder: str) -> bool:
    """Whether the cache's manifest says what became of its kinds (written since they exist)."""
    with open(os.path.join(folder, "manifest.json")) as f:
        return "kinds" in json.load(f)


def ensure_simulated(params: SimulationParams, cache_dir: str = "") -> str:
    """Generates the scans into the cache unless already there; returns the folder (a 'scans'
    layout: scan_XXX.png + scan_XXX_mask.png + scan_XXX_kinds.npz (the kind map,
    xray_flax/data/kinds.py) + manifest.json, the manifest written last).

    Safe when several processes (e.g. jax.distributed on one host) call it at once: each builds
    in a private temp folder and renames it into place; a complete folder is never replaced."""
    folder = cache_dir_for(params, cache_dir)
    if is_complete(folder, params):
        if not _has_kinds_record(folder):
            add_kind_maps(folder, params)
        return folder
    ext = ".tif" if params.file_format == "tiff" else ".png"
    # Seconds to a minute without any other line: say what is happening, and that it is once.
    doing = (
        f"simulating {params.n_scans} scans of {params.height}x{params.width} ({params.difficulty}) into {folder}, "
        "once: later runs read them there"
    )
    with (
        logs.timed(log, doing, f"simulated {params.n_scans} scans"),
        files.staged_folder(folder, lambda f: is_complete(f, params), prefix=".sim-") as tmp,
    ):
        for i in range(params.n_scans):
            scan, marks = simulate_scan_with_kinds(params, i)
            _write_image(os.path.join(tmp, f"scan_{i:03d}{ext}"), scan, params.file_format)
            Image.fromarray(marks.mask.astype(np.uint8) * 255).save(_mask_path(tmp, i))
            kinds.write_kind_map(_kind_map_path(tmp, i), marks.kinds, sim_primitives.KIND_NAMES)
        with open(os.path.join(tmp, "manifest.json"), "w") as f:
            json.dump(_manifest(params), f, indent=2)
    return folder
