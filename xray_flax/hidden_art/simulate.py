"""Simulated multispectral paintings with a known hidden layer: the embedded default data of the
hidden-art family.

THESE ARE SIMULATED IMAGES, not photographs of real paintings. They exist so that every
hidden-art method can be run and SCORED (the true hidden layer is saved) without downloading
anything; point the readers (`xray_flax.hidden_art.data`) at real data for real results.

Public functions
- `SimulationParams` (dataclass): n_scenes (the last n_val go to val/), size, n_bands, seed,
  hidden_kind, strength, band wavelengths, noise, varnish, illumination, RGB encoding.
- `band_wavelengths(params)` -> float64 [B] nm, `PIGMENTS` (the palette, name -> spectra),
  `METAMER_TWINS` (the infrared of the `metamers` switch's twins).
- `simulate_layers(params, index)` -> dict with everything (noiseless and visible-only bands,
  wavelengths, pigment weights): what the tests measure against.
- `simulate_scene(params, index)` -> scene dict of the family's data model (name, rgb, bands,
  hidden, hidden_mask), deterministic given (params, index).
- `ensure_simulated(params, root="")` -> folder in the ArtExtract layout, generated on first use.

The physical model and the source of each choice
- Layers, bottom to top [ours, following the usual account of infrared reflectography]:
  white ground (gesso) -> hidden layer (carbon-black underdrawing of contours and hatching, or an
  earlier composition of dark shapes) -> visible paint (a composition of regions of pigments,
  tinted with lead white, with visible carbon-black outlines) -> aged varnish.
- Paint over a substrate, per wavelength: R = R_inf (1 - t^2) + t^2 R_sub, with t =
  exp(-d kappa(lambda)) the one-pass transmittance of a layer of thickness d and
  kappa(lambda) = kappa_400 (400 / lambda)^p [ours: a two-flux simplification of Kubelka-Munk;
  scattering falls with wavelength, which is why paint grows transparent in the near infrared and
  underdrawings appear there]. R_sub = ground (1 - s h) + s h R_hidden, h the hidden presence map
  (the truth), s = `strength`. The hidden contribution t^2 s h (R_hidden - R_ground) grows
  strictly with the wavelength: the ground and the hidden materials are spectrally flat or
  rising, t rises.
- Pigments (`PIGMENTS`): reflectance tables R_inf at 400-1000 nm and (kappa_400, p) per
  pigment, rounded from the shapes of published fibre-optic reflectance spectra (FORS) of
  historical pigments [ours, approximate]: lead white (bright, hides well), ultramarine (blue:
  dark in the visible red/green, bright in the infrared), azurite and malachite (copper pigments:
  dark and opaque in the infrared), vermilion and red lake (dark below 580 nm, bright and
  transparent in the infrared), yellow ochre, raw umber, carbon black (dark, opaque at every
  wavelength). Continued to 2,500 nm at 1,200, 1,500, 2,000 and 2,500 nm [ours, rounded]: each
  pigment's near-infrared trend carried on, the water, hydroxyl and oil absorptions near 1,450,
  1,940 and 2,300 nm left out; kappa keeps its power law, so paint grows more transparent still.
  Pigment mixtures mix R_inf and kappa linearly by weight [ours: simple, keeps the forward model
  a matrix product].
- So a per-pixel regression from RGB to a band can explain the pigment effects that the plain
  difference |band - grey(RGB)| keeps (blues bright in the infrared, reds that change), but not
  the hidden layer, which the RGB barely sees.
- Bands: narrow bands at `band_wavelengths` (default 8 bands evenly spaced over 400-1000 nm:
  400, 486, 571, 657, 743, 829, 914, 1000 nm), each the reflectance at its centre wavelength;
  `wavelength_max` up to 2,500 nm (the pigment tables' range).
- RGB: the spectrum at 400-700 nm in 20 nm steps weighted by Gaussian camera
  sensitivities (R 610 nm / 40, G 540 nm / 35, B 460 nm / 30, each summing to 1), then sRGB
  encoded (`rgb_encoding`; a camera's RGB is gamma encoded while the bands are linear) [ours].
- Aged varnish: double-pass transmission exp(-2 a(x) (450 / lambda)^4) with an uneven thickness
  a(x) (yellowing: absorbs the blue most) [ours]; illumination: a linear ramp in a random
  direction shared by all captures plus a weaker ramp per band (each band is a separate capture)
  [ours]; additive Gaussian noise per band, rising towards 1000 nm (silicon sensors lose
  sensitivity) [ours]; quantisation on saving (16-bit bands, 8-bit RGB) as in the ArtExtract
  layout (docs/papers.md, "ArtExtract").
- Truth: "hidden" = h in [0, 1], the presence (opacity) of the drawn hidden layer, independent
  of `strength`; "hidden_mask" = h > `mask_level` (0.25 by default).
- Realism switches, all off by default, each a config key (`config.data.simulation.<name>`)
  [ours; docs/hidden_art.md]. `hidden_blur` (s): the hidden term seen through the paint is blurred
  with sigma = s x the mean paint thickness (px of a 256 px painting): paint scatters light
  sideways on its way down and back, more the thicker it is. `nir_noise` (k >= 1): the band noise
  at the longest band is k times the default's (a silicon sensor's quantum efficiency falls to a
  few percent near 1,000 nm). `hidden_brighter`: the hidden material's reflectance is 0.97, above
  the ground's (a lead-white-rich earlier layer): the hidden layer BRIGHTENS the bands, which a
  method that looks for darkening only will miss. `misregistration` (px): the bands are shifted
  against the RGB (separate captures, imperfect registration). `band_blur` (px): every band is
  blurred, the RGB is not (another lens, focus or pixel pitch per band).
  Switches of the painting, each drawing from its own random stream (so the rest of the scene
  keeps its draws): `pentimenti` (share f in [0, 1], True = 1): each visible figure, with
  probability f, had an earlier version of itself, moved 2-6 px, scaled 0.9-1.1 and turned up to
  0.1 rad, whose contour (underdrawing) or form (composition) is the hidden layer, and each
  independent hidden element is dropped with probability f: pentimenti are changes of mind, so
  the hidden lines lie near and partly parallel to the visible edges, where a regression from
  RGB is most confused. `metamers`: each visible region, with probability 1/2, is painted with
  the metameric twin of its pigment (`METAMER_TWINS`: the same R_inf and extinction at 400-700 nm,
  another infrared reflectance): a band predicted from RGB is then wrong there, a false positive
  no hidden layer causes. `carbon_paint` (share in [0, 1]): each visible region, with that
  probability, has 5-30 % of its paint replaced by carbon black (greys and darks made with bone
  or lamp black): dark and opaque in every band like a carbon underdrawing, but visible in RGB,
  so a good regression should explain it (it also hides what lies beneath). `wavelength_max` to
  2,500 nm: the short-wave infrared of the InGaAs and MCT cameras of infrared reflectography,
  where paint is more transparent than at 1,000 nm (kappa keeps its power law) [ours].

Everything is vectorised NumPy/SciPy (the smooth noise of `xray_flax.data.simulate`): measured
on the project's busy 2-core CPU under nice, about 0.3 s a 256 px scene and 1 s a 512 px one
(the default 16 scenes of 256 px, PNGs included: 5 s).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import numpy as np
from PIL import Image
from scipy import ndimage

from xray_flax import errors, files
from xray_flax.data.sim_primitives import segment_distance, smooth_noise
from xray_flax.data.simulate import default_cache_root, is_complete

# Bump when the generator changes so cached scenes are regenerated.
GENERATOR_VERSION = 1
HIDDEN_KINDS = ("underdrawing", "composition", "mixed")

# Wavelength knots (nm) of the reflectance tables: the visible and near infrared of a silicon
# camera (400-1,000 nm), then the short-wave infrared of InGaAs and MCT cameras (to 2,500 nm).
_KNOTS = np.asarray([400, 450, 500, 550, 600, 650, 700, 800, 900, 1000, 1200, 1500, 2000, 2500], np.float64)
_N_VISIBLE_KNOTS = 7  # knots 400-700 nm: all the RGB sees


@dataclasses.dataclass(frozen=True)
class Pigment:
    """Reflectance of an opaque layer at `_KNOTS` (R_inf) and its extinction kappa_400 (400/l)^p."""

    reflectance: tuple[float, ...]
    kappa_400: float
    power: float


# R_inf at 400-1,000 nm (the knots up to 1,000 nm) and extinction, from FORS shapes (module text).
_SILICON_RANGE: dict[str, Pigment] = {
    "lead_white": Pigment((0.80, 0.86, 0.88, 0.89, 0.90, 0.90, 0.90, 0.90, 0.90, 0.90), 8.0, 2.5),
    "ultramarine": Pigment((0.25, 0.35, 0.22, 0.08, 0.05, 0.07, 0.20, 0.55, 0.65, 0.70), 5.0, 3.0),
    "azurite": Pigment((0.15, 0.28, 0.25, 0.12, 0.07, 0.05, 0.05, 0.06, 0.08, 0.12), 3.0, 1.0),
    "vermilion": Pigment((0.05, 0.05, 0.05, 0.06, 0.35, 0.60, 0.65, 0.70, 0.72, 0.73), 6.0, 4.0),
    "red_lake": Pigment((0.20, 0.12, 0.06, 0.05, 0.15, 0.45, 0.65, 0.80, 0.85, 0.85), 3.0, 4.0),
    "yellow_ochre": Pigment((0.08, 0.10, 0.18, 0.35, 0.48, 0.52, 0.55, 0.60, 0.55, 0.58), 5.0, 3.0),
    "malachite": Pigment((0.08, 0.12, 0.28, 0.30, 0.15, 0.08, 0.06, 0.05, 0.05, 0.06), 3.0, 1.0),
    "raw_umber": Pigment((0.05, 0.06, 0.07, 0.09, 0.12, 0.15, 0.18, 0.28, 0.32, 0.36), 6.0, 2.0),
    "carbon_black": Pigment((0.04,) * 10, 12.0, 0.0),
}
# R_inf at 1,200, 1,500, 2,000 and 2,500 nm (short-wave infrared) [ours, rounded]: each pigment
# continues its near-infrared trend (copper blues and greens rise slowly out of their broad
# absorption, the others stay level); the water, hydroxyl and oil-binder absorptions near
# 1,450, 1,940 and 2,300 nm are not modelled. Extinction keeps its power law, so paint keeps
# growing more transparent.
_SWIR: dict[str, tuple[float, ...]] = {
    "lead_white": (0.90, 0.90, 0.89, 0.88),
    "ultramarine": (0.72, 0.72, 0.70, 0.68),
    "azurite": (0.18, 0.22, 0.30, 0.28),
    "vermilion": (0.74, 0.75, 0.75, 0.75),
    "red_lake": (0.86, 0.86, 0.85, 0.84),
    "yellow_ochre": (0.62, 0.66, 0.65, 0.62),
    "malachite": (0.10, 0.20, 0.35, 0.30),
    "raw_umber": (0.42, 0.48, 0.52, 0.52),
    "carbon_black": (0.04,) * 4,
}
PIGMENTS: dict[str, Pigment] = {
    name: Pigment(p.reflectance + _SWIR[name], p.kappa_400, p.power) for name, p in _SILICON_RANGE.items()
}
# Metameric twins (the `metamers` switch): per coloured pigment, a second paint of the same
# colour, the pigment's own R_inf at 400-700 nm and its extinction, with another infrared
# reflectance (R_inf at 800-2,500 nm below) [ours, rounded]. Real pairs of the kind: ultramarine
# beside Prussian blue or indigo (dark in the infrared), azurite beside smalt, malachite beside a
# green mixed from a blue and a yellow (bright in the infrared), reds and yellows of the same hue
# with other infrared reflectance.
METAMER_TWINS: dict[str, tuple[float, ...]] = {
    "ultramarine": (0.12, 0.10, 0.10, 0.10, 0.12, 0.15, 0.15),
    "azurite": (0.35, 0.50, 0.60, 0.65, 0.65, 0.62, 0.60),
    "vermilion": (0.40, 0.35, 0.32, 0.32, 0.33, 0.35, 0.35),
    "red_lake": (0.45, 0.40, 0.38, 0.38, 0.40, 0.42, 0.42),
    "yellow_ochre": (0.80, 0.85, 0.86, 0.86, 0.86, 0.85, 0.84),
    "malachite": (0.45, 0.55, 0.60, 0.62, 0.62, 0.60, 0.58),
    "raw_umber": (0.10, 0.10, 0.10, 0.12, 0.14, 0.16, 0.16),
}
_NAMES = tuple(PIGMENTS)
_WHITE, _BLACK = _NAMES.index("lead_white"), _NAMES.index("carbon_black")
# Region pigments (white tints them; black draws outlines, and with `carbon_paint` darkens regions).
_COLOURED = tuple(i for i, n in enumerate(_NAMES) if n not in ("lead_white", "carbon_black"))

_GROUND = (
    0.82,
    0.85,
    0.87,
    0.88,
    0.89,
    0.89,
    0.90,
    0.90,
    0.90,
    0.90,
    0.90,
    0.90,
    0.90,
    0.90,
)  # gesso, rising, then flat
_CARBON = 0.05  # underdrawing: carbon black, flat
_VISIBLE_NM = np.arange(400.0, 701.0, 20.0)  # RGB integration grid: the sensitivities are 30-40 nm wide
_CAMERA = ((610.0, 40.0), (540.0, 35.0), (460.0, 30.0))  # (centre, sigma) nm of R, G, B


@dataclasses.dataclass(frozen=True)
class SimulationParams:
    """What the simulated data set is. Geometry is relative to `size` (the painting looks the same
    at 256 and 512 px); noise levels are in reflectance units."""

    n_scenes: int = 16
    n_val: int = 4  # the last n_val scenes form val/, the others train/
    size: int = 256
    n_bands: int = 8
    seed: int = 0
    hidden_kind: str = "mixed"  # 'underdrawing' | 'composition' | 'mixed' (alternating by index)
    strength: float = 1.0  # scales the hidden layer's contrast with the ground; 0 = none (truth kept)
    wavelength_min: float = 400.0
    wavelength_max: float = 1000.0
    band_noise: float = 0.01  # std at wavelength_min, x1.5 at wavelength_max
    rgb_noise: float = 0.004
    varnish: float = 0.15  # mean varnish absorbance at 450 nm (one pass)
    illumination: float = 0.08  # half the range of the shared illumination ramp
    rgb_encoding: str = "srgb"  # 'srgb' | 'linear'
    mask_level: float = 0.25  # hidden_mask = hidden > mask_level
    # Realism switches, off by default (each with its physical reason in the
    # module text). Lengths in px of a 256 px painting (scaled with `size`).
    hidden_blur: float = 0.0  # scattering: the hidden term blurred by this x the paint thickness
    nir_noise: float = 1.0  # band noise multiplier at wavelength_max (1 = none; silicon sensors)
    hidden_brighter: bool = False  # hidden material BRIGHTER than the ground in the bands
    misregistration: float = 0.0  # the bands shifted by this many px against the RGB (y and x)
    band_blur: float = 0.0  # Gaussian blur sigma of every band (px), the RGB stays sharp
    # Share in [0, 1] of the hidden layer drawn as pentimenti: earlier versions of the visible
    # figures (shifted, scaled, turned a little) instead of independent shapes (True = 1).
    pentimenti: float = 0.0
    metamers: bool = False  # half the visible regions painted with a twin of the same RGB, other infrared
    carbon_paint: float = 0.0  # share of the visible regions mixed with 5-30 % carbon black

    def __post_init__(self):
        # Each problem names its knob of config.data.simulation (configs/hidden_base.py).
        key = "config.data.simulation"
        problems = []
        if self.hidden_kind not in HIDDEN_KINDS:
            problems.append(f"{key}.hidden_kind={self.hidden_kind!r} must be one of {HIDDEN_KINDS}")
        if self.rgb_encoding not in ("srgb", "linear"):
            problems.append(f"{key}.rgb_encoding={self.rgb_encoding!r} must be 'srgb' or 'linear'")
        if self.n_scenes < 1 or not 0 <= self.n_val <= self.n_scenes:
            problems.append(
                f"{key}.n_scenes={self.n_scenes} and {key}.n_val={self.n_val}: need n_scenes >= 1 and "
                "0 <= n_val <= n_scenes"
            )
        if self.size < 32:
            problems.append(f"{key}.size={self.size} must be at least 32 px")
        if self.n_bands < 1:
            problems.append(f"{key}.n_bands={self.n_bands} must be at least 1")
        if not 300.0 <= self.wavelength_min <= self.wavelength_max <= _KNOTS[-1]:
            problems.append(
                f"{key}.wavelength_min={self.wavelength_min} and {key}.wavelength_max={self.wavelength_max}: "
                f"need 300 <= wavelength_min <= wavelength_max <= {_KNOTS[-1]:.0f} nm (the pigment tables' range)"
            )
        if not 0.0 < self.mask_level < 1.0:
            problems.append(f"{key}.mask_level={self.mask_level} must lie in (0, 1)")
        if min(self.strength, self.band_noise, self.rgb_noise, self.varnish, self.illumination) < 0:
            problems.append(f"{key}: strength, band_noise, rgb_noise, varnish and illumination must be >= 0")
        if min(self.hidden_blur, self.misregistration, self.band_blur) < 0 or self.nir_noise < 1.0:
            problems.append(f"{key}: hidden_blur, misregistration and band_blur must be >= 0 and nir_noise >= 1")
        for name in ("pentimenti", "carbon_paint"):
            value = getattr(self, name)
            if isinstance(value, str) or not 0.0 <= value <= 1.0:
                problems.append(f"{key}.{name}={value!r} must be a share in [0, 1] (0 = off)")
        if not isinstance(self.metamers, bool | np.bool_):
            problems.append(f"{key}.metamers={self.metamers!r} must be True or False")
        errors.require(problems)

    @staticmethod
    def from_config(config) -> SimulationParams:
        """From a mapping or ConfigDict; missing keys keep their defaults, unknown keys are refused."""
        values = dict(config.items()) if hasattr(config, "items") else dict(config)
        names = {f.name: f for f in dataclasses.fields(SimulationParams)}
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise errors.ConfigError(
                f"config.data.simulation: unknown simulation parameters {unknown}; known: {sorted(names)}"
            )
        types = {"int": int, "float": float, "str": str, "bool": bool}
        return SimulationParams(**{k: types[names[k].type](v) for k, v in values.items()})

    @property
    def n_train(self) -> int:
        return self.n_scenes - self.n_val

    def split_of(self, index: int) -> str:
        return "train" if index < self.n_train else "val"

    def stem(self, index: int) -> str:
        return f"sim_{index:03d}"

    def fingerprint(self) -> str:
        blob = json.dumps({"version": GENERATOR_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def band_wavelengths(params: SimulationParams) -> np.ndarray:
    """Centre wavelengths (nm) of the bands, evenly spaced from wavelength_min to wavelength_max."""
    return np.linspace(params.wavelength_min, params.wavelength_max, params.n_bands)


def _palette(metamers: bool = False) -> list[Pigment]:
    """The pigments in `_NAMES` order, then (`metamers`) the twins of `_COLOURED` in that order:
    the pigment's visible reflectance and extinction with the twin's infrared reflectance."""
    palette = list(PIGMENTS.values())
    if metamers:
        for i in _COLOURED:
            p = palette[i]
            palette.append(Pigment(p.reflectance[:_N_VISIBLE_KNOTS] + METAMER_TWINS[_NAMES[i]], p.kappa_400, p.power))
    return palette


def _tables(wavelengths: np.ndarray, metamers: bool = False):
    """(R_inf [K, L], kappa [K, L], ground [L]) of the palette (`_palette`) at `wavelengths`."""
    lam = np.asarray(wavelengths, np.float64)
    palette = _palette(metamers)
    r_inf = np.stack([np.interp(lam, _KNOTS, p.reflectance) for p in palette])
    kappa = np.stack([p.kappa_400 * (400.0 / lam) ** p.power for p in palette])
    ground = np.interp(lam, _KNOTS, _GROUND)
    return r_inf.astype(np.float32), kappa.astype(np.float32), ground.astype(np.float32)


def _camera_matrix() -> np.ndarray:
    """[16, 3] weights of the visible grid for R, G, B; each column sums to 1 (white -> 1)."""
    cols = [np.exp(-0.5 * ((_VISIBLE_NM - c) / s) ** 2) for c, s in _CAMERA]
    m = np.stack(cols, axis=1)
    return (m / m.sum(axis=0, keepdims=True)).astype(np.float32)


def srgb_encode(linear: np.ndarray) -> np.ndarray:
    """IEC 61966-2-1 transfer function, linear [0, 1] -> encoded [0, 1]."""
    x = np.clip(linear, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055).astype(np.float32)


# ------------------------------------------------------------------------------------------
# Drawing primitives (pure given the rng). Lengths are in pixels of a 256 px painting times `u`.


def _blob(rng, shape, cy, cx, ry, rx, angle, roughness):
    """(box slices, boolean region inside the box): a rotated ellipse whose border is warped by
    smooth noise. Computed in the ellipse's bounding box only (a figure covers a few % of the
    painting)."""
    h, w = shape
    reach = (1.0 + roughness * 3.0) * max(ry, rx) + 2.0
    y0, y1 = max(int(cy - reach), 0), min(int(cy + reach) + 1, h)
    x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 1, w)
    y1, x1 = max(y1, y0 + 1), max(x1, x0 + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    c, s = np.cos(angle), np.sin(angle)
    u = ((yy - cy) * c + (xx - cx) * s) / ry
    v = (-(yy - cy) * s + (xx - cx) * c) / rx
    warp = roughness * smooth_noise(rng, (y1 - y0, x1 - x0), max(min(ry, rx) / 1.5, 4.0))
    return (slice(y0, y1), slice(x0, x1)), np.sqrt(u * u + v * v) + warp < 1.0


def _blob_full(rng, shape, *args) -> np.ndarray:
    """`_blob` as a full-size boolean image."""
    (sy, sx), region = _blob(rng, shape, *args)
    out = np.zeros(shape, bool)
    out[sy, sx] = region
    return out


def _outline_points(rng, cy, cx, ry, rx, n):
    """Closed wobbly contour: points of r(phi) = 1 + sum_k a_k cos(k phi + phi_k) on an ellipse."""
    phi = np.linspace(0, 2 * np.pi, n + 1)
    r = np.ones_like(phi)
    for k in (2, 3, 5):
        r += rng.uniform(0.0, 0.12) * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    return cy + ry * r * np.sin(phi), cx + rx * r * np.cos(phi)


def _draw_polyline(out, ys, xs, width, intensity, gaps_rng=None, gap_p=0.0):
    """out = max(out, intensity * exp(-(d / (width / 2))^2)) along the polyline (d: distance to
    the segment). With gaps: each segment is skipped with probability gap_p (strokes drawn in
    pieces, as a draughtsman lifts the brush)."""
    for i in range(len(ys) - 1):
        if gaps_rng is not None and gaps_rng.random() < gap_p:
            continue
        (sy, sx), dist = segment_distance(out.shape, ys[i], xs[i], ys[i + 1], xs[i + 1], 2 * width)
        if dist.size:
            np.maximum(out[sy, sx], intensity * np.exp(-((dist / (width / 2)) ** 2)), out=out[sy, sx])


def _hatching(rng, shape, u):
    """One patch of parallel (sometimes crossed) lines inside a soft wobbly ellipse."""
    h, w = shape
    cy, cx = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
    region = _blob_full(
        rng, shape, cy, cx, rng.uniform(12, 35) * u, rng.uniform(12, 35) * u, rng.uniform(0, np.pi), 0.3
    )
    region = ndimage.gaussian_filter(region.astype(np.float32), 1.5 * u)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    spacing, width = rng.uniform(4.0, 7.0) * u, rng.uniform(1.0, 1.8) * u
    out = np.zeros(shape, np.float32)
    angles = [rng.uniform(0, np.pi)]
    if rng.random() < 0.4:
        angles.append(angles[0] + rng.uniform(0.9, 1.6))
    for a in angles:
        proj = yy * np.cos(a) + xx * np.sin(a) + 1.5 * u * smooth_noise(rng, shape, 20 * u)
        dist = np.abs((proj % spacing) - spacing / 2)
        np.maximum(out, np.exp(-((dist / (width / 2)) ** 2)), out=out)
    return out * region * rng.uniform(0.6, 1.0)


def _kept(drop_rng, drop: float) -> bool:
    """Whether the next element of a hidden layer is kept: dropped with probability `drop`, drawn
    from `drop_rng` (None: always kept). A dropped element is still drawn (into a scratch image),
    so the hidden layer's own random draws, and so its other elements, stay as they were."""
    return drop_rng is None or drop_rng.random() >= drop


