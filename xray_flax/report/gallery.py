"""Patch gallery like the paper's Fig. 6: input | reconstruction | anomaly map | truth."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

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
) -> tuple[int, int]:
    """Writes a PNG grid, one row per patch, and returns its (width, height).

    Args:
      images, reconstructions: [N, H, W, C] in [0, 1]; reconstructions None (a detector
        without one) drops that column.
      maps: [N, H, W(, 1)] anomaly maps in [0, 1] (colour-mapped).
      masks: optional [N, H, W(, 1)] ground truth; adds a column when given.
      max_rows: the first `max_rows` patches are drawn.
      row_labels: optional text per row (e.g. "label 1, score 0.93").
      cell_size: side in pixels of each drawn patch.
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
    width = label_w + len(headers) * (cell_size + _GAP) + _GAP
    height = header_h + rows * (cell_size + _GAP) + _GAP
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for column, header in enumerate(headers):
        x = label_w + _GAP + column * (cell_size + _GAP) + cell_size // 2
        draw.text((x, header_h // 2), header, fill="black", font=text, anchor="mm")
    for row in range(rows):
        cells = [_rgb(images[row])]
        if reconstructions is not None:
            cells.append(_rgb(reconstructions[row]))
        cells.append(overlay.apply_colormap(_squeeze_map(maps[row]), colormap))
        if masks is not None:
            cells.append(_rgb(_squeeze_map(masks[row])))
        y = header_h + row * (cell_size + _GAP)
        for column, cell in enumerate(cells):
            tile = Image.fromarray(cell).resize((cell_size, cell_size), Image.Resampling.BILINEAR)
            canvas.paste(tile, (label_w + _GAP + column * (cell_size + _GAP), y))
        if row_labels is not None:
            draw.text((_GAP, y + cell_size // 2), str(row_labels[row]), fill="black", font=text, anchor="lm")
    canvas.save(path, format="PNG")
    return width, height
