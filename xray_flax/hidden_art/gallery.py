"""A self-contained HTML gallery of hidden-art results: one row per painting,
one column per method and band, and a table of the recovery metrics.

The file works from disk with no server and no network: every image is an inline base64 PNG
(`xray_flax.report.html.png_data_uri`), the style is inline, there is no script, and a
Content-Security-Policy forbids any other source. It is written to a temporary name and renamed
(`xray_flax.files.write_text_atomic`).

Public functions
- `painting_entry(scene, outputs)` -> one painting's entry: the scene dict of the family's data
  model and, per method, that painting's outputs of `dissimilarity` ("map" [H, W], optional
  "per_band" [H, W, B], optional "collage" [H, W]); with a known truth ("hidden",
  "hidden_mask") the metrics of `metrics.recovery_metrics` are computed.
- `render_gallery(entries, title, max_side)` -> the HTML text; `write_gallery(path, entries, ...)`
  writes it atomically and returns {"paintings", "images"} counts.

Columns and how each image is drawn [ours, unless marked]
- RGB (as it is, clipped to [0, 1]); truth when any painting has one ('jet', fixed scale 0..1).
- Per method, in the order the methods first appear: "map" in 'jet' after min-max scaling per
  painting [ArtExtract 2025 heatmaps: min-max, 'jet', blue similar, red different]; "overlay":
  `dissimilarity.overlay`, the map on the blue channel of the grey RGB [ArtExtract 2024];
  "collage" when the method gives one: the band index in 'jet' colours (blue = band 1, the
  shortest wavelength in the usual order, red = the last band), the grey RGB where no band passes
  the threshold; then one column per band: |difference| in 'jet', min-max over ALL bands of that
  painting and method, so the bands' columns are comparable.
- A cell is "-" where a painting lacks a method or a band. Images are shrunk (bilinear on the
  values; nearest for the collage) to at most `max_side` pixels a side to keep the file small.
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image

from xray_flax import files
from xray_flax.hidden_art import dissimilarity as dis
from xray_flax.hidden_art import metrics as recovery
from xray_flax.report import overlay as colours
from xray_flax.report.html import png_data_uri
from xray_flax.report.tables import format_number

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_METRIC_TITLES = {
    "correlation": "correlation (Pearson r)",
    "ssim": "SSIM",
    "auroc": "AUROC (hidden mask)",
    "average_precision": "average precision (hidden mask)",
}


def painting_entry(scene: Mapping, outputs: Mapping[str, Mapping]) -> dict:
    """A gallery entry from a scene and {method: that painting's dissimilarity outputs}."""
    name = str(scene.get("name", "painting"))
    methods = {}
    for method, out in outputs.items():
        if "map" not in out:
            raise ValueError(f"painting {name!r}, method {method!r}: the outputs have no 'map'")
        methods[str(method)] = {k: np.asarray(v) for k, v in out.items() if k in ("map", "per_band", "collage")}
    entry = {"name": name, "rgb": np.asarray(scene["rgb"]), "methods": methods}
    if scene.get("hidden") is not None:
        entry["truth"] = np.asarray(scene["hidden"])
        if scene.get("hidden_mask") is not None:
            entry["metrics"] = {
                method: recovery.recovery_metrics(out["map"], scene["hidden"], scene["hidden_mask"])
                for method, out in methods.items()
            }
    return entry


def _shrink_values(values: np.ndarray, max_side: int, nearest: bool = False) -> np.ndarray:
    h, w = values.shape[:2]
    factor = max(h, w) / max_side
    if factor <= 1:
        return values
    size = (max(1, round(w / factor)), max(1, round(h / factor)))
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    if values.ndim == 2:
        return np.asarray(Image.fromarray(values.astype(np.float32)).resize(size, resample))
    return np.asarray(Image.fromarray(values).resize(size, resample))


def _jet(values: np.ndarray, low: float | None = None, high: float | None = None) -> np.ndarray:
    values = np.asarray(values, np.float32)
    low = float(values.min()) if low is None else low
    high = float(values.max()) if high is None else high
    if high <= low:  # a constant map: drawn at the low end of the colour map
        return colours.apply_colormap(np.zeros_like(values), "jet")
    return colours.apply_colormap(values, "jet", low, high)


def _collage_rgb(index: np.ndarray, rgb: np.ndarray, n_bands: int) -> np.ndarray:
    lut = colours.apply_colormap(np.linspace(0.0, 1.0, max(n_bands, 1)), "jet")
    luma = np.round(np.clip(np.asarray(dis.grey(rgb)), 0.0, 1.0) * 255.0).astype(np.uint8)
    out = np.repeat(luma[..., None], 3, axis=-1)
    valid = index >= 0
    out[valid] = lut[np.clip(index[valid], 0, len(lut) - 1)]
    return out


def _check(entry: Mapping) -> tuple[str, tuple[int, int]]:
    name = str(entry.get("name", "?"))
    rgb = np.asarray(entry.get("rgb"))
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"painting {name!r}: 'rgb' must be [H, W, 3], got {rgb.shape}")
    shape = rgb.shape[:2]
    if entry.get("truth") is not None and np.shape(entry["truth"]) != shape:
        raise ValueError(f"painting {name!r}: 'truth' {np.shape(entry['truth'])} does not match the RGB {shape}")
    for method, out in entry.get("methods", {}).items():
        for key, want in (("map", shape), ("collage", shape)):
            if key in out and np.shape(out[key]) != want:
                raise ValueError(f"painting {name!r}, method {method!r}: {key!r} {np.shape(out[key])} is not {want}")
        if "per_band" in out and (np.ndim(out["per_band"]) != 3 or np.shape(out["per_band"])[:2] != shape):
            raise ValueError(
                f"painting {name!r}, method {method!r}: 'per_band' {np.shape(out['per_band'])} is not [{shape}, B]"
            )
    return name, shape