def underdrawing(rng, shape, drop_rng=None, drop: float = 0.0) -> np.ndarray:
    """Presence map [0, 1] of a carbon underdrawing: contours of figures (drawn in pieces), free
    strokes and hatching patches; each element dropped with probability `drop` (`_kept`)."""
    h, w = shape
    u = min(h, w) / 256.0
    out = np.zeros(shape, np.float32)
    scratch = np.zeros(shape, np.float32)
    for _ in range(int(rng.integers(4, 8))):
        ys, xs = _outline_points(
            rng,
            rng.uniform(0.15, 0.85) * h,
            rng.uniform(0.15, 0.85) * w,
            rng.uniform(0.06, 0.25) * h,
            rng.uniform(0.06, 0.25) * w,
            48,
        )
        target = out if _kept(drop_rng, drop) else scratch
        _draw_polyline(target, ys, xs, rng.uniform(1.4, 2.6) * u, rng.uniform(0.7, 1.0), rng, 0.15)
    for _ in range(int(rng.integers(3, 7))):
        y, x = rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w
        angle = rng.uniform(0, 2 * np.pi)
        ys, xs = [y], [x]
        for _ in range(int(rng.integers(6, 16))):
            angle += rng.normal(0, 0.35)
            y, x = y + 5 * u * np.sin(angle), x + 5 * u * np.cos(angle)
            ys.append(y)
            xs.append(x)
        target = out if _kept(drop_rng, drop) else scratch
        _draw_polyline(target, np.asarray(ys), np.asarray(xs), rng.uniform(1.2, 2.2) * u, rng.uniform(0.6, 1.0))
    for _ in range(int(rng.integers(1, 4))):
        patch = _hatching(rng, shape, u)
        if _kept(drop_rng, drop):
            np.maximum(out, patch, out=out)
    return np.clip(out, 0.0, 1.0)


