"""How far a runtime variant's answers are from the reference loop's, frame by frame.

The benchmark models are random: their masks mean nothing against the ground truth, so J&F
against the GT is near meaningless today. What the engine must not do is change the answers:
J&F against the reference's own masks (the reference as GT), per-frame mask IoU, and the cosine
of the [SEG] embeddings are the real figures.
"""

from __future__ import annotations

import numpy as np

from evalkit.metrics import sequence_scores

# Documented bounds, asserted by the benchmarks.
FP32_IOU = 0.999  # fp32 engine vs reference: mask IoU at least this ...
FP32_IOU_FRAC = 0.99  # ... on at least this fraction of frames
INT8_SEG_COSINE = 0.99  # int8 engine vs reference: every [SEG] embedding cosine at least this


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def jf(gts, preds) -> dict:
    """J, F and J&F of one expression (means over its frames), as MeViS scores it."""
    j, f = sequence_scores(gts, preds)
    return {"J": float(j.mean()), "F": float(f.mean()), "JF": float((j.mean() + f.mean()) / 2)}


def compare(ref_masks, ref_segs, masks, segs, gts=None) -> dict:
    """One expression: a variant against the reference (and the GT, when given)."""
    ious = [mask_iou(a, b) for a, b in zip(ref_masks, masks)]
    cos = [cosine(a, b) for a, b in zip(ref_segs, segs)]
    out = {
        "frames": len(ious),
        "iou": ious,
        "iou_mean": float(np.mean(ious)),
        "iou_min": min(ious),
        "frac_iou_ok": float(np.mean([v >= FP32_IOU for v in ious])),
        "seg_cosine": cos,
        "seg_cosine_min": min(cos),
        "seg_cosine_mean": float(np.mean(cos)),
        "vs_reference": jf(ref_masks, masks),
        "empty_frames": int(sum(not m.any() for m in masks)),
    }
    if gts is not None:
        out["vs_gt"] = jf(gts, masks)
    return out


def summarize(per_expression: list[dict], ref_vs_gt: list[dict] | None = None) -> dict:
    """Means over expressions; ΔJ&F = variant's J&F vs GT minus the reference's."""
    ious = [v for e in per_expression for v in e["iou"]]
    cos = [v for e in per_expression for v in e["seg_cosine"]]
    out = {
        "expressions": len(per_expression),
        "frames": len(ious),
        "JF_vs_reference": float(np.mean([e["vs_reference"]["JF"] for e in per_expression])),
        "iou_mean": float(np.mean(ious)),
        "iou_min": float(np.min(ious)),
        "frac_frames_iou_ge_0.999": float(np.mean([v >= FP32_IOU for v in ious])),
        "seg_cosine_min": float(np.min(cos)),
        "seg_cosine_mean": float(np.mean(cos)),
    }
    if ref_vs_gt is not None and all("vs_gt" in e for e in per_expression):
        out["JF_vs_gt"] = float(np.mean([e["vs_gt"]["JF"] for e in per_expression]))
        out["reference_JF_vs_gt"] = float(np.mean([r["JF"] for r in ref_vs_gt]))
        out["delta_JF_vs_reference"] = out["JF_vs_gt"] - out["reference_JF_vs_gt"]
    return out
