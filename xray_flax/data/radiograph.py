"""The hard simulated X-radiographs (`simulated.difficulty = 'hard'`): an imaging chain and
anomalies that are small, thin and low-contrast as well as obvious.

THESE ARE SIMULATED IMAGES, not scans of real paintings (docs/data.md says how this setting
was calibrated). The easy generator (xray_flax/data/simulate.py) paints a display image
directly; this one follows a radiograph's physics:

  attenuation A = mu * t summed over the layers a beam crosses:
      support (wood panel: grain, knots, board joins, a cradle of glued battens and sliding
      crossbars | canvas: weave, a stretcher with its crossbar, tacks along the tacking edge)
      + ground (uneven, brushed on) + lead-white paint (composition, brushwork, impasto
      highlights, a faint earlier composition) - craquelure
      -> anomalies change A inside their masks
  primary exposure E = heel(x) * exp(-A)   (the tube's heel effect: a gradient across the film)
      -> focal-spot blur (geometric unsharpness) -> scatter fog (a broad blur of E added back)
      -> quantum noise (counts of N0 photons per pixel at full exposure)
      -> film: density a sigmoid of log exposure (toe, straight part, shoulder) + film grain
      -> positive display (dense = bright) -> digitiser gain, offset and row banding -> 16 bit

Normal structures that look like defects: tacks (metal dots) along a canvas's edge, cradle and
stretcher edges (steps of density), knots, board joins, cracks, impasto highlights, weave.
Anomalies, each with its pixel mask (counts per 1280x1024 scan from SimulationParams):

  paint_losses      blobs of 2-20 px radius, from a slight thinning to bare support
  scratches         thin polylines 1-2.5 px wide where part of the paint is gone
  fillings          old fillings: paint and cracks replaced by a smooth filler of about the
                    surrounding density (a texture change more than a density change)
  white_spots       dense inclusions of 1.5-6 px radius, from faint to bright
  nails             nails and pins (metal: head and shaft, or a 1-2.5 px pin)
  foreign_objects   wires and staples (metal, thin)

Sizes and strengths are drawn per anomaly, log-uniform where the range is wide, so one scan
holds obvious and subtle ones; `anomaly_contrast` scales them all (the calibration knob). The
kind map records each anomaly's kind, and 'faint' for the losses, scratches and inclusions
whose strength fell in the weakest third of its (log) range (`_is_faint`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from xray_flax.data import sim_primitives

# Attenuation (mu * t, dimensionless) of each layer where it is at its usual thickness. Paint
# ranges over [0, LEAD_WHITE] with the composition's lead-white density.
PANEL, CANVAS, GROUND, LEAD_WHITE = 0.6, 0.08, 0.5, 2.5
WOOD_BAR, METAL = 0.35, 3.0
# Strength ranges drawn log-uniformly per anomaly (a share of the paint lost, added density).
LOSS_DEPTH, SCRATCH_DEPTH, INCLUSION_DENSITY = (0.15, 1.0), (0.15, 0.9), (0.1, 1.2)


def _log_uniform(rng, low, high):
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _is_faint(strength: float, low: float, high: float) -> bool:
    """Whether a strength drawn log-uniformly from [low, high] lies in the weakest third of
    that range (on the log scale): the anomalies marked 'faint' in the kind map. Before
    `anomaly_contrast`, which scales every anomaly alike."""
    return strength < low * (high / low) ** (1 / 3)


def _soft_band(coordinate: np.ndarray, start: float, width: float, edge: float = 5.0) -> np.ndarray:
    """1 inside [start, start + width], 0 outside, with soft edges of about `edge` px (cradle
    and stretcher bars lie farthest from the film, so their edges are the most unsharp)."""
    rise = 1 / (1 + np.exp(np.clip(-(coordinate - start) / edge, -50, 50)))
    fall = 1 / (1 + np.exp(np.clip((coordinate - start - width) / edge, -50, 50)))
    return (rise * fall).astype(np.float32)


def _grain_along(rng, shape, axis: int) -> np.ndarray:
    """Wood grain whose rings run along `axis` (0: vertical rings, 1: horizontal)."""
    if axis == 0:
        return sim_primitives.wood_panel(rng, shape)
    return sim_primitives.wood_panel(rng, shape[::-1]).T.copy()


def cradle(rng, shape) -> np.ndarray:
    """A panel's cradle: vertical battens glued along the grain and horizontal crossbars
    sliding through them, each a wide band of extra wood with its own grain."""
    h, w = shape
    out = np.zeros(shape, np.float32)
    xs, ys = np.arange(w, dtype=np.float32)[None, :], np.arange(h, dtype=np.float32)[:, None]
    spacing_x, spacing_y = rng.uniform(0.2, 0.3) * w, rng.uniform(0.22, 0.32) * h
    vertical = sum(
        _soft_band(xs, x0, rng.uniform(0.035, 0.05) * w) for x0 in np.arange(rng.uniform(0.05, 0.15) * w, w, spacing_x)
    )
    horizontal = sum(
        _soft_band(ys, y0, rng.uniform(0.035, 0.05) * h) for y0 in np.arange(rng.uniform(0.08, 0.18) * h, h, spacing_y)
    )
    out += vertical * (1 + 0.06 * _grain_along(rng, shape, 0))
    out += horizontal * (1 + 0.06 * _grain_along(rng, shape, 1))
    return WOOD_BAR * out


def stretcher(rng, shape, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """A canvas's stretcher (four bars inside the edges, often a crossbar) and the tacks that
    hold the canvas on its edge: (extra attenuation of the wood, attenuation of the tacks)."""
    h, w = shape
    my, mx = margin * h, margin * w
    xs, ys = np.arange(w, dtype=np.float32)[None, :], np.arange(h, dtype=np.float32)[:, None]
    bar_y, bar_x = rng.uniform(0.05, 0.07) * h, rng.uniform(0.05, 0.07) * w
    vertical = _soft_band(xs, mx, bar_x) + _soft_band(xs, w - mx - bar_x, bar_x)
    horizontal = _soft_band(ys, my, bar_y) + _soft_band(ys, h - my - bar_y, bar_y)
    if rng.uniform() < 0.7:
        vertical = vertical + _soft_band(xs, w / 2 - bar_x / 2, bar_x)
    wood = np.clip(vertical + horizontal, 0, 1) * (1 + 0.06 * _grain_along(rng, shape, 0))
    tacks = np.zeros(shape, np.float32)
    if rng.uniform() < 0.5:  # the tacking edge is often cropped or under the frame's rebate
        return WOOD_BAR * 1.4 * wood, tacks
    spacing, inset = rng.uniform(35, 60), rng.uniform(0.008, 0.015)
    points = []
    for y in np.arange(my + spacing / 2, h - my, spacing):
        points += [(y, mx + inset * w), (y, w - mx - inset * w)]
    for x in np.arange(mx + spacing / 2, w - mx, spacing):
        points += [(my + inset * h, x), (h - my - inset * h, x)]
    for cy, cx in points:
        cy, cx = cy + rng.normal(0, 2), cx + rng.normal(0, 1.5)
        sl, region = sim_primitives.blob(rng, shape, cy, cx, rng.uniform(1.8, 3.0), roughness=0.1)
        tacks[sl] = np.maximum(tacks[sl], region * METAL * rng.uniform(0.4, 0.8))
    return WOOD_BAR * 1.4 * wood, tacks


def _local_mean(values: np.ndarray, sl, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(values[sl], sigma, mode="nearest")


# ------------------------------------------------------------------------------------------
# Anomalies: each changes the attenuation A in place inside its region and marks it, with its
# kind, in `marks` (sim_primitives.AnomalyMarks). Marking draws nothing from the rng: the scans
# and masks are those of the generator before kinds were recorded.


def _where(attenuation, marks, sl, region, new):
    attenuation[sl] = np.where(region, new, attenuation[sl])
    marks.mark(sl, region)


def _random_centre(rng, shape, edge: float = 0.06):
    h, w = shape
    return rng.uniform(edge, 1 - edge) * h, rng.uniform(edge, 1 - edge) * w


def add_loss(rng, attenuation, layers, marks):
    """Paint (and ground) partly or wholly gone: A drops by a share of the layers above the
    support."""
    cy, cx = _random_centre(rng, attenuation.shape)
    sl, region = sim_primitives.blob(rng, attenuation.shape, cy, cx, _log_uniform(rng, 2, 20), roughness=0.45)
    depth = _log_uniform(rng, *LOSS_DEPTH)
    marks.kind("paint_loss", faint=_is_faint(depth, *LOSS_DEPTH))
    _where(attenuation, marks, sl, region, attenuation[sl] - depth * layers[sl])


def add_scratch(rng, attenuation, layers, marks):
    """A scratch or tear through the paint: a thin polyline of partial loss."""
    y, x = _random_centre(rng, attenuation.shape)
    angle, width, depth = rng.uniform(0, 2 * np.pi), rng.uniform(1.0, 2.5), _log_uniform(rng, *SCRATCH_DEPTH)
    marks.kind("scratch", faint=_is_faint(depth, *SCRATCH_DEPTH))
    for _ in range(int(rng.integers(2, 5))):
        angle += rng.normal(0, 0.35)
        length = rng.uniform(8, 35)
        ny, nx = y + length * np.sin(angle), x + length * np.cos(angle)
        sl, dist = sim_primitives.segment_distance(attenuation.shape, y, x, ny, nx, width)
        region = dist <= width / 2
        _where(attenuation, marks, sl, region, attenuation[sl] - depth * layers[sl])
        y, x = ny, nx


def add_filling(rng, attenuation, layers, support, marks):
    """An old filling: paint, ground and cracks replaced by a smooth filler whose density is
    close to the surroundings' average (within +-12 %)."""
    marks.kind("filling")
    cy, cx = _random_centre(rng, attenuation.shape)
    radius = rng.uniform(5, 18)
    sl, region = sim_primitives.blob(rng, attenuation.shape, cy, cx, radius, roughness=0.3)
    around = _local_mean(layers, sl, radius)
    filler = around * rng.uniform(0.88, 1.12) * (1 + 0.01 * sim_primitives.smooth_noise(rng, around.shape, 8.0))
    _where(attenuation, marks, sl, region, support[sl] + filler)


