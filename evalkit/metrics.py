"""Region (J) and boundary (F) measures as defined by the DAVIS-2017 / MeViS tools.

Written from the definitions:
  J: intersection over union of the two masks; both empty scores 1.
  F: boundary F-measure. Boundaries come from `seg2bmap`; a predicted boundary pixel
     counts as matched when a ground-truth boundary pixel lies inside a disk of radius
     `ceil(bound_th * diagonal)` around it (and vice versa for recall).
Masks are 2-D arrays; any non-zero value is foreground (as the official tools do).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

BOUND_TH = 0.008


def _as_bool(mask: np.ndarray, name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{name} must be a 2-D mask, got shape {mask.shape}")
    return mask.astype(bool, copy=False)


def _check_same_shape(gt: np.ndarray, pred: np.ndarray) -> None:
    if gt.shape != pred.shape:
        raise ValueError(f"mask shapes differ: ground truth {gt.shape}, prediction {pred.shape}")


def region_similarity(gt: np.ndarray, pred: np.ndarray) -> float:
    """J: |gt & pred| / |gt | pred|, 1.0 when both masks are empty."""
    gt = _as_bool(gt, "ground truth")
    pred = _as_bool(pred, "prediction")
    _check_same_shape(gt, pred)
    union = np.count_nonzero(gt | pred)
    if union == 0:
        return 1.0
    return np.count_nonzero(gt & pred) / union


def boundary_tolerance(height: int, width: int, bound_th: float = BOUND_TH) -> int:
    """Matching radius in pixels: bound_th as a fraction of the image diagonal, rounded up.

    A bound_th >= 1 is already a pixel count (DAVIS convention).
    """
    if bound_th >= 1:
        return int(bound_th)
    return math.ceil(bound_th * math.hypot(height, width))


def disk(radius: int) -> np.ndarray:
    """True disk structuring element: offsets (y, x) with y^2 + x^2 <= radius^2 (skimage `disk`)."""
    r = int(radius)
    y, x = np.ogrid[-r : r + 1, -r : r + 1]
    return (x * x + y * y <= r * r).astype(np.uint8)


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """DAVIS boundary map of a binary mask.

    A pixel is boundary when it differs from its right, bottom or bottom-right neighbour.
    Outside the image is not a neighbour: the last column only compares with the pixel
    below, the last row only with the pixel to the right, and the bottom-right corner is
    never boundary. Hence a mask touching the image border has no boundary along it.
    """
    seg = _as_bool(seg, "mask")
    h, w = seg.shape
    b = np.zeros((h, w), dtype=bool)
    right = seg[:, :-1] != seg[:, 1:]  # (h, w-1)
    down = seg[:-1, :] != seg[1:, :]  # (h-1, w)
    diag = seg[:-1, :-1] != seg[1:, 1:]  # (h-1, w-1)
    # Interior pixels (not last row/column): any of the three neighbours differs.
    b[:-1, :-1] = right[:-1, :] | down[:, :-1] | diag
    # Last row: only the right neighbour exists.
    b[-1, :-1] = right[-1, :]
    # Last column: only the bottom neighbour exists.
    b[:-1, -1] = down[:, -1]
    b[-1, -1] = False
    return b


def _dilate(bmap: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    # cv2's default border for dilation never adds foreground, so this is a plain binary dilation.
    return cv2.dilate(bmap.astype(np.uint8), kernel).astype(bool)


def boundary_measure(gt: np.ndarray, pred: np.ndarray, bound_th: float = BOUND_TH) -> tuple[float, float, float]:
    """(F, precision, recall) of the predicted boundary against the ground-truth boundary."""
    gt = _as_bool(gt, "ground truth")
    pred = _as_bool(pred, "prediction")
    _check_same_shape(gt, pred)
    radius = boundary_tolerance(*gt.shape, bound_th=bound_th)
    gt_b = seg2bmap(gt)
    pred_b = seg2bmap(pred)
    n_gt = int(np.count_nonzero(gt_b))
    n_pred = int(np.count_nonzero(pred_b))

    # DAVIS edge cases when a boundary is empty.
    if n_pred == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    elif n_pred == 0:
        precision, recall = 1.0, 0.0
    elif n_gt == 0:
        precision, recall = 0.0, 1.0
    else:
        # Work on the bounding box of both boundaries grown by the radius: dilation far from
        # any boundary pixel is zero, so the crop gives the same counts, much faster.
        ys, xs = np.nonzero(gt_b | pred_b)
        y0, y1 = max(ys.min() - radius, 0), min(ys.max() + radius + 1, gt.shape[0])
        x0, x1 = max(xs.min() - radius, 0), min(xs.max() + radius + 1, gt.shape[1])
        gt_c = gt_b[y0:y1, x0:x1]
        pred_c = pred_b[y0:y1, x0:x1]
        kernel = disk(radius)
        precision = np.count_nonzero(pred_c & _dilate(gt_c, kernel)) / n_pred
        recall = np.count_nonzero(gt_c & _dilate(pred_c, kernel)) / n_gt

    if precision + recall == 0:
        return 0.0, float(precision), float(recall)
    f = 2 * precision * recall / (precision + recall)
    return float(f), float(precision), float(recall)


def boundary_f(gt: np.ndarray, pred: np.ndarray, bound_th: float = BOUND_TH) -> float:
    """F: boundary F-measure of one frame."""
    return boundary_measure(gt, pred, bound_th)[0]


def frame_scores(gt: np.ndarray, pred: np.ndarray, bound_th: float = BOUND_TH) -> tuple[float, float]:
    """(J, F) of one frame."""
    return region_similarity(gt, pred), boundary_f(gt, pred, bound_th)


def sequence_scores(gts, preds, bound_th: float = BOUND_TH) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame J and F arrays over two equally long sequences of masks."""
    gts = list(gts)
    preds = list(preds)
    if len(gts) != len(preds):
        raise ValueError(f"{len(gts)} ground-truth frames but {len(preds)} predicted frames")
    j = np.array([region_similarity(g, p) for g, p in zip(gts, preds)], dtype=np.float64)
    f = np.array([boundary_f(g, p, bound_th) for g, p in zip(gts, preds)], dtype=np.float64)
    return j, f
