"""Held-out evaluation of a trained checkpoint: reference.segment_video, scored with evalkit."""

from __future__ import annotations

import torch

from evalkit.heldout import score
from reference.inference import segment_video
from reference.loader import load


def evaluate_checkpoint(
    glus_dir,
    clip_dir,
    data: list[tuple[str, str]],
    *,
    use_memory: bool = True,
    threads: int = 2,
    progress: bool = False,
    limit: int | None = None,
) -> dict:
    """J&F of reference.segment_video (offline, GLUS's loop) on held-out MeViS-layout sets."""
    torch.set_num_threads(threads)
    ref = load(glus_dir, clip_dir)
    counts = {"seg": 0, "steps": 0}

    def segment(frames, texts):
        out = []
        for text in texts:
            res = segment_video(ref, frames, text, use_memory=use_memory)
            counts["seg"] += sum(r.is_seg for r in res.frames)
            counts["steps"] += len(res.frames)
            out.append(res.masks)
        return out

    r = score(segment, data, limit=limit, progress=progress, desc="reference")
    r["seg_token_rate"] = counts["seg"] / max(1, counts["steps"])
    return r
