"""Patch gallery like the paper's Fig. 6: input | reconstruction | anomaly map | truth."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from xray_flax import files
from xray_flax.report import overlay

_GAP = 4


def _rgb(image: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] of an image in [0, 1] ([H, W], [H, W, 1] or [H, W, 3]), clipped.

    Input and reconstruction are shown on the same fixed [0, 1] scale (no per-image
    stretch) so their differences are the model's, not the display's.
    """
    image = np.asarray(image, np.float32)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 3 and image.shape[-1] != 3:
        image = image[..., 0]
    image = np.round(np.clip(np.nan_to_num(image), 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image


def _squeeze_map(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array, np.float32)
    return array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array


_CAPTION_H = 20
_LABEL_NAMES = {1: "anomalous", 0: "normal"}


def row_caption(score: float, label: int, threshold: float | None) -> tuple[str, str]:
    """(text, colour) under a row: its score, the ground truth and the prediction at the
    threshold; green when they agree, red when they do not, black without a truth or threshold."""
    truth = _LABEL_NAMES.get(int(label), "unlabelled")
    text = f"score {score:.3f}   truth: {truth}"
    if threshold is None:
        return text, "black"
    predicted = int(score >= threshold)
    text += f"   predicted: {_LABEL_NAMES[predicted]} (score {'>=' if predicted else '<'} {threshold:.3f})"
    if int(label) not in _LABEL_NAMES:
        return text, "black"
    return text, ("#107010" if predicted == int(label) else "#c01010")


def write_patch_gallery(
    path: str | os.PathLike,
    images: np.ndarray,
    reconstructions: np.ndarray | None,
    maps: np.ndarray,
    masks: np.ndarray | None = None,
    max_rows: int = 8,
    colormap: str = "inferno",
    row_labels: Sequence[str] | None = None,
    cell_size: int = 192,
    scores: Sequence[float] | None = None,
    labels: Sequence[int] | None = None,
    threshold: float | None = None,
    normal_level: float | None = None,
) -> tuple[int, int]:
    """Writes a PNG grid, one row per patch, with the maps' colour bar; returns its (width, height).

    Args:
      images, reconstructions: [N, H, W, C] in [0, 1]; reconstructions None (a detector
        without one) drops that column.
      maps: [N, H, W(, 1)] anomaly maps in [0, 1] (colour-mapped).
      masks: optional [N, H, W(, 1)] ground truth; adds a column when given.
      max_rows: the first `max_rows` patches are drawn.
      row_labels: optional text per row, left of it.
      cell_size: side in pixels of each drawn patch.
      scores, labels: optional per-patch score and ground truth (1, 0, -1 unknown), written
        under each row with the prediction at `threshold`.
      threshold, normal_level: marked on the colour bar when given (the tile threshold and
        what normal tiles' maps reach).
    """
    n = len(images)
    if (
        (reconstructions is not None and len(reconstructions) != n)
        or len(maps) != n
        or (masks is not None and len(masks) != n)
    ):
        raise ValueError(
            f"images ({n}), reconstructions ({None if reconstructions is None else len(reconstructions)}), "
            f"maps ({len(maps)})"
            + (f" and masks ({len(masks)})" if masks is not None else "")
            + " must have the same length"
        )
    if n == 0:
        raise ValueError("no patches to draw")
    rows = min(n, max_rows)
    headers = (
        ["input"]
        + (["reconstruction"] if reconstructions is not None else [])
        + ["anomaly map"]
        + (["ground truth"] if masks is not None else [])
    )
    text = overlay.font(14)
    label_w = 0
    if row_labels is not None:
        label_w = max(int(text.getlength(str(label))) for label in row_labels[:rows]) + 2 * _GAP
    header_h = 22
    caption_h = _CAPTION_H if scores is not None else 0
    row_h = cell_size + caption_h + _GAP
    grid_w = label_w + len(headers) * (cell_size + _GAP) + _GAP
    marks = [(v, name) for v, name in ((normal_level, "normal"), (threshold, "threshold")) if v is not None]
    bar = overlay.colorbar(min(rows * row_h, 600), colormap, marks=marks)
    width = grid_w + bar.width
    height = max(header_h + rows * row_h + _GAP, header_h + bar.height)
    canvas = Image.new("RGB", (width, height), "white")
    canvas.paste(bar, (grid_w, header_h))
    draw = ImageDraw.Draw(canvas)
    for column, header in enumerate(headers):
        x = label_w + _GAP + column * (cell_size + _GAP) + cell_size // 2
        draw.text((x, header_h // 2), header, fill="black", font=text, anchor="mm")
    draw.text((grid_w + _GAP, header_h // 2), "map value", fill="black", font=text, anchor="lm")
    for row in range(rows):
        cells = [_rgb(images[row])]
        if reconstructions is not None:
            cells.append(_rgb(reconstructions[row]))
        cells.append(overlay.apply_colormap(_squeeze_map(maps[row]), colormap))
        if masks is not None:
            cells.append(_rgb(_squeeze_map(masks[row])))
        y = header_h + row * row_h
        for column, cell in enumerate(cells):
            tile = Image.fromarray(cell).resize((cell_size, cell_size), Image.Resampling.BILINEAR)
            canvas.paste(tile, (label_w + _GAP + column * (cell_size + _GAP), y))
        if row_labels is not None:
            draw.text((_GAP, y + cell_size // 2), str(row_labels[row]), fill="black", font=text, anchor="lm")
        if scores is not None:
            label = -1 if labels is None else int(labels[row])
            caption, colour = row_caption(float(scores[row]), label, threshold)
            draw.text((label_w + _GAP, y + cell_size + caption_h // 2), caption, fill=colour, font=text, anchor="lm")
    with files.atomic_output(path, "the patch gallery") as tmp:
        canvas.save(tmp, format="PNG")
    return width, height
