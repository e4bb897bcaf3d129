"""Procedural building blocks of the simulated data sets, pure given the rng: smooth noise; the
support (wood panel, canvas weave, knots); the painting (lead-white composition, brushwork,
craquelure, impasto highlights); the shapes anomalies are drawn in (blob, segment distance);
the film margin.

Shared by the easy simulator (xray_flax/data/simulate.py), the hard one
(xray_flax/data/radiograph.py) and the hidden-art scenes (xray_flax/hidden_art/simulate.py).
Their scans are cached on disk by fingerprint: a change here changes cached data sets, so bump
the GENERATOR_VERSION of every simulator it touches.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# The scan size the per-scan anomaly counts refer to (SimulationParams.scale_counts_to_area).
REFERENCE_HEIGHT, REFERENCE_WIDTH = 1280, 1024


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


def blob(rng, shape, cy, cx, radius, roughness=0.35):
    h, w = shape
    r = int(radius * 1.6) + 2
    y0, y1, x0, x1 = max(int(cy) - r, 0), min(int(cy) + r, h), max(int(cx) - r, 0), min(int(cx) + r, w)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) / radius
    rough = smooth_noise(rng, (y1 - y0, x1 - x0), max(radius / 2.5, 2.0)) * roughness
    return (slice(y0, y1), slice(x0, x1)), d + rough < 1.0


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


def film_margin(shape: tuple[int, int], margin: float) -> np.ndarray:
    """Boolean [h, w] mask of the film outside the painting: a border of `margin` x the side."""
    h, w = shape
    my, mx = int(margin * h), int(margin * w)
    outside = np.ones(shape, bool)
    outside[my : h - my, mx : w - mx] = False
    return outside


# ------------------------------------------------------------------------------------------
# What the anomalies are: the mask and, beside it, each masked pixel's kinds.

# Bit k of a kind map stands for KIND_NAMES[k]. 'faint' is set beside a kind for the weakest
# anomalies of the kinds whose strength is drawn over a wide range (radiograph.py), so that
# detection of faint anomalies can be measured across kinds.
KIND_NAMES = ("paint_loss", "scratch", "filling", "white_spot", "nail", "foreign_object", "faint")


class AnomalyMarks:
    """The anomaly mask of a scan and its kind map: per pixel a uint8 bit set of the kinds
    drawn there (bit k: KIND_NAMES[k]; 0 exactly where the mask is clear). A bit set rather
    than one label per pixel because anomalies overlap, and a tile's kinds are all the kinds
    with a masked pixel in it: a later anomaly must not erase an earlier one's kind."""

    def __init__(self, shape):
        self.mask = np.zeros(shape, bool)
        self.kinds = np.zeros(shape, np.uint8)
        self._bits = np.uint8(0)

    def kind(self, name: str, faint: bool = False) -> None:
        """The marks that follow belong to an anomaly of kind `name` (faint or not)."""
        bits = 1 << KIND_NAMES.index(name)
        if faint:
            bits |= 1 << KIND_NAMES.index("faint")
        self._bits = np.uint8(bits)

    def mark(self, sl, region: np.ndarray) -> None:
        """Marks `region` (bool, the shape of the box `sl`) as anomalous, of the current kind."""
        if not self._bits:
            raise ValueError("AnomalyMarks.kind() must name the anomaly's kind before it is marked")
        self.mask[sl] |= region
        self.kinds[sl] |= np.where(region, self._bits, np.uint8(0))

    def clear(self, where: np.ndarray) -> None:
        """No anomaly where `where` is set (the film margin)."""
        self.mask[where] = False
        self.kinds[where] = 0