def add_inclusion(rng, attenuation, marks):
    """A dense grain or drip in the paint (lead white, a filler with lead): a small bright spot."""
    cy, cx = _random_centre(rng, attenuation.shape)
    sl, region = sim_primitives.blob(rng, attenuation.shape, cy, cx, _log_uniform(rng, 1.5, 6), roughness=0.25)
    density = _log_uniform(rng, *INCLUSION_DENSITY)
    marks.kind("white_spot", faint=_is_faint(density, *INCLUSION_DENSITY))
    _where(attenuation, marks, sl, region, attenuation[sl] + density)


def _add_metal_segment(attenuation, marks, y0, x0, y1, x1, width, amount):
    sl, dist = sim_primitives.segment_distance(attenuation.shape, y0, x0, y1, x1, width)
    region = dist <= width / 2
    _where(attenuation, marks, sl, region, attenuation[sl] + amount)


def add_nail(rng, attenuation, marks):
    """A nail (round head and shaft) or, as often, a small pin."""
    marks.kind("nail")
    cy, cx = _random_centre(rng, attenuation.shape, 0.05)
    amount = METAL * rng.uniform(0.6, 1.2)
    if rng.uniform() < 0.5:  # pin: 1-2.5 px, nothing else
        sl, region = sim_primitives.blob(rng, attenuation.shape, cy, cx, rng.uniform(1.0, 2.5), roughness=0.05)
        _where(attenuation, marks, sl, region, attenuation[sl] + amount)
        return
    sl, region = sim_primitives.blob(rng, attenuation.shape, cy, cx, rng.uniform(2.5, 6), roughness=0.05)
    _where(attenuation, marks, sl, region, attenuation[sl] + amount)
    angle, length = rng.uniform(0, 2 * np.pi), rng.uniform(8, 30)
    end_y, end_x = cy + length * np.sin(angle), cx + length * np.cos(angle)
    _add_metal_segment(attenuation, marks, cy, cx, end_y, end_x, rng.uniform(1.5, 3), amount * 0.8)