def earlier_composition(rng, shape, drop_rng=None, drop: float = 0.0) -> np.ndarray:
    """Presence map [0, 1] of an earlier composition: a few painted-over shapes with soft edges,
    uneven paint inside (brushwork), and a few contours of their own; each element dropped with
    probability `drop` (`_kept`)."""
    h, w = shape
    u = min(h, w) / 256.0
    out = np.zeros(shape, np.float32)
    scratch = np.zeros(shape, np.float32)
    for _ in range(int(rng.integers(2, 5))):
        region = _blob_full(
            rng,
            shape,
            rng.uniform(0.2, 0.8) * h,
            rng.uniform(0.2, 0.8) * w,
            rng.uniform(0.08, 0.2) * h,
            rng.uniform(0.05, 0.15) * w,
            rng.uniform(0, np.pi),
            0.25,
        )
        soft = ndimage.gaussian_filter(region.astype(np.float32), 1.5 * u)
        texture = 1.0 + 0.15 * smooth_noise(rng, shape, 8 * u)
        shape_map = soft * rng.uniform(0.55, 0.95) * texture
        if _kept(drop_rng, drop):
            np.maximum(out, shape_map, out=out)
    for _ in range(int(rng.integers(1, 3))):
        ys, xs = _outline_points(
            rng, rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w, rng.uniform(0.08, 0.2) * h, 0.1 * w, 40
        )
        target = out if _kept(drop_rng, drop) else scratch
        _draw_polyline(target, ys, xs, 2.0 * u, rng.uniform(0.6, 0.9), rng, 0.1)
    return np.clip(out, 0.0, 1.0)


