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
import os

import numpy as np
from PIL import Image
from scipy import ndimage

from xray_flax import files

# Bump when the generator changes so cached scans are regenerated.
GENERATOR_VERSION = 3
REFERENCE_HEIGHT, REFERENCE_WIDTH = 1280, 1024
DIFFICULTIES = ("easy", "hard")
ANOMALY_KINDS = ("paint_losses", "scratches", "fillings", "white_spots", "nails", "foreign_objects")


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
        if self.difficulty not in DIFFICULTIES:
            raise ValueError(f"simulated.difficulty must be one of {DIFFICULTIES}, got {self.difficulty!r}")
        if self.difficulty == "easy" and (self.scratches or self.fillings):
            raise ValueError(
                "simulated.scratches and simulated.fillings exist in the hard setting only; "
                "set simulated.difficulty='hard' or leave them at 0"
            )

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
        ratio = self.height * self.width / (REFERENCE_HEIGHT * REFERENCE_WIDTH)
        return {k: (max(1, int(round(n * ratio))) if n > 0 else 0) for k, n in counts.items()}

    def fingerprint(self) -> str:
        fields = dataclasses.asdict(self)
        if self.difficulty == "easy":  # the fields the easy generator ignores: caches stay valid
            for name in ("difficulty", "scratches", "fillings"):
                fields.pop(name)
        text = json.dumps({"version": GENERATOR_VERSION, **fields}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------
# Building blocks (pure given the rng).


def _upsampling_matrix(n_out: int, n_coarse: int, cell: float, offset: float) -> np.ndarray:
    """[n_out, n_coarse] Gaussian interpolation weights (rows sum to 1): coarse node j sits at
    pixel (j - 1) * cell - offset."""
    pos = (np.arange(n_out, dtype=np.float32) + offset)[:, None] / cell + 1.0
    d = pos - np.arange(n_coarse, dtype=np.float32)[None, :]
    weights = np.exp(-0.5 * (d / 0.6) ** 2)
    return weights / weights.sum(axis=1, keepdims=True)


def smooth_noise(rng: np.random.Generator, shape, cell: float) -> np.ndarray:
    """Zero-mean, unit-std smooth noise with features about `cell` pixels across.

    A coarse random grid is upsampled by separable Gaussian interpolation written as two small
    matrix products (rows x grid x columns): ~100x faster than filtering full-size noise."""
    h, w = shape
    gh, gw = int(np.ceil(h / cell)) + 3, int(np.ceil(w / cell)) + 3
    coarse = rng.standard_normal((gh, gw)).astype(np.float32)
    rows = _upsampling_matrix(h, gh, cell, rng.uniform(0, cell))
    cols = _upsampling_matrix(w, gw, cell, rng.uniform(0, cell))
    out = rows @ coarse @ cols.T
    out -= out.mean()
    return out / (out.std() + 1e-6)


def wood_panel(rng, shape) -> np.ndarray:
    """Vertical boards: growth rings (sinusoids warped by smooth noise) with a period and slant
    per board, and joins between boards (thin dark gap, denser glue/filler rim)."""
    h, w = shape
    n_boards = int(rng.integers(2, 5))
    edges = np.sort(rng.uniform(0.15, 0.85, n_boards - 1)) * w
    xs = np.arange(w, dtype=np.float32)
    board = np.searchsorted(edges, xs)
    period = rng.uniform(6.0, 14.0, n_boards).astype(np.float32)[board]
    slope = rng.uniform(-0.03, 0.03, n_boards).astype(np.float32)[board]
    phase = rng.uniform(0, 2 * np.pi, n_boards).astype(np.float32)[board]
    ys = np.arange(h, dtype=np.float32)[:, None]
    warp = smooth_noise(rng, shape, 90.0) * 6.0 + smooth_noise(rng, shape, 400.0) * 25.0
    rings = np.sin((xs[None, :] + slope[None, :] * ys + warp) * (2 * np.pi / period)[None, :] + phase[None, :])
    out = 0.5 * rings**3  # cubed: sharp late-wood lines on a smoother early-wood background
    for e in edges:
        d = np.abs(xs - e)
        out += (-1.2 * np.exp(-((d / 1.5) ** 2)) + 0.5 * np.exp(-(((d - 4) / 2.0) ** 2)))[None, :]
    return out.astype(np.float32)


def canvas_weave(rng, shape) -> np.ndarray:
    """Plain weave: crossing threads with irregular spacing (thread density varies)."""
    h, w = shape
    period = rng.uniform(5.0, 9.0)
    jy = np.cumsum(1 + 0.15 * smooth_noise(rng, (h, 1), 40.0)[:, 0])
    jx = np.cumsum(1 + 0.15 * smooth_noise(rng, (1, w), 40.0)[0, :])
    warp_threads = np.sin(2 * np.pi * jx / period)[None, :]
    weft_threads = np.sin(2 * np.pi * jy / period)[:, None]
    return (0.5 * (warp_threads + weft_threads) + 0.5 * warp_threads * weft_threads).astype(np.float32)


def composition(rng, shape) -> np.ndarray:
    """Lead-white density in [0, 1]: a few figures (soft blobs), a light sky gradient and
    drapery folds, the way lead white concentrates in flesh, sky and highlights."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    density = 0.35 + 0.25 * (1 - yy / h) * rng.uniform(0.3, 1.0)  # sky lighter at the top
    blobby = smooth_noise(rng, shape, min(h, w) / 6)
    for _ in range(int(rng.integers(3, 7))):  # figures / objects
        cy, cx = rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w
        ry, rx = rng.uniform(0.06, 0.25) * h, rng.uniform(0.04, 0.15) * w
        r = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) + 0.25 * blobby
        density += rng.uniform(-0.25, 0.35) * (1 / (1 + np.exp(np.minimum((r - 1) * 8, 50))))
    folds = np.sin(
        2 * np.pi * (xx * rng.uniform(-1, 1) + yy) / rng.uniform(25, 60) + 3 * smooth_noise(rng, shape, 120.0)
    )
    drapery = 1 / (1 + np.exp(-(smooth_noise(rng, shape, min(h, w) / 4) - 0.8) * 4))
    density += 0.08 * folds * drapery
    return np.clip(density, 0.0, 1.0).astype(np.float32)


def brushwork(rng, shape) -> np.ndarray:
    """Directional streaks: noise smeared along strokes whose direction varies by region."""
    noise = rng.standard_normal(shape).astype(np.float32)
    # Box smears (one pass each) are several times cheaper than 2-D Gaussians and look alike
    # once blended.
    horizontal = ndimage.uniform_filter1d(noise, 13, axis=1)
    vertical = ndimage.uniform_filter1d(noise, 13, axis=0)
    mix = 1 / (1 + np.exp(-2 * smooth_noise(rng, shape, 150.0)))
    strokes = mix * horizontal + (1 - mix) * vertical
    return strokes / (strokes.std() + 1e-6)


def craquelure(rng, shape, cell: float) -> np.ndarray:
    """Crack network in [0, 1]: borders of jittered Voronoi cells (age cracks split the paint
    into roughly polygonal islands), some cracks fainter than others.

    Computed at half resolution (the nearest-seed transform dominates the cost) and upsampled,
    which also makes the cracks 2 px wide, about what a radiograph resolves."""
    h, w = shape
    hh, hw = (h + 1) // 2, (w + 1) // 2
    n = max(int(hh * hw / (cell / 2) ** 2), 4)
    seeds = np.zeros((hh, hw), np.int32)
    seeds[rng.integers(0, hh, n), rng.integers(0, hw, n)] = np.arange(1, n + 1)
    _, (iy, ix) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    # Warp the lookup so cell borders wiggle like real cracks instead of straight lines.
    jy = np.clip(iy + (1.5 * smooth_noise(rng, (hh, hw), 6.0)).astype(np.int32), 0, hh - 1)
    jx = np.clip(ix + (1.5 * smooth_noise(rng, (hh, hw), 6.0)).astype(np.int32), 0, hw - 1)
    label = seeds[jy, jx]
    edge = np.zeros((hh, hw), bool)
    edge[:, 1:] |= label[:, 1:] != label[:, :-1]
    edge[1:, :] |= label[1:, :] != label[:-1, :]
    strength = rng.uniform(0.3, 1.0, n + 1).astype(np.float32)[label] * edge
    return np.repeat(np.repeat(strength, 2, axis=0), 2, axis=1)[:h, :w]


def highlights(rng, shape, paint, count: int) -> np.ndarray:
    """Normal bright features: short impasto highlight strokes of lead white (on faces,
    folds, jewels), denser where there is already paint. They are why "bright" alone is not
    "anomalous": the model has to learn which bright shapes belong to the painting."""
    h, w = shape
    out = np.zeros(shape, np.float32)
    weights = paint.ravel() ** 2
    picks = rng.choice(h * w, size=count, p=weights / weights.sum())
    for flat in picks:
        cy, cx = divmod(int(flat), w)
        angle, length = rng.uniform(0, np.pi), rng.uniform(8, 30)
        width = rng.uniform(2, 5)
        dy, dx = np.sin(angle) * length / 2, np.cos(angle) * length / 2
        (sy, sx), dist = segment_distance(shape, cy - dy, cx - dx, cy + dy, cx + dx, width * 2)
        out[sy, sx] += rng.uniform(0.05, 0.14) * np.exp(-((dist / (width / 2)) ** 2))
    return out


def knots(rng, shape, count: int) -> np.ndarray:
    """Normal panel features: knots, elliptical ring patterns where a branch grew."""
    h, w = shape
    out = np.zeros(shape, np.float32)
    for _ in range(count):
        cy, cx = rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w
        ry, rx = rng.uniform(12, 30), rng.uniform(6, 14)
        r = int(3 * max(ry, rx))
        y0, y1, x0, x1 = max(int(cy) - r, 0), min(int(cy) + r, h), max(int(cx) - r, 0), min(int(cx) + r, w)
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        d = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
        out[y0:y1, x0:x1] += np.exp(-d) * (0.6 * np.cos(2 * np.pi * d * 2.5) - 0.4)
    return out


# ------------------------------------------------------------------------------------------
# Anomalies: each returns (new attenuation image, boolean mask of the changed pixels).


def blob(rng, shape, cy, cx, radius, roughness=0.35):
    h, w = shape
    r = int(radius * 1.6) + 2
    y0, y1, x0, x1 = max(int(cy) - r, 0), min(int(cy) + r, h), max(int(cx) - r, 0), min(int(cx) + r, w)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) / radius
    rough = smooth_noise(rng, (y1 - y0, x1 - x0), max(radius / 2.5, 2.0)) * roughness
    return (slice(y0, y1), slice(x0, x1)), d + rough < 1.0


def add_paint_loss(rng, image, support_only, mask):
    """Paint and ground gone: the region drops to the bare support (very dark)."""
    h, w = image.shape
    cy, cx = rng.uniform(0.06, 0.94) * h, rng.uniform(0.06, 0.94) * w
    (sy, sx), region = blob(rng, image.shape, cy, cx, rng.uniform(7, 28), roughness=0.5)
    # Losses range from a thinned paint layer to bare support.
    depth = rng.uniform(0.55, 1.0)
    lost = image[sy, sx] - depth * (image[sy, sx] - support_only[sy, sx])
    image[sy, sx] = np.where(region, lost, image[sy, sx])
    mask[sy, sx] |= region


def add_white_spot(rng, image, mask):
    """Dense lead-white spot (drip, old filling) where the composition has none."""
    h, w = image.shape
    cy, cx = rng.uniform(0.06, 0.94) * h, rng.uniform(0.06, 0.94) * w
    (sy, sx), region = blob(rng, image.shape, cy, cx, rng.uniform(4, 12), roughness=0.25)
    image[sy, sx] = np.where(region, np.maximum(image[sy, sx] + rng.uniform(0.18, 0.45), 0.7), image[sy, sx])
    mask[sy, sx] |= region


def segment_distance(shape, y0, x0, y1, x1, reach):
    """(box slices, distance of each box pixel to the segment) for the box around the segment
    grown by `reach` pixels (empty when the segment lies outside the image)."""
    h, w = shape
    pad = int(reach) + 2
    by0, by1 = max(int(min(y0, y1)) - pad, 0), min(int(max(y0, y1)) + pad, h)
    bx0, bx1 = max(int(min(x0, x1)) - pad, 0), min(int(max(x0, x1)) + pad, w)
    by1, bx1 = max(by1, by0), max(bx1, bx0)
    yy, xx = np.mgrid[by0:by1, bx0:bx1].astype(np.float32)
    dy, dx = y1 - y0, x1 - x0
    t = np.clip(((yy - y0) * dy + (xx - x0) * dx) / max(dy * dy + dx * dx, 1e-6), 0, 1)
    return (slice(by0, by1), slice(bx0, bx1)), np.hypot(yy - (y0 + t * dy), xx - (x0 + t * dx))


def _segment(shape, y0, x0, y1, x1, width):
    sl, dist = segment_distance(shape, y0, x0, y1, x1, width)
    return sl, dist <= width / 2


def _paint_metal(image, mask, sl, region, level):
    sy, sx = sl
    image[sy, sx] = np.where(region, np.maximum(image[sy, sx], level), image[sy, sx])
    mask[sy, sx] |= region


def add_nail(rng, image, mask):
    """Pin or nail: a round head and a shaft, metal = the brightest thing on the film."""
    h, w = image.shape
    cy, cx = rng.uniform(0.05, 0.95) * h, rng.uniform(0.05, 0.95) * w
    level = rng.uniform(0.9, 0.98)
    head = rng.uniform(3.5, 8)
    sl, region = blob(rng, image.shape, cy, cx, head, roughness=0.05)
    _paint_metal(image, mask, sl, region, level)
    angle, length = rng.uniform(0, 2 * np.pi), rng.uniform(12, 40)
    sl, region = _segment(
        image.shape, cy, cx, cy + length * np.sin(angle), cx + length * np.cos(angle), rng.uniform(2, 4)
    )
    _paint_metal(image, mask, sl, region, level - 0.05)


def add_foreign_object(rng, image, mask):
    """A wire (polyline), a staple (U) or a small plate (rectangle)."""
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
            _paint_metal(image, mask, sl, region, level)
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
            _paint_metal(image, mask, sl, region, level)
    else:  # plate
        hh, ww = rng.uniform(8, 22), rng.uniform(8, 22)
        y0, y1 = int(max(cy - hh, 0)), int(min(cy + hh, h))
        x0, x1 = int(max(cx - ww, 0)), int(min(cx + ww, w))
        region = np.ones((y1 - y0, x1 - x0), bool)
        _paint_metal(image, mask, (slice(y0, y1), slice(x0, x1)), region, level * 0.85)


# ------------------------------------------------------------------------------------------
# One scan.


def film_margin(shape: tuple[int, int], margin: float) -> np.ndarray:
    """Boolean [h, w] mask of the film outside the painting: a border of `margin` x the side."""
    h, w = shape
    my, mx = int(margin * h), int(margin * w)
    outside = np.ones(shape, bool)
    outside[my : h - my, mx : w - mx] = False
    return outside


def simulate_scan(params: SimulationParams, index: int):
    """(uint16 [H, W] radiograph, bool [H, W] anomaly mask) for scan `index`."""
    if params.difficulty == "hard":
        from xray_flax.data import radiograph  # pylint: disable=g-import-not-at-top (it imports this module)

        return radiograph.simulate_scan(params, index)
    # Separate streams for the painting, the anomalies and the noise: the same painting with
    # and without anomalies differs only inside the masks (plus the blur's reach).
    rng, anomaly_rng, noise_rng = (np.random.default_rng([params.seed, index, k]) for k in range(3))
    shape = (params.height, params.width)
    h, w = shape
    support_kind = params.support
    if support_kind == "mixed":
        support_kind = "panel" if index % 2 == 0 else "canvas"
    support = wood_panel(rng, shape) if support_kind == "panel" else canvas_weave(rng, shape)
    support_level = 0.16 + 0.03 * support  # wood or canvas alone: dark
    ground = 0.08 + 0.01 * smooth_noise(rng, shape, 200.0)
    paint = composition(rng, shape)
    strokes = brushwork(rng, shape)
    cracks = craquelure(rng, shape, cell=rng.uniform(25, 50))
    image = support_level + ground + 0.45 * paint * (1 + 0.12 * strokes) - 0.07 * cracks * (0.3 + paint)
    area = h * w / (REFERENCE_HEIGHT * REFERENCE_WIDTH)
    image += highlights(rng, shape, paint, max(int(round(60 * area)), 1))
    if support_kind == "panel":
        image += 0.04 * knots(rng, shape, int(rng.integers(1, 4)))

    mask = np.zeros(shape, bool)
    painting = image.copy() if params.anomaly_contrast != 1.0 else None
    counts = params.anomaly_counts()
    for _ in range(counts["paint_losses"]):
        add_paint_loss(anomaly_rng, image, support_level, mask)
    for _ in range(counts["white_spots"]):
        add_white_spot(anomaly_rng, image, mask)
    for _ in range(counts["nails"]):
        add_nail(anomaly_rng, image, mask)
    for _ in range(counts["foreign_objects"]):
        add_foreign_object(anomaly_rng, image, mask)
    if painting is not None:
        image = painting + np.float32(params.anomaly_contrast) * (image - painting)

    # Film margin outside the panel: nothing attenuates, so it is nearly black.
    outside = film_margin(shape, params.margin)
    image[outside] = 0.02
    mask[outside] = False

    image = ndimage.gaussian_filter(image, 0.7)  # detector / film blur
    sigma = 0.004 + 0.012 * np.sqrt(np.clip(image, 0, None))  # signal-dependent (quantum) noise
    image = image + sigma * noise_rng.standard_normal(shape).astype(np.float32)
    scan = np.clip(image, 0.0, 1.0) * 60000.0 + 1500.0  # use most of the 16-bit range, offset
    return np.round(scan).astype(np.uint16), mask


# ------------------------------------------------------------------------------------------
# Cache on disk.


def default_cache_root() -> str:
    base = os.environ.get("XRAY_FLAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "xray_flax")
    return os.path.join(base, "simulated")


def cache_dir_for(params: SimulationParams, cache_dir: str = "") -> str:
    return cache_dir or os.path.join(default_cache_root(), params.fingerprint())


def _write_image(path, array, file_format):
    if file_format == "tiff":
        import tifffile  # pylint: disable=g-import-not-at-top

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


def ensure_simulated(params: SimulationParams, cache_dir: str = "") -> str:
    """Generates the scans into the cache unless already there; returns the folder (a 'scans'
    layout: scan_XXX.png + scan_XXX_mask.png + manifest.json, the manifest written last).

    Safe when several processes (e.g. jax.distributed on one host) call it at once: each builds
    in a private temp folder and renames it into place; a complete folder is never replaced."""
    folder = cache_dir_for(params, cache_dir)
    if is_complete(folder, params):
        return folder
    ext = ".tif" if params.file_format == "tiff" else ".png"
    with files.staged_folder(folder, lambda f: is_complete(f, params), prefix=".sim-") as tmp:
        for i in range(params.n_scans):
            scan, mask = simulate_scan(params, i)
            _write_image(os.path.join(tmp, f"scan_{i:03d}{ext}"), scan, params.file_format)
            Image.fromarray(mask.astype(np.uint8) * 255).save(os.path.join(tmp, f"scan_{i:03d}_mask.png"))
        with open(os.path.join(tmp, "manifest.json"), "w") as f:
            json.dump(
                {
                    "fingerprint": params.fingerprint(),
                    "params": dataclasses.asdict(params),
                    "generator_version": GENERATOR_VERSION,
                    "note": "SIMULATED X-radiographs (xray_flax.data.simulate), not real scans.",
                },
                f,
                indent=2,
            )
    return folder
