"""SVG line plots: round tick values and short labels."""

from __future__ import annotations

import re

import pytest

from xray_flax.report import plots


@pytest.mark.parametrize(
    "lo, hi, expected",
    [
        (0, 400, [0, 100, 200, 300, 400]),
        (0, 1, [0, 0.2, 0.4, 0.6, 0.8, 1]),
        (0, 12345, [0, 2000, 4000, 6000, 8000, 10000, 12000]),
        (0.4, 1.0, [0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]),
        (0, 2000, [0, 500, 1000, 1500, 2000]),
        (0, 10, [0, 2, 4, 6, 8, 10]),
        (-1, 1, [-1, -0.5, 0, 0.5, 1]),
        (0, 0.003, [0, 0.0005, 0.001, 0.0015, 0.002, 0.0025, 0.003]),
        (0, 17500, [0, 2500, 5000, 7500, 10000, 12500, 15000, 17500]),
        (3, 3.5, [3, 3.1, 3.2, 3.3, 3.4, 3.5]),
    ],
)
def test_nice_ticks_are_round_multiples_inside_the_range(lo, hi, expected):
    # Exact equality: the values are rounded to the step, so 0.6 is 0.6, not 0.6000000000000001.
    assert plots.nice_ticks(lo, hi) == expected


def test_nice_ticks_reject_empty_ranges():
    with pytest.raises(ValueError, match="increasing"):
        plots.nice_ticks(1, 1)


@pytest.mark.parametrize(
    "lo, hi, labels",
    [
        (0, 400, ["0", "100", "200", "300", "400"]),
        (0, 1, ["0", "0.2", "0.4", "0.6", "0.8", "1"]),
        (0, 12345, ["0", "2k", "4k", "6k", "8k", "10k", "12k"]),
        (0, 17500, ["0", "2.5k", "5k", "7.5k", "10k", "12.5k", "15k", "17.5k"]),
        (-1, 1, ["-1", "-0.5", "0", "0.5", "1"]),
    ],
)
def test_tick_labels_have_no_trailing_zeros(lo, hi, labels):
    ticks = plots.nice_ticks(lo, hi)
    assert [plots.format_tick(t, ticks) for t in ticks] == labels


def test_learning_curve_svg_labels_steps_as_integers():
    svg = plots.line_plot_svg(
        [("run", 0, [100, 200, 300, 400], [0.9, 0.92, 0.5, 0.99])], "training step", "ROC-AUC", (0, 400), (0.4, 1.0)
    )
    labels = re.findall(r'text-anchor="(?:middle|end)">([^<]*)</text>', svg)
    assert labels[:5] == ["0", "100", "200", "300", "400"]
    assert labels[5:12] == ["0.4", "0.5", "0.6", "0.7", "0.8", "0.9", "1"]
    assert "400.000" not in svg and "0.400" not in svg