def visible_painting(rng, shape, layout: dict | None = None):
    """(pigment weights float32 [H, W, K] summing to 1, thickness float32 [H, W]) of the visible
    composition: two background zones, 5-9 figures (wobbly ellipses, later ones on top), each a
    coloured pigment tinted with lead white (modelling), some with carbon-black outlines.

    `layout` (a dict, filled in; draws nothing more from `rng`): 'regions' int32 [H, W], which
    region shows at each pixel (0, 1: the background zones, 2 + j: figure j); 'pigments', the
    pigment index of each region; 'figures', per figure (full-size bool region, centre (y, x))."""
    h, w = shape
    u = min(h, w) / 256.0
    k = len(_NAMES)
    label = np.zeros(shape, np.int32)
    horizon = rng.uniform(0.3, 0.6) * h + 0.08 * h * smooth_noise(rng, (1, w), 60 * u)
    yy = np.arange(h, dtype=np.float32)[:, None]
    top, bottom = rng.choice(_COLOURED, size=2, replace=False)
    label[:] = np.where(yy < horizon, top, bottom)
    regions = np.where(yy < horizon, 0, 1).astype(np.int32)
    pigments, figures = [int(top), int(bottom)], []
    thick = np.where(yy < horizon, rng.uniform(0.7, 1.3), rng.uniform(0.7, 1.3)).astype(np.float32)
    outlines = np.zeros(shape, np.float32)
    for _ in range(int(rng.integers(5, 10))):
        cy, cx = rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w
        ry, rx = rng.uniform(0.06, 0.22) * h, rng.uniform(0.05, 0.18) * w
        (sy, sx), region = _blob(rng, shape, cy, cx, ry, rx, rng.uniform(0, np.pi), 0.3)
        pigment = rng.choice(_COLOURED)
        label[sy, sx][region] = pigment
        regions[sy, sx][region] = len(pigments)
        pigments.append(int(pigment))
        if layout is not None:
            full = np.zeros(shape, bool)
            full[sy, sx] = region
            figures.append((full, (cy, cx)))
        thick[sy, sx][region] = rng.uniform(0.6, 1.5)
        if rng.random() < 0.35:
            ys, xs = _outline_points(rng, cy, cx, ry, rx, 40)
            _draw_polyline(outlines, ys, xs, rng.uniform(1.0, 1.8) * u, 1.0)
    weights = np.eye(k, dtype=np.float32)[label]
    weights = ndimage.gaussian_filter(weights, (1.0 * u, 1.0 * u, 0))  # soft region borders
    white = np.clip(0.25 + 0.2 * smooth_noise(rng, shape, 30 * u), 0.0, 0.7)  # modelling
    weights *= (1.0 - white)[..., None]
    weights[..., _WHITE] += white
    weights *= (1.0 - outlines)[..., None]
    weights[..., _BLACK] += outlines
    strokes = ndimage.uniform_filter1d(rng.standard_normal(shape).astype(np.float32), int(9 * u) | 1, axis=1)
    strokes /= strokes.std() + 1e-6
    thick = ndimage.gaussian_filter(thick, 1.0 * u) * (1.0 + 0.15 * strokes)
    if layout is not None:
        layout.update(regions=regions, pigments=pigments, figures=figures)
    return weights, np.clip(thick, 0.2, None).astype(np.float32)


