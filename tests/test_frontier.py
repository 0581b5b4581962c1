"""benchmarks.frontier draws the J&F / training-time points it is given, where they belong."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks import frontier

NS = "{http://www.w3.org/2000/svg}"


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.floats(1, 400), st.floats(0.3, 0.95)), min_size=1, max_size=6))
def test_every_point_is_drawn_inside_the_plot_in_order(pts):
    points = [{"label": f"r{i} <&>", "minutes": m, "jf": j} for i, (m, j) in enumerate(pts)]
    svg = ET.fromstring(frontier.render(points, 0.8, 60, "t"))  # well-formed, labels escaped
    dots = svg.findall(f"{NS}circle")
    assert len(dots) == len(points)
    xs = [float(c.get("cx")) for c in dots]
    ys = [float(c.get("cy")) for c in dots]
    assert all(frontier.PAD_L <= v <= frontier.W - frontier.PAD_R for v in xs)
    assert all(frontier.PAD_T <= v <= frontier.H - frontier.PAD_B for v in ys)
    # Longer runs further right, better J&F higher up: never out of order, and apart wherever the
    # drawing can tell them apart. Coordinates are written to 0.1 px; the plot has >= 1.27 px per
    # minute (560 px over at most 1.1 x 400 min) and >= 383 px per unit of J&F (280 px over at most
    # 0.73), so 0.1 min and 0.001 J&F are always more than 0.1 px.
    for i in range(len(points) - 1):
        a, b = points[i], points[i + 1]
        if a["minutes"] < b["minutes"]:
            assert xs[i] <= xs[i + 1]
            if b["minutes"] - a["minutes"] > 0.1:
                assert xs[i] < xs[i + 1]
        if a["jf"] > b["jf"]:
            assert ys[i] <= ys[i + 1]
            if a["jf"] - b["jf"] > 0.001:
                assert ys[i] < ys[i + 1]


def test_runs_closer_than_the_drawing_resolves_stay_in_order():
    """The case hypothesis found: 0.004 min apart is under 0.1 px, one x for both, never reversed."""
    points = [{"label": "a", "minutes": 1.0, "jf": 0.5}, {"label": "b", "minutes": 1.00390625, "jf": 0.5}]
    xs = [float(c.get("cx")) for c in ET.fromstring(frontier.render(points, 0.8, 60, "t")).findall(f"{NS}circle")]
    assert xs[0] <= xs[1]


def test_no_points_is_an_error():
    with pytest.raises(ValueError, match="no points"):
        frontier.render([], 0.8, 60, "t")
