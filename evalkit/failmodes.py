"""How a segmenter fails on targets that have a look-alike twin (same colour, same shape; only
the motion tells them apart): per frame, is the mask on the target, on the twin, on both, or
elsewhere? J&F says how much is lost; this says what kind of mistake loses it. torch-free.

Also a linear read-out test for an embedding (e.g. GLUS's [SEG]): does it know *where* the
target is, as opposed to its twin? (`pick_by_probe`.)
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .metrics import region_similarity

OUTCOMES = ("right", "merge", "swap", "other", "miss")  # "absent" frames are not counted


def frame_outcome(pred: np.ndarray, target: np.ndarray, twin: np.ndarray, thr: float = 0.5) -> str:
    """One frame's mask against the target's and the twin's ground truth (bool H x W each):
    "absent" (target or twin not visible: nothing to tell apart), "miss" (empty mask), "merge"
    (covers >= thr of both objects), "right" (IoU with the target >= thr), "swap" (IoU with the
    twin >= thr), "other". Merge is tested first: a mask over both twins has IoU >= 0.5 with
    the larger one, and would otherwise count as right whenever the target is the larger."""
    pred, target, twin = (np.asarray(x, bool) for x in (pred, target, twin))
    if not target.any() or not twin.any():
        return "absent"
    if not pred.any():
        return "miss"
    if (pred & target).sum() >= thr * target.sum() and (pred & twin).sum() >= thr * twin.sum():
        return "merge"
    if region_similarity(target, pred) >= thr:
        return "right"
    if region_similarity(twin, pred) >= thr:
        return "swap"
    return "other"


@dataclass(frozen=True)
class TwinCase:
    """A single-target expression whose target has a twin with its own single-target expression
    (whose ground truth is then the twin's mask)."""

    split: str
    video: str
    exp_id: str
    twin_exp_id: str
    target_xy: np.ndarray  # [T, 2] (x, y) centre per frame, from the generator
    twin_xy: np.ndarray


def twin_cases(root: str | Path, split: str) -> list[TwinCase]:
    """Every TwinCase of an evalkit.synth set (MeViS layout with synth_meta.json)."""
    meta = json.loads((Path(root) / split / "synth_meta.json").read_text())
    out = []
    for video, v in meta["videos"].items():
        objs = {o["obj_id"]: o for o in v["objects"]}
        single = {}
        for exp_id, e in v["expressions"].items():
            if len(e["obj_ids"]) == 1:
                single.setdefault(e["obj_ids"][0], exp_id)
        for exp_id, e in v["expressions"].items():
            if len(e["obj_ids"]) != 1:
                continue
            t = objs[e["obj_ids"][0]]
            twins = [
                o
                for o in objs.values()
                if o["obj_id"] != t["obj_id"]
                and (o["colour"], o["shape"]) == (t["colour"], t["shape"])
                and o["obj_id"] in single
            ]
            if twins:
                out.append(
                    TwinCase(
                        split,
                        video,
                        exp_id,
                        single[twins[0]["obj_id"]],
                        np.asarray(t["trajectory"], np.float32),
                        np.asarray(twins[0]["trajectory"], np.float32),
                    )
                )
    return out


def summarize(outcomes: list[list[str]]) -> dict:
    """outcomes[case][frame] → {"frames": n counted, share of each OUTCOMES, "by_frame": {outcome:
    [share at frame index k, ...]}} (absent frames left out of every share)."""
    flat = [o for case in outcomes for o in case if o != "absent"]
    n = len(flat)
    counts = Counter(flat)
    out = {"frames": n, **{k: counts[k] / n if n else 0.0 for k in OUTCOMES}}
    longest = max((len(c) for c in outcomes), default=0)
    by_frame = {k: [] for k in OUTCOMES}
    for f in range(longest):
        col = [c[f] for c in outcomes if f < len(c) and c[f] != "absent"]
        for k in OUTCOMES:
            by_frame[k].append(col.count(k) / len(col) if col else float("nan"))
    out["by_frame"] = by_frame
    return out


def pick_by_probe(
    x: np.ndarray, target_xy: np.ndarray, twin_xy: np.ndarray, groups: np.ndarray, alpha: float = 100.0
) -> np.ndarray:
    """bool [N]: does a ridge regression from the embedding x [N, D] to the target's centre put
    its point nearer the target than the twin? Cross-fitted: each group's rows (e.g. a split)
    are predicted by a fit on all the other groups, so no row is scored by a fit that saw it."""
    x, target_xy, twin_xy = (np.asarray(a, np.float64) for a in (x, target_xy, twin_xy))
    groups = np.asarray(groups)
    if len(np.unique(groups)) < 2:
        raise ValueError("pick_by_probe needs at least two groups to cross-fit")
    pred = np.empty_like(target_xy)
    for g in np.unique(groups):
        tr, te = groups != g, groups == g
        mx, my = x[tr].mean(0), target_xy[tr].mean(0)
        xc = x[tr] - mx
        w = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ (target_xy[tr] - my))
        pred[te] = (x[te] - mx) @ w + my
    return np.linalg.norm(pred - target_xy, axis=1) < np.linalg.norm(pred - twin_xy, axis=1)