def add_foreign_object(rng, attenuation, marks):
    """A thin wire (polyline) or a staple (U)."""
    marks.kind("foreign_object")
    cy, cx = _random_centre(rng, attenuation.shape, 0.08)
    amount = METAL * rng.uniform(0.3, 1.0)
    if rng.uniform() < 0.5:
        y, x, angle, width = cy, cx, rng.uniform(0, 2 * np.pi), rng.uniform(1.0, 1.8)
        for _ in range(int(rng.integers(3, 6))):
            angle += rng.normal(0, 0.5)
            ny, nx = y + 12 * np.sin(angle), x + 12 * np.cos(angle)
            _add_metal_segment(attenuation, marks, y, x, ny, nx, width, amount)
            y, x = ny, nx
        return
    angle, length, leg = rng.uniform(0, np.pi), rng.uniform(12, 30), rng.uniform(4, 9)
    dy, dx = np.sin(angle), np.cos(angle)
    ay, ax, by, bx = cy - dy * length / 2, cx - dx * length / 2, cy + dy * length / 2, cx + dx * length / 2
    width = rng.uniform(1.5, 2.5)
    for y0, x0, y1, x1 in (
        (ay, ax, by, bx),
        (ay, ax, ay + dx * leg, ax - dy * leg),
        (by, bx, by + dx * leg, bx - dy * leg),
    ):
        _add_metal_segment(attenuation, marks, y0, x0, y1, x1, width, amount)