def _columns(entries: Sequence[Mapping]) -> list[tuple[str, str, int | None]]:
    """(method or '', kind, band) per column: ('', 'rgb'), ('', 'truth'), (m, 'map'), ..."""
    columns: list[tuple[str, str, int | None]] = [("", "rgb", None)]
    if any(e.get("truth") is not None for e in entries):
        columns.append(("", "truth", None))
    order: list[str] = []
    for entry in entries:
        order += [m for m in entry.get("methods", {}) if m not in order]
    for method in order:
        outs = [e["methods"][method] for e in entries if method in e.get("methods", {})]
        columns += [(method, "map", None), (method, "overlay", None)]
        if any("collage" in out for out in outs):
            columns.append((method, "collage", None))
        n_bands = max((np.shape(out["per_band"])[-1] for out in outs if "per_band" in out), default=0)
        columns += [(method, "band", b) for b in range(n_bands)]
    return columns


def _header(method: str, kind: str, band: int | None) -> str:
    if kind == "rgb":
        return "RGB"
    if kind == "truth":
        return "truth (hidden layer)"
    if kind == "band":
        return f"{method}<br>band {band + 1}"
    return f"{method}<br>{kind}"


def _cell_image(entry: Mapping, method: str, kind: str, band: int | None, max_side: int) -> np.ndarray | None:
    rgb = np.clip(np.nan_to_num(np.asarray(entry["rgb"], np.float32)), 0.0, 1.0)
    if kind == "rgb":
        return _shrink_values(np.round(rgb * 255.0).astype(np.uint8), max_side)
    if kind == "truth":
        truth = entry.get("truth")
        return None if truth is None else _jet(_shrink_values(np.asarray(truth, np.float32), max_side), 0.0, 1.0)
    out = entry.get("methods", {}).get(method)
    if out is None:
        return None
    if kind == "map":
        return _jet(_shrink_values(np.asarray(out["map"], np.float32), max_side))
    if kind == "overlay":
        image = np.asarray(dis.overlay(rgb[None], np.asarray(out["map"], np.float32)[None])[0])
        return _shrink_values(image, max_side)
    if kind == "collage":
        if "collage" not in out:
            return None
        n_bands = np.shape(out["per_band"])[-1] if "per_band" in out else int(np.max(out["collage"])) + 1
        image = _collage_rgb(np.asarray(out["collage"], np.int64), rgb, n_bands)
        return _shrink_values(image, max_side, nearest=True)
    per_band = out.get("per_band")
    if per_band is None or band >= np.shape(per_band)[-1]:
        return None
    per_band = np.asarray(per_band, np.float32)
    return _jet(_shrink_values(per_band[..., band], max_side), float(per_band.min()), float(per_band.max()))


