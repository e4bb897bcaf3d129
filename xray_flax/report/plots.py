"""Self-contained SVG line plots (ROC curves, learning curves) and the logged scalars they plot.

No plotting library: the figures are a few polylines, and an SVG opens in any browser and
diffs as text. Colours are the Okabe & Ito colour-blind-safe palette, then black and grey.
"""

from __future__ import annotations

import glob
import html
import math
import os
from collections.abc import Sequence

COLOURS = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000", "#999999")

# Tick steps are these times a power of ten, as matplotlib's MaxNLocator picks them: round
# numbers a reader can interpolate between (2.5 keeps quarters, e.g. 0, 2500, 5000).
_NICE_STEPS = (1.0, 2.0, 2.5, 5.0, 10.0)


def nice_step(span: float, max_intervals: int = 7) -> float:
    """The smallest 1, 2, 2.5 or 5 x 10^k step that cuts `span` into at most `max_intervals`."""
    if not span > 0 or not math.isfinite(span):
        raise ValueError(f"the axis span must be positive and finite, got {span}")
    raw = span / max(1, max_intervals)
    magnitude = 10.0 ** math.floor(math.log10(raw))
    # The tolerance keeps a raw step that is already nice (0.2 computed as 0.2000000001) itself.
    return next(m * magnitude for m in _NICE_STEPS if m * magnitude >= raw * (1 - 1e-9))


def nice_ticks(lo: float, hi: float, max_intervals: int = 7) -> list[float]:
    """Round tick values inside [lo, hi]: multiples of `nice_step`, e.g. 0-400 -> 0, 100, ..., 400."""
    if not hi > lo:
        raise ValueError(f"the axis range must be increasing, got {lo}..{hi}")
    step = nice_step(hi - lo, max_intervals)
    first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
    # k * step, rounded to the step's decimals: 3 * 0.1 is 0.30000000000000004 otherwise.
    decimals = max(0, -math.floor(math.log10(step)) + 1)
    return [round(k * step, decimals) + 0.0 for k in range(first, last + 1)]


def format_tick(value: float, ticks: Sequence[float]) -> str:
    """A tick label without trailing zeros: '0.2', '400', and thousands as '2k' / '12.5k' once
    the axis reaches five digits (a training-step axis), where '12500' would crowd its neighbours."""
    largest = max(abs(t) for t in ticks)
    suffix, divisor = ("k", 1000.0) if largest >= 10_000 else ("", 1.0)
    text = f"{value / divisor:.9f}".rstrip("0").rstrip(".")
    return "0" if text in ("0", "-0") else text + suffix


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
    x_ticks, y_ticks = nice_ticks(x0, x1), nice_ticks(y0, y1)
    for tx in x_ticks:
        parts.append(f'<line x1="{x(tx):.1f}" y1="{top + size}" x2="{x(tx):.1f}" y2="{top + size + 4}" stroke="#444"/>')
        parts.append(
            f'<text x="{x(tx):.1f}" y="{top + size + 17}" text-anchor="middle">{format_tick(tx, x_ticks)}</text>'
        )
    for ty in y_ticks:
        parts.append(f'<line x1="{left - 4}" y1="{y(ty):.1f}" x2="{left}" y2="{y(ty):.1f}" stroke="#444"/>')
        parts.append(f'<text x="{left - 7}" y="{y(ty) + 4:.1f}" text-anchor="end">{format_tick(ty, y_ticks)}</text>')
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