# ------------------------------------------------------------------------------------------
# One scene.


def _hidden_kind(params: SimulationParams, index: int) -> str:
    if params.hidden_kind == "mixed":
        return "underdrawing" if index % 2 == 0 else "composition"
    return params.hidden_kind


def _ramp(rng, shape) -> np.ndarray:
    """Linear ramp in [-1, 1] across the image in a random direction."""
    h, w = shape
    a = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = (yy - h / 2) * np.sin(a) + (xx - w / 2) * np.cos(a)
    return (r / (np.abs(r).max() + 1e-6)).astype(np.float32)


def _paint_over(weights, thick, r_inf, kappa, ground):
    """(reflectance of the paint over the bare ground, t^2) [H, W, L] each, see the docstring."""
    h, w, k = weights.shape
    flat = weights.reshape(-1, k)
    top = flat @ r_inf  # [HW, L]
    t2 = np.exp(-2.0 * thick.reshape(-1, 1) * (flat @ kappa))
    refl = top + t2 * (ground[None, :] - top)
    return refl.reshape(h, w, -1), t2.reshape(h, w, -1)


def _scatter(contribution: np.ndarray, thick: np.ndarray, sigma_per_thickness: float) -> np.ndarray:
    """The hidden term seen through scattering paint: blurred with sigma = sigma_per_thickness x
    the paint's mean thickness (the light crosses the layer twice and spreads sideways) [ours]."""
    sigma = float(sigma_per_thickness * np.mean(thick))
    return ndimage.gaussian_filter(contribution, (sigma, sigma, 0)).astype(np.float32)