# ------------------------------------------------------------------------------------------
# The imaging chain.


def expose(rng, attenuation: np.ndarray, outside: np.ndarray) -> np.ndarray:
    """Positive display values in [0, 1] (dense = bright) of a film exposed through
    `attenuation`; `outside` marks the film beyond the painting (unattenuated)."""
    h, w = attenuation.shape
    heel = np.linspace(rng.uniform(0.85, 0.95), rng.uniform(1.05, 1.15), w, dtype=np.float32)[None, :]
    if rng.uniform() < 0.5:
        heel = heel[:, ::-1]
    primary = heel * np.exp(-attenuation)
    primary = ndimage.gaussian_filter(primary, rng.uniform(0.8, 1.5))  # focal spot
    scatter = rng.uniform(0.15, 0.4) * ndimage.gaussian_filter(primary, 30.0, mode="nearest")
    photons = rng.uniform(20000.0, 60000.0)  # per pixel at full exposure
    # Quantum noise: Poisson counts, drawn in their normal approximation (exact to well under a
    # percent at these thousands of photons), so the same painting with and without an anomaly
    # gets the same noise field and differs only near the anomaly.
    mean = primary + scatter
    exposure = mean + np.sqrt(mean / photons) * rng.standard_normal((h, w)).astype(np.float32)
    log_exposure = np.log(np.maximum(exposure, 0.5 / photons))
    # Exposure set for the painting: its median log exposure lands mid-way up the film curve.
    reference = np.median(log_exposure[~outside]) if (~outside).any() else np.median(log_exposure)
    contrast = rng.uniform(1.2, 1.8)  # film gamma on the natural-log scale
    display = 1 / (1 + np.exp(contrast * (log_exposure - reference)))
    grain = ndimage.gaussian_filter(rng.standard_normal((h, w)).astype(np.float32), 0.7)
    return display + 0.006 * grain / (grain.std() + 1e-6)


