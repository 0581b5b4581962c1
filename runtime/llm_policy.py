"""When a track's LLM answers: on every frame (GLUS), on every k-th frame, or when the scene needs it.

A policy is asked twice per track and frame by tracking.frame_step:
- `before(track, scene)`: a reason to ask the LLM before anything is decoded (the track's first
  frame, its k-th frame, a scene change, too long since the last answer), or None;
- `after(track, score)`: with the mask SAM2 alone gave (memory attention + the decoder prompted
  with the last [SEG]) and its confidence, a reason to throw it away and ask the LLM after all,
  or None to keep it. Only policies with `verifies` are asked this; the others keep the
  decode of every frame in one batch, exactly as before.

`AutoTrigger`'s default thresholds were chosen on the default model's validation split (seeds
616161 and 727272, which neither training nor the held-out set draws from) by
`python -m benchmarks.llm_trigger`; benchmarks/results/llm-trigger-glus-tiny.md has the sweep.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError

SCENE_GRID = 4  # the scene signature: the image feature averaged over a 4 x 4 grid of cells


def scene_signature(image_feat: np.ndarray) -> np.ndarray:
    """A frame's SAM2 image feature [1, C, h, w] averaged over SCENE_GRID x SCENE_GRID cells,
    centred and flattened: what the scene-change cosine compares. SAM2's features are computed
    for every frame anyway (CLIP's are not on frames the LLM skips), so this costs nothing."""
    x = np.asarray(image_feat, np.float32)[0]
    _, h, w = x.shape
    g = min(SCENE_GRID, h, w)
    hs, ws = np.array_split(np.arange(h), g), np.array_split(np.arange(w), g)
    cells = np.stack([x[:, r][:, :, cs].mean(axis=(1, 2)) for r in hs for cs in ws], 1)  # [C, g*g]
    cells -= cells.mean(axis=1, keepdims=True)  # the layout, not the feature's constant part
    return cells.ravel()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    d = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / d) if d > 0 else 1.0


class EveryK:
    """The LLM answers on every k-th query frame of a pass, its first included (k=1: GLUS)."""

    verifies = False
    needs_scene = False

    def __init__(self, k: int):
        self.k = k
        self.name = "every frame" if k == 1 else f"every {k} frames"

    def before(self, track, scene) -> str | None:
        if track.last_seg is None:
            return "first frame" if self.k > 1 else self.name
        return self.name if track.t % self.k == 0 else None

    def after(self, track, score: float) -> str | None:
        return None


@dataclass(frozen=True)
class AutoTrigger:
    """llm_every="auto": SAM2 alone carries the object until one of these says the LLM must look.

    min_score: the decoder's confidence (predicted IoU x object probability) on SAM2's own mask
      is below this;
    max_drop: or it fell by more than this from the confidence of the last frame the LLM saw;
    min_cosine: the scene changed: this frame's scene_signature has a cosine below this to the
      last LLM frame's;
    max_gap: or this many frames went by since the LLM last answered (1 = every frame).
    A new expression always starts with the LLM."""

    # benchmarks/results/llm-trigger-glus-tiny.md: on validation -0.0038 J&F at 59% of frames
    # asked, where llm_every=2 (50%) loses 0.0092; the scene cosine carries most of it.
    min_score: float = 0.3
    max_drop: float = 0.1
    min_cosine: float = 0.8
    max_gap: int = 4

    verifies = True
    needs_scene = True
    name = "auto"

    def __post_init__(self):
        for f in ("min_score", "max_drop"):
            v = getattr(self, f)
            if not (isinstance(v, (int, float)) and 0 <= v <= 1):
                raise InputError(f"AutoTrigger.{f} must lie in [0, 1], got {v!r}")
        if not (isinstance(self.min_cosine, (int, float)) and -1 <= self.min_cosine <= 1):
            raise InputError(f"AutoTrigger.min_cosine must lie in [-1, 1], got {self.min_cosine!r}")
        if isinstance(self.max_gap, bool) or not isinstance(self.max_gap, int) or self.max_gap < 1:
            raise InputError(f"AutoTrigger.max_gap must be a positive integer, got {self.max_gap!r}")

    def before(self, track, scene) -> str | None:
        if track.last_seg is None:
            return "new expression"
        if track.t - track.llm_t >= self.max_gap:
            return f"max gap {self.max_gap}"
        if scene is not None and track.llm_scene is not None:
            c = cosine(scene, track.llm_scene)
            if c < self.min_cosine:
                return f"scene change (cosine {c:.2f} < {self.min_cosine})"
        return None

    def after(self, track, score: float) -> str | None:
        if score < self.min_score:
            return f"confidence {score:.2f} < {self.min_score}"
        if track.llm_score is not None and track.llm_score - score > self.max_drop:
            return f"confidence fell {track.llm_score - score:.2f} from {track.llm_score:.2f}"
        return None


def llm_policy(llm_every):
    """The policy for segment_video's and stream's llm_every: a positive int k, "auto" (the
    default AutoTrigger) or an AutoTrigger with other thresholds."""
    if isinstance(llm_every, AutoTrigger):
        return llm_every
    if llm_every == "auto":
        return AutoTrigger()
    if isinstance(llm_every, bool) or not isinstance(llm_every, (int, np.integer)) or llm_every < 1:
        raise InputError(
            f"llm_every must be a positive integer (1: every frame), 'auto' or an AutoTrigger, got {llm_every!r}"
        )
    return EveryK(int(llm_every))
