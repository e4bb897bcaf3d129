"""Self-contained SVG line plots (ROC curves, learning curves) and the logged scalars they plot.

No plotting library: the figures are a few polylines, and an SVG opens in any browser and
diffs as text. Colours are the Okabe & Ito colour-blind-safe palette, then black and grey.
"""

from __future__ import annotations

import glob
import html
import os
from collections.abc import Sequence

import numpy as np

from xray_flax.report import tables

COLOURS = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000", "#999999")


def line_plot_svg(
    lines: Sequence[tuple[str, int, Sequence[float], Sequence[float]]],
    x_label: str,
    y_label: str,
    x_range: tuple[float, float],
    y_range: tuple[float, float] = (0.0, 1.0),
    diagonal: bool = False,
) -> str:
    """An SVG of polylines: (legend label or '' for none, colour index, xs, ys) each.

    Lines sharing a colour index share a colour (the seeds of one setting); a label of '' adds
    no legend entry. `diagonal` draws the chance line of a ROC plot."""
    size, left, top, right = 360, 56, 24, 250
    width, height = left + size + right, top + size + 56
    (x0, x1), (y0, y1) = x_range, y_range

    def x(v):
        return left + (float(v) - x0) / max(x1 - x0, 1e-12) * size

    def y(v):
        return top + (1.0 - (float(v) - y0) / max(y1 - y0, 1e-12)) * size

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>',
        f'<rect x="{left}" y="{top}" width="{size}" height="{size}" fill="none" stroke="#444"/>',
    ]
    if diagonal:
        parts.append(
            f'<line x1="{x(x0)}" y1="{y(y0)}" x2="{x(x1)}" y2="{y(y1)}" stroke="#bbb" stroke-dasharray="4 4"/>'
        )
    for tick in np.linspace(0, 1, 6):
        tx, ty = x0 + tick * (x1 - x0), y0 + tick * (y1 - y0)
        parts.append(
            f'<text x="{x(tx):.1f}" y="{top + size + 16}" text-anchor="middle">{tables.format_number(tx, 3)}</text>'
        )
        parts.append(f'<text x="{left - 6}" y="{y(ty) + 4:.1f}" text-anchor="end">{tables.format_number(ty, 3)}</text>')
    parts.append(
        f'<text x="{left + size / 2}" y="{top + size + 36}" text-anchor="middle">{html.escape(x_label)}</text>'
    )
    parts.append(
        f'<text x="14" y="{top + size / 2}" text-anchor="middle" '
        f'transform="rotate(-90 14 {top + size / 2})">{html.escape(y_label)}</text>'
    )
    legend = 0
    for label, colour_index, xs, ys in lines:
        colour = COLOURS[colour_index % len(COLOURS)]
        points = " ".join(f"{x(a):.1f},{y(b):.1f}" for a, b in zip(xs, ys))
        parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="1.8"/>')
        if not label:
            continue
        legend_y = top + 14 + 18 * legend
        legend += 1
        parts.append(
            f'<line x1="{left + size + 14}" y1="{legend_y - 4}" x2="{left + size + 34}" y2="{legend_y - 4}" '
            f'stroke="{colour}" stroke-width="3"/>'
        )
        parts.append(f'<text x="{left + size + 40}" y="{legend_y}">{html.escape(label)}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def logged_scalars(workdir: str | os.PathLike, tag: str) -> dict[int, float]:
    """{step: value} of one scalar from the TensorBoard event files in `workdir` (a resumed run's
    later files override its earlier ones at the same step)."""
    # Imported late: tensorboard is slow to import, and only plotting reads event files.
    from tensorboard.backend.event_processing import event_file_loader  # noqa: PLC0415
    from tensorboard.util import tensor_util  # noqa: PLC0415

    values = {}
    for path in sorted(glob.glob(os.path.join(os.fspath(workdir), "events.out.tfevents.*"))):
        for event in event_file_loader.EventFileLoader(path).Load():
            for value in event.summary.value:
                if value.tag != tag:
                    continue
                # TensorFlow's and xray_flax.summary's writers store a tensor; older writers
                # (tf.compat.v1, tensorboardX) a simple_value.
                if value.WhichOneof("value") == "simple_value":
                    values[int(event.step)] = float(value.simple_value)
                else:
                    values[int(event.step)] = float(tensor_util.make_ndarray(value.tensor))
    return values