def digitise(rng, display: np.ndarray) -> np.ndarray:
    """16-bit codes: a scanner's gain and offset, and a faint offset per row (banding)."""
    h, _ = display.shape
    gain, offset = rng.uniform(45000.0, 60000.0), rng.uniform(500.0, 2000.0)
    rows = 0.002 * rng.standard_normal((h, 1)).astype(np.float32)
    return np.round(np.clip(offset + gain * (display + rows), 0, 65535)).astype(np.uint16)


# ------------------------------------------------------------------------------------------
# One scan.


def simulate_scan(params, index: int):
    """(uint16 [H, W] radiograph, bool [H, W] anomaly mask) for scan `index` of the hard
    setting (`simulate_scan_with_kinds` adds the kind map)."""
    scan, marks = simulate_scan_with_kinds(params, index)
    return scan, marks.mask


def simulate_scan_with_kinds(params, index: int):
    """(uint16 [H, W] radiograph, sim_primitives.AnomalyMarks: the mask and the kind map) for
    scan `index` of the hard setting. Separate random streams for the painting, the anomalies
    and the imaging, so the same painting without anomalies differs only inside the masks (plus
    the blur's reach)."""
    rng, anomaly_rng, imaging_rng = (np.random.default_rng([params.seed, index, k, 1]) for k in range(3))
    shape = (params.height, params.width)
    h, w = shape
    support_kind = params.support
    if support_kind == "mixed":
        support_kind = "panel" if index % 2 == 0 else "canvas"
    if support_kind == "panel":
        support = PANEL * (1 + 0.06 * sim_primitives.wood_panel(rng, shape)) + cradle(rng, shape)
        support += PANEL * 0.08 * sim_primitives.knots(rng, shape, int(rng.integers(1, 4)))
        tacks = np.zeros(shape, np.float32)
    else:
        support = CANVAS * (1 + 0.4 * sim_primitives.canvas_weave(rng, shape))
        bars, tacks = stretcher(rng, shape, params.margin)
        support = support + bars
    ground = GROUND * (
        1 + 0.05 * sim_primitives.smooth_noise(rng, shape, 200.0) + 0.03 * sim_primitives.brushwork(rng, shape)
    )
    paint = sim_primitives.composition(rng, shape)
    strokes = sim_primitives.brushwork(rng, shape)
    earlier = sim_primitives.composition(rng, shape)  # a faint earlier composition (pentimento)
    lead = LEAD_WHITE * (paint * (1 + 0.12 * strokes) + 0.1 * (earlier - earlier.mean()))
    area = h * w / (sim_primitives.REFERENCE_HEIGHT * sim_primitives.REFERENCE_WIDTH)
    lead += LEAD_WHITE * sim_primitives.highlights(rng, shape, paint, max(int(round(60 * area)), 1))
    cracks = sim_primitives.craquelure(rng, shape, cell=rng.uniform(25, 50))
    layers = np.maximum(ground + lead - 0.25 * cracks * (ground + lead) * rng.uniform(0.5, 1.0), 0.0)
    attenuation = (support + layers + tacks).astype(np.float32)

    marks = sim_primitives.AnomalyMarks(shape)
    painting = attenuation.copy()
    counts = params.anomaly_counts()
    for _ in range(counts["paint_losses"]):
        add_loss(anomaly_rng, attenuation, layers, marks)
    for _ in range(counts["scratches"]):
        add_scratch(anomaly_rng, attenuation, layers, marks)
    for _ in range(counts["fillings"]):
        add_filling(anomaly_rng, attenuation, layers, support, marks)
    for _ in range(counts["white_spots"]):
        add_inclusion(anomaly_rng, attenuation, marks)
    for _ in range(counts["nails"]):
        add_nail(anomaly_rng, attenuation, marks)
    for _ in range(counts["foreign_objects"]):
        add_foreign_object(anomaly_rng, attenuation, marks)
    if params.anomaly_contrast != 1.0:
        attenuation = painting + np.float32(params.anomaly_contrast) * (attenuation - painting)

    outside = sim_primitives.film_margin(shape, params.margin)
    attenuation[outside] = 0.0
    marks.clear(outside)
    return digitise(imaging_rng, expose(imaging_rng, attenuation, outside)), marks