def _capture_optics(bands: np.ndarray, params: SimulationParams, u: float) -> np.ndarray:
    """Per-band blur (another lens and focus per band) and a shift against the RGB
    (misregistration), both in px of a 256 px painting x u."""
    out = bands
    if params.band_blur > 0:
        out = ndimage.gaussian_filter(out, (params.band_blur * u, params.band_blur * u, 0))
    if params.misregistration > 0:
        d = params.misregistration * u
        out = ndimage.shift(out, (d, d, 0), order=1, mode="nearest")
    return out.astype(np.float32)


# ------------------------------------------------------------------------------------------
# Realism switches of the painting itself (module text): each draws from its own random stream.


def _moved(rng, region: np.ndarray, centre, u: float) -> np.ndarray:
    """`region` (bool [H, W]) as the artist first placed it: shifted 2-6 px (of a 256 px
    painting) in a random direction, scaled by 0.9-1.1 and turned by up to 0.1 rad about
    `centre`."""
    shift, direction = rng.uniform(2.0, 6.0) * u, rng.uniform(0, 2 * np.pi)
    scale, turn = rng.uniform(0.9, 1.1), rng.uniform(-0.1, 0.1)
    c = np.asarray(centre, np.float64)
    move = shift * np.asarray([np.sin(direction), np.cos(direction)])
    # affine_transform maps each output pixel o to the input pixel m @ o + offset.
    m = np.asarray([[np.cos(turn), np.sin(turn)], [-np.sin(turn), np.cos(turn)]]) / scale
    offset = c - m @ (c + move)
    return ndimage.affine_transform(region.astype(np.float32), m, offset, order=1) > 0.5


def _contour(rng, region: np.ndarray, u: float) -> np.ndarray:
    """Presence map of a carbon line drawn along the border of `region`, 1.4-2.6 px wide, in
    pieces (about a sixth of it missing, where a smooth noise is low)."""
    edge = region & ~ndimage.binary_erosion(region)
    if not edge.any():
        return np.zeros(region.shape, np.float32)
    dist = ndimage.distance_transform_edt(~edge)
    width, intensity = rng.uniform(1.4, 2.6) * u, rng.uniform(0.7, 1.0)
    pieces = np.clip(2.0 * (smooth_noise(rng, region.shape, 12 * u) + 1.0), 0.0, 1.0)
    return (intensity * np.exp(-((dist / (width / 2)) ** 2)) * pieces).astype(np.float32)


def _earlier_form(rng, region: np.ndarray, u: float) -> np.ndarray:
    """Presence map of a form painted over: `region` with soft edges and uneven paint, as in
    `earlier_composition`."""
    soft = ndimage.gaussian_filter(region.astype(np.float32), 1.5 * u)
    return soft * rng.uniform(0.55, 0.95) * (1.0 + 0.15 * smooth_noise(rng, region.shape, 8 * u))


