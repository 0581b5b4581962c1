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
    for i in range(len(points) - 1):  # longer runs further right, better J&F higher up
        a, b = points[i], points[i + 1]
        if a["minutes"] < b["minutes"]:
            assert xs[i] < xs[i + 1]
        if a["jf"] > b["jf"]:
            assert ys[i] < ys[i + 1]


def test_no_points_is_an_error():
    with pytest.raises(ValueError, match="no points"):
        frontier.render([], 0.8, 60, "t")