def _metric_cell(row: Mapping | None, name: str) -> str:
    if row is None:
        return "<td>-</td>"
    value = row.get(name)
    if value is None:
        reason = html.escape(str(row.get("reasons", {}).get(name, "not computed")))
        return f'<td class="none" title="{reason}">none ({reason})</td>'
    return f"<td>{format_number(value)}</td>"


def _metrics_table(entries: Sequence[Mapping]) -> str:
    rows, per_method = [], {}
    for entry in entries:
        for method, row in (entry.get("metrics") or {}).items():
            per_method.setdefault(method, []).append(row)
            cells = "".join(_metric_cell(row, name) for name in recovery.METRICS)
            rows.append(f"<tr><td>{html.escape(str(entry['name']))}</td><td>{html.escape(method)}</td>{cells}</tr>")
    if not rows:
        return "<p>No metrics: no painting has a known hidden layer.</p>"
    for method, method_rows in per_method.items():
        summary = recovery.mean_metrics(method_rows)
        cells = "".join(
            f"<td>{format_number(summary[name])} (n={summary[name + '_count']})</td>" for name in recovery.METRICS
        )
        rows.append(f'<tr class="mean"><td>mean over paintings</td><td>{html.escape(method)}</td>{cells}</tr>')
    head = "".join(f"<th>{_METRIC_TITLES[name]}</th>" for name in recovery.METRICS)
    return (
        f'<table class="metrics"><thead><tr><th>painting</th><th>method</th>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def render_gallery(entries: Sequence[Mapping], title: str = "Hidden-art extraction", max_side: int = 192) -> str:
    """The gallery page (see the module text for its columns)."""
    if not entries:
        raise ValueError("the gallery needs at least one painting")
    if max_side < 1:
        raise ValueError(f"max_side must be positive, got {max_side}")
    for entry in entries:
        _check(entry)
    columns = _columns(entries)
    header = "".join(f"<th>{_header(html.escape(m), kind, band)}</th>" for m, kind, band in columns)
    body = []
    for entry in entries:
        name = html.escape(str(entry["name"]))
        cells = [f'<th class="name">{name}</th>']
        for method, kind, band in columns:
            image = _cell_image(entry, method, kind, band, max_side)
            if image is None:
                cells.append('<td class="missing">-</td>')
                continue
            label = html.escape(f"{entry['name']}: {_header(method, kind, band).replace('<br>', ' ')}")
            h, w = image.shape[:2]
            cells.append(
                f'<td><img src="{png_data_uri(image)}" alt="{label}" title="{label}" width="{w}" height="{h}"></td>'
            )
        body.append(f'<tr class="painting" data-name="{name}">{"".join(cells)}</tr>')
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_CSP}">
<title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 16px; color: #222; background: #fafafa; }}
h1 {{ font-size: 20px; }} h2 {{ font-size: 16px; }}
table {{ border-collapse: collapse; }}
td, th {{ border: 1px solid #ccc; padding: 3px; font-size: 12px; vertical-align: top; }}
.gallery img {{ display: block; image-rendering: pixelated; }}
.missing, .none {{ color: #888; }}
.mean td {{ font-weight: 600; }}
</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
<p>Maps in 'jet' colours (blue = similar, red = different), min-max scaled per painting; per-band
columns share one scale per painting and method; overlays put the map on the blue channel of the
grey RGB; collages colour the band of the largest difference (blue = band 1 ... red = last band),
grey where no band passes the threshold.</p>
<table class="gallery"><thead><tr><th>painting</th>{header}</tr></thead>
<tbody>
{chr(10).join(body)}
</tbody></table>
<h2>Recovery of the hidden layer</h2>
{_metrics_table(entries)}
</body>
</html>
"""


def write_gallery(
    path: str | os.PathLike, entries: Sequence[Mapping], title: str = "Hidden-art extraction", max_side: int = 192
) -> dict[str, int]:
    """Writes `render_gallery(entries, ...)` to `path` atomically; {"paintings", "images"}."""
    text = render_gallery(entries, title, max_side)
    files.write_text_atomic(path, text, "the hidden-art gallery")
    return {"paintings": len(entries), "images": text.count("<img ")}