def pentimenti(rng, layout: dict, kind: str, share: float, u: float) -> np.ndarray:
    """Presence map [0, 1] of pentimenti: each visible figure (`visible_painting`'s layout), with
    probability `share`, had an earlier version of itself (`_moved`): its contour in carbon
    (kind 'underdrawing') or the form itself in dark paint ('composition')."""
    out = np.zeros(layout["regions"].shape, np.float32)
    for region, centre in layout["figures"]:
        if rng.random() < share:
            moved = _moved(rng, region, centre, u)
            form = _contour(rng, moved, u) if kind == "underdrawing" else _earlier_form(rng, moved, u)
            np.maximum(out, form, out=out)
    return np.clip(out, 0.0, 1.0)


def _region_maps(layout: dict, chosen: dict, u: float) -> np.ndarray:
    """float32 [H, W]: value `chosen[region]` inside each chosen region of the layout, 0
    elsewhere, softened at the borders like the paint's (Gaussian, 1 px of a 256 px painting)."""
    out = np.zeros(layout["regions"].shape, np.float32)
    for region, value in chosen.items():
        out[layout["regions"] == region] = value
    return ndimage.gaussian_filter(out, 1.0 * u)


def with_metamers(rng, weights: np.ndarray, layout: dict, u: float) -> np.ndarray:
    """[H, W, K + 7] weights: each visible region, with probability 1/2, painted with the
    metameric twin of its pigment (`_palette(metamers=True)`: the twins' columns follow the
    palette's), the same colour in RGB with another infrared reflectance."""
    twins = np.zeros(weights.shape[:2] + (len(_COLOURED),), np.float32)
    for region, pigment in enumerate(layout["pigments"]):
        if rng.random() < 0.5:
            twins[..., _COLOURED.index(pigment)] += _region_maps(layout, {region: 1.0}, u)
    moved = weights[..., list(_COLOURED)] * np.clip(twins, 0.0, 1.0)
    out = np.concatenate([weights, moved], axis=-1)
    out[..., list(_COLOURED)] -= moved
    return out


def with_carbon(rng, weights: np.ndarray, layout: dict, share: float, u: float) -> np.ndarray:
    """Weights with carbon black mixed into the paint of each visible region with probability
    `share`: 5-30 % of the region's paint replaced by carbon black (a grey, shadow or dark
    green made with bone or lamp black)."""
    chosen = {r: rng.uniform(0.05, 0.3) for r in range(len(layout["pigments"])) if rng.random() < share}
    carbon = _region_maps(layout, chosen, u)[..., None]
    out = weights * (1.0 - carbon)
    out[..., _BLACK] += carbon[..., 0]
    return out.astype(np.float32)


def simulate_layers(params: SimulationParams, index: int) -> dict:
    """Everything about scene `index`: the scene's arrays plus 'bands_clean' (no noise),
    'visible_only' (the same painting, illumination and varnish without the hidden layer, no noise),
    'wavelengths_nm' [B], 'pigment_weights' [H, W, K] (columns: `_palette(params.metamers)`),
    'thickness' [H, W], 'regions' [H, W] (`visible_painting`'s layout), 'kind'."""
    if not 0 <= index < params.n_scenes:
        raise IndexError(f"scene index {index} outside 0..{params.n_scenes - 1}")
    # Separate streams: the painting, the hidden layer, the capture (varnish, light), the noise.
    # Changing the hidden layer or its strength leaves the visible painting as it was.
    # The switches of the painting draw from streams 4 (pentimenti), 5 (metamers), 6 (carbon).
    paint_rng, hidden_rng, capture_rng, noise_rng = (np.random.default_rng([params.seed, index, k]) for k in range(4))
    pentimenti_rng, metamer_rng, carbon_rng = (np.random.default_rng([params.seed, index, k]) for k in (4, 5, 6))
    shape = (params.size, params.size)
    u = params.size / 256.0
    kind = _hidden_kind(params, index)
    layout = {}
    weights, thick = visible_painting(paint_rng, shape, layout)
    drop = (pentimenti_rng, float(params.pentimenti)) if params.pentimenti > 0 else (None, 0.0)
    if kind == "underdrawing":
        hidden = underdrawing(hidden_rng, shape, *drop)
        hidden_r = np.float32(_CARBON)
    else:
        hidden = earlier_composition(hidden_rng, shape, *drop)
        hidden_r = np.float32(hidden_rng.uniform(0.10, 0.25))  # dark earlier paint, flat
    if params.pentimenti > 0:
        np.maximum(hidden, pentimenti(pentimenti_rng, layout, kind, float(params.pentimenti), u), out=hidden)
    if params.metamers:
        weights = with_metamers(metamer_rng, weights, layout, u)
    if params.carbon_paint > 0:
        weights = with_carbon(carbon_rng, weights, layout, float(params.carbon_paint), u)
    varnish = params.varnish * np.clip(1.0 + 0.5 * smooth_noise(capture_rng, shape, 80 * u), 0.0, None)
    light = 1.0 + params.illumination * _ramp(capture_rng, shape)

    lam = band_wavelengths(params)
    grid = np.concatenate([_VISIBLE_NM, lam])
    r_inf, kappa, ground = _tables(grid, bool(params.metamers))
    without, t2 = _paint_over(weights, thick, r_inf, kappa, ground)
    # R is linear in the substrate: the hidden layer adds t^2 s h (R_hidden - R_ground).
    if params.hidden_brighter:
        hidden_r = np.float32(0.97)  # e.g. a lead-white-rich earlier layer, above the ground's 0.82-0.90
    hidden_term = np.float32(params.strength) * hidden
    contribution = t2 * hidden_term[..., None] * (hidden_r - ground)
    if params.hidden_blur > 0:
        contribution = _scatter(contribution, thick, params.hidden_blur * u)
    with_hidden = without + contribution
    # Varnish (both passes) and the shared light multiply the whole capture.
    capture = np.exp(-2.0 * varnish[..., None] * ((450.0 / grid.astype(np.float32)) ** 4)) * light[..., None]
    out = {"with": with_hidden * capture, "without": without * capture}

    n_vis = len(_VISIBLE_NM)
    band_light = 1.0 + 0.3 * params.illumination * np.stack(
        [_ramp(capture_rng, shape) for _ in range(params.n_bands)], axis=-1
    )
    clean = out["with"][..., n_vis:] * band_light
    visible_only = out["without"][..., n_vis:] * band_light
    ramp = (lam - lam[0]) / max(lam[-1] - lam[0], 1e-6)
    sigma = params.band_noise * (1.0 + 0.5 * ramp) * (1.0 + (params.nir_noise - 1.0) * ramp)
    clean = _capture_optics(clean, params, u)
    visible_only = _capture_optics(visible_only, params, u)
    bands = clean + sigma.astype(np.float32) * noise_rng.standard_normal(clean.shape).astype(np.float32)
    rgb_linear = out["with"][..., :n_vis] @ _camera_matrix()
    rgb = srgb_encode(rgb_linear) if params.rgb_encoding == "srgb" else rgb_linear
    rgb = rgb + np.float32(params.rgb_noise) * noise_rng.standard_normal(rgb.shape).astype(np.float32)
    return {
        "name": params.stem(index),
        "rgb": np.clip(rgb, 0.0, 1.0).astype(np.float32),
        "bands": np.clip(bands, 0.0, 1.0).astype(np.float32),
        "hidden": hidden.astype(np.float32),
        "hidden_mask": hidden > np.float32(params.mask_level),
        "bands_clean": np.clip(clean, 0.0, 1.0).astype(np.float32),
        "visible_only": np.clip(visible_only, 0.0, 1.0).astype(np.float32),
        "wavelengths_nm": lam,
        "pigment_weights": weights,
        "thickness": thick,
        "regions": layout["regions"],
        "kind": kind,
    }


