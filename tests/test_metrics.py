"""J and F against hand-computed cases, a brute-force reading of the definitions, and properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from evalkit.metrics import (
    boundary_f,
    boundary_measure,
    boundary_tolerance,
    disk,
    region_similarity,
    seg2bmap,
    sequence_scores,
)


def square(h, w, top, left, n):
    m = np.zeros((h, w), dtype=bool)
    m[top : top + n, left : left + n] = True
    return m


# --- brute force, straight from the definitions ------------------------------------------
def brute_bmap(seg):
    """Pixel loop: boundary if it differs from an in-image right, bottom or bottom-right neighbour."""
    h, w = seg.shape
    b = np.zeros((h, w), dtype=bool)
    for y in range(h):
        for x in range(w):
            for dy, dx in ((0, 1), (1, 0), (1, 1)):
                yy, xx = y + dy, x + dx
                if yy < h and xx < w and seg[yy, xx] != seg[y, x]:
                    b[y, x] = True
    return b


def brute_f(gt, pred, radius):
    gb, pb = brute_bmap(gt), brute_bmap(pred)
    gpts, ppts = np.argwhere(gb), np.argwhere(pb)
    if len(gpts) == 0 and len(ppts) == 0:
        return 1.0
    if len(gpts) == 0 or len(ppts) == 0:
        return 0.0  # precision/recall are (1, 0) or (0, 1): F = 0

    def matched(a, b):  # points of a within `radius` (Euclidean) of some point of b
        d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return int((d2.min(1) <= radius * radius).sum())

    p = matched(ppts, gpts) / len(ppts)
    r = matched(gpts, ppts) / len(gpts)
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


# --- tolerance ------------------------------------------------------------------------------
@pytest.mark.parametrize("h,w,expected", [(480, 854, 8), (720, 1280, 12), (100, 100, 2), (1080, 1920, 18)])
def test_tolerance(h, w, expected):
    assert boundary_tolerance(h, w) == expected


def test_pixel_tolerance_passes_through():
    assert boundary_tolerance(480, 854, bound_th=3) == 3


def test_disk_is_true_disk():
    # radius 2: x^2 + y^2 <= 4 keeps the axis tips but not (1, 2)
    expected = np.array(
        [[0, 0, 1, 0, 0], [0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [0, 1, 1, 1, 0], [0, 0, 1, 0, 0]], dtype=np.uint8
    )
    assert np.array_equal(disk(2), expected)
    for r in range(0, 13):
        k = disk(r)
        yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
        assert np.array_equal(k.astype(bool), yy**2 + xx**2 <= r * r)


# --- boundary map -----------------------------------------------------------------------------
def test_seg2bmap_single_pixel():
    m = np.zeros((3, 3), dtype=bool)
    m[1, 1] = True
    expected = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 0]], dtype=bool)
    assert np.array_equal(seg2bmap(m), expected)


def test_seg2bmap_square_is_shifted_outline():
    # A square on rows/cols [a, a+n) has the outline of rows [a-1, a+n-1] x cols [c-1, c+n-1]:
    # outside on the top/left, inside on the bottom/right. 4n pixels.
    m = square(30, 30, 10, 12, 6)
    b = seg2bmap(m)
    outline = np.zeros_like(m)
    outline[9:16, 11:18] = True
    outline[10:15, 12:17] = False
    assert np.array_equal(b, outline)
    assert b.sum() == 4 * 6


def test_full_frame_mask_has_no_boundary():
    full = np.ones((20, 30), dtype=bool)
    assert not seg2bmap(full).any()
    assert boundary_f(full, full) == 1.0
    assert region_similarity(full, full) == 1.0


def test_mask_on_image_border_has_no_boundary_there():
    m = np.zeros((10, 10), dtype=bool)
    m[:, :4] = True  # touches the top, left and bottom borders
    expected = np.zeros_like(m)
    expected[:, 3] = True  # only the inner edge; the last row still compares with its right neighbour
    assert np.array_equal(seg2bmap(m), expected)


def test_seg2bmap_matches_brute_force_on_random_masks():
    rng = np.random.default_rng(1)
    for _ in range(30):
        h, w = rng.integers(1, 12, size=2)
        m = rng.random((h, w)) < 0.5
        assert np.array_equal(seg2bmap(m), brute_bmap(m))


# --- empty masks ------------------------------------------------------------------------------
def test_empty_vs_empty():
    e = np.zeros((40, 50), dtype=bool)
    assert region_similarity(e, e) == 1.0
    assert boundary_f(e, e) == 1.0


@pytest.mark.parametrize("empty_side", ["gt", "pred"])
def test_one_side_empty(empty_side):
    e = np.zeros((40, 50), dtype=bool)
    s = square(40, 50, 10, 10, 8)
    gt, pred = (e, s) if empty_side == "gt" else (s, e)
    assert region_similarity(gt, pred) == 0.0
    f, p, r = boundary_measure(gt, pred)
    assert f == 0.0
    # DAVIS: no predicted boundary -> precision 1, recall 0; no GT boundary -> precision 0, recall 1.
    assert (p, r) == ((0.0, 1.0) if empty_side == "gt" else (1.0, 0.0))


# --- shifted square, hand computed --------------------------------------------------------------
def expected_shift_f(n, k, r):
    """F of an n x n square against itself shifted k pixels sideways, tolerance r, r < k < n - r.

    Both boundaries are (n+1)x(n+1) outlines of 4n pixels. Of the shifted outline:
      top and bottom rows (n+1 each): on the GT row or within r of its end -> n + r - k + 1 matched,
      left column interior (n-1): within r vertically of the GT top/bottom rows -> 2r matched,
      right column interior: k > r from everything -> 0 matched.
    The picture is symmetric, so precision = recall = F.
    """
    return (2 * (n + r - k + 1) + 2 * r) / (4 * n)


@pytest.mark.parametrize(
    "h,w,n,k,expected",
    [
        (100, 100, 40, 3, 84 / 160),
        (100, 100, 40, 5, 80 / 160),
        (100, 100, 40, 10, 70 / 160),
        (480, 854, 100, 9, 216 / 400),
        (480, 854, 100, 20, 194 / 400),
    ],
)
def test_square_shift_beyond_tolerance(h, w, n, k, expected):
    r = boundary_tolerance(h, w)
    assert k > r
    assert expected == pytest.approx(expected_shift_f(n, k, r))
    gt = square(h, w, 20, 20, n)
    pred = square(h, w, 20, 20 + k, n)
    f, p, rec = boundary_measure(gt, pred)
    assert p == pytest.approx(expected)
    assert rec == pytest.approx(expected)
    assert f == pytest.approx(expected)
    assert region_similarity(gt, pred) == pytest.approx((n - k) / (n + k))


@pytest.mark.parametrize("h,w", [(100, 100), (480, 854)])
def test_square_shift_within_tolerance_is_perfect(h, w):
    r = boundary_tolerance(h, w)
    gt = square(h, w, 30, 30, 50)
    for k in range(0, r + 1):
        for dy, dx in ((0, k), (k, 0)):
            assert boundary_f(gt, square(h, w, 30 + dy, 30 + dx, 50)) == 1.0
    assert boundary_f(gt, square(h, w, 30, 30 + r + 1, 50)) < 1.0


def test_matches_brute_force_definition():
    rng = np.random.default_rng(2)
    for _ in range(40):
        h, w = rng.integers(2, 16, size=2)
        gt = rng.random((h, w)) < rng.random()
        pred = rng.random((h, w)) < rng.random()
        radius = int(rng.integers(1, 4))
        assert boundary_f(gt, pred, bound_th=radius) == pytest.approx(brute_f(gt, pred, radius))


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shapes differ"):
        region_similarity(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="shapes differ"):
        boundary_f(np.zeros((4, 4)), np.zeros((5, 4)))


def test_sequence_scores_lengths():
    a = [np.zeros((5, 5), bool)] * 3
    j, f = sequence_scores(a, a)
    assert j.tolist() == [1.0] * 3 and f.tolist() == [1.0] * 3
    with pytest.raises(ValueError, match="3 ground-truth frames but 2"):
        sequence_scores(a, a[:2])


# --- properties -------------------------------------------------------------------------------
masks = st.integers(1, 14).flatmap(
    lambda h: st.integers(1, 14).flatmap(lambda w: st.tuples(arrays(np.bool_, (h, w)), arrays(np.bool_, (h, w))))
)


@settings(max_examples=150, deadline=None)
@given(masks)
def test_j_symmetric_and_bounded(pair):
    a, b = pair
    j = region_similarity(a, b)
    assert j == region_similarity(b, a)
    assert 0.0 <= j <= 1.0


@settings(max_examples=150, deadline=None)
@given(masks)
def test_j_is_one_iff_equal(pair):
    a, b = pair
    assert (region_similarity(a, b) == 1.0) == bool(np.array_equal(a, b))


@settings(max_examples=150, deadline=None)
@given(masks, st.integers(1, 3))
def test_f_bounded_and_symmetric(pair, radius):
    a, b = pair
    f = boundary_f(a, b, bound_th=radius)
    assert 0.0 <= f <= 1.0
    assert f == pytest.approx(boundary_f(b, a, bound_th=radius))


@settings(max_examples=100, deadline=None)
@given(masks)
def test_f_is_one_for_identical_masks(pair):
    a, _ = pair
    assert boundary_f(a, a.copy()) == 1.0