SCENE_KEYS = ("name", "rgb", "bands", "hidden", "hidden_mask")


def simulate_scene(params: SimulationParams, index: int) -> dict:
    """Scene `index` in the family's data model: name, rgb [H, W, 3], bands [H, W, B], hidden
    [H, W] presence in [0, 1], hidden_mask [H, W] bool. Deterministic given (params, index)."""
    layers = simulate_layers(params, index)
    return {k: layers[k] for k in SCENE_KEYS}


# ------------------------------------------------------------------------------------------
# Cache on disk, in the ArtExtract layout.


def default_root(params: SimulationParams) -> str:
    """<cache>/simulated_multispectral/<fingerprint>, <cache> as for the simulated X-rays
    ($XRAY_FLAX_CACHE or ~/.cache/xray_flax)."""
    return os.path.join(os.path.dirname(default_cache_root()), "simulated_multispectral", params.fingerprint())


def _to_uint16(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0.0, 1.0) * 65535.0).astype(np.uint16)


def write_scene(folder: str, scene: dict) -> None:
    """Writes one scene into `folder` (a split: rgb_images/ and ms_masks/ are created): 8-bit RGB
    PNG, 16-bit band PNGs <stem>_ms_1..B, truth beside the RGB (16-bit presence, 0/255 mask)."""
    rgb_dir, ms_dir = os.path.join(folder, "rgb_images"), os.path.join(folder, "ms_masks")
    os.makedirs(rgb_dir, exist_ok=True)
    os.makedirs(ms_dir, exist_ok=True)
    stem = scene["name"]
    rgb = np.round(np.clip(scene["rgb"], 0.0, 1.0) * 255.0).astype(np.uint8)
    Image.fromarray(rgb).save(os.path.join(rgb_dir, f"{stem}_RGB.png"), compress_level=1)
    for b in range(scene["bands"].shape[-1]):
        Image.fromarray(_to_uint16(scene["bands"][..., b])).save(
            os.path.join(ms_dir, f"{stem}_ms_{b + 1}.png"), compress_level=1
        )
    if "hidden" in scene:
        Image.fromarray(_to_uint16(scene["hidden"])).save(os.path.join(rgb_dir, f"{stem}_hidden.png"), compress_level=1)
    if "hidden_mask" in scene:
        mask = scene["hidden_mask"].astype(np.uint8) * 255
        Image.fromarray(mask).save(os.path.join(rgb_dir, f"{stem}_hidden_mask.png"), compress_level=1)


def ensure_simulated(params: SimulationParams, root: str = "") -> str:
    """Generates the scenes unless already there; returns the dataset root, in the ArtExtract
    layout: train/ and val/, each rgb_images/<stem>_RGB.png (+ _hidden.png, _hidden_mask.png) and
    ms_masks/<stem>_ms_1..B.png, plus manifest.json (written last; its fingerprint marks the
    folder complete). `root` '' = `default_root(params)`.

    Atomic like `xray_flax.data.simulate.ensure_simulated`: built in a private temp folder beside
    `root` and renamed into place; a complete folder with the same fingerprint is reused, one with
    another fingerprint (or a partial one) is replaced."""
    folder = root or default_root(params)
    if is_complete(folder, params):
        return folder
    with files.staged_folder(folder, lambda f: is_complete(f, params), prefix=".sim-ms-") as tmp:
        kinds = {}
        for i in range(params.n_scenes):
            scene = simulate_scene(params, i)
            write_scene(os.path.join(tmp, params.split_of(i)), scene)
            kinds[scene["name"]] = _hidden_kind(params, i)
        splits = {
            s: [params.stem(i) for i in range(params.n_scenes) if params.split_of(i) == s] for s in ("train", "val")
        }
        manifest = {
            "fingerprint": params.fingerprint(),
            "params": dataclasses.asdict(params),
            "generator_version": GENERATOR_VERSION,
            "wavelengths_nm": [float(x) for x in band_wavelengths(params)],
            "splits": splits,
            "hidden_kinds": kinds,
            "note": "SIMULATED multispectral paintings (xray_flax.hidden_art.simulate), not real images.",
        }
        with open(os.path.join(tmp, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=2)
    return folder
