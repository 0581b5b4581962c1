"""Streaming GLUS for cameras and robots: push frames one by one, get that frame's masks.

GLUS picks its 4 context frames evenly over the whole video, which a live camera does not have.
Causal policy used here (unless fixed `context_frames` are given):
- a pool of at most `pool_size` frames already seen keeps their CLIP tokens, evenly spaced: every
  frame is added while the pool has room; when it overflows, every other pooled frame is dropped
  and the sampling stride doubles (so the pool always spans the whole stream so far);
- the context is GLUS's own rule applied to the pool (rules.context_frame_indices), refreshed at
  each of the first 4 frames, whenever the stream has grown by half since the last refresh
  (frames 6, 9, 14, 21, ...: the context always spans at least 2/3 of what was seen, at a
  logarithmic cost), and every `refresh_every` frames; a refresh re-runs the prefix once (shared
  by all expressions). Frame 1 alone is its own context, as GLUS does for a one-frame video.
  On the default model's held-out set (12-frame videos) the growth rule is worth +0.02 J&F
  (models/glus-tiny/TRAINING.md): a context stuck on frames 1-4 misses the motion.
Everything the stream holds is of fixed size: the prefix KV cache, Q window tokens, the pool,
and one 7-slot memory bank per expression.
"""

from __future__ import annotations

import numpy as np

from . import rules
from .checks import check_frame
from .errors import InputError
from .llm_policy import llm_policy
from .stages import Stages
from .tracking import Track, frame_step


class Stream:
    """Made by GlusEngine.stream; holds the camera's context pool, window, shared prefix and one
    Track (memory bank, past answers) per expression."""

    def __init__(
        self,
        stages: Stages,
        expressions=(),
        *,
        context_frames=None,
        refresh_every: int = 16,
        pool_size: int = 16,
        force_seg: bool = False,
        use_memory: bool = True,
        kv_policy: str = "exact",
        llm_every=1,
        sticky_seg: bool = False,
        batch_llm: bool = False,
    ):
        stages.check_kv_policy(kv_policy)
        self.batch_llm = stages.check_batch_llm(batch_llm, kv_policy)
        self.policy = llm_policy(llm_every)
        self.sticky_seg = bool(sticky_seg)
        if refresh_every < 1:
            raise InputError(f"refresh_every must be >= 1, got {refresh_every}")
        if pool_size < rules.NUM_CONTEXT:
            raise InputError(f"pool_size must be >= {rules.NUM_CONTEXT}, got {pool_size}")
        self.stages = stages
        self.refresh_every = refresh_every
        self.pool_size = pool_size
        self.force_seg = force_seg
        self.use_memory = use_memory
        self.kv_policy = kv_policy
        self.tracks: dict = {}
        self.pool: list[tuple[int, np.ndarray]] = []
        self.stride = 1
        self.frames_seen = 0
        self.refreshed_at = 0  # frames seen at the last context refresh
        self.hw: tuple[int, int] | None = None
        self.prefix = None
        self.fixed_context = context_frames is not None
        # stream positions of the current context frames; None with fixed context_frames (not
        # frames of the stream)
        self.context_indices: list[int] | None = None
        self.last_steps: dict = {}
        if self.fixed_context:
            frames = [check_frame(f) for f in context_frames]
            if len(frames) != rules.NUM_CONTEXT:
                raise InputError(f"context_frames must hold {rules.NUM_CONTEXT} frames, got {len(frames)}")
            self.prefix = stages.prefix(stages.clip_tokens(frames))
        if isinstance(expressions, str):
            expressions = [expressions]
        for e in expressions:
            self.add(e)

    # ---- expressions ---------------------------------------------------------------------
    @property
    def expressions(self) -> list[str]:
        return list(self.tracks)

    def add(self, expression: str) -> None:
        """Start following an expression from the next frame (fresh conversation and memory)."""
        expr = self.stages.check_expression(expression)
        if expression in self.tracks:
            raise InputError(f"expression already in the stream: {expression!r}")
        self.tracks[expression] = Track(expr, self.stages.new_bank(self.use_memory))

    def remove(self, expression: str) -> None:
        if expression not in self.tracks:
            raise InputError(f"expression not in the stream: {expression!r}")
        del self.tracks[expression]

    # ---- context -------------------------------------------------------------------------
    def _update_context(self, index: int, tokens_fn) -> None:
        if index % self.stride == 0:
            self.pool.append((index, tokens_fn()))
            if len(self.pool) > self.pool_size:
                self.stride *= 2
                self.pool = [(i, t) for i, t in self.pool if i % self.stride == 0]
        n = self.frames_seen
        if n <= rules.NUM_CONTEXT or n % self.refresh_every == 0 or 2 * n >= 3 * self.refreshed_at:
            self.refreshed_at = n
            picks = rules.context_frame_indices(len(self.pool))
            self.context_indices = [self.pool[p][0] for p in picks]
            self.prefix = self.stages.prefix(np.stack([self.pool[p][1] for p in picks]))

    # ---- frames --------------------------------------------------------------------------
    def push(self, frame, sam_features: list[np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """The masks (bool, frame size) of this frame for every expression in the stream.

        sam_features: this frame's SAM2 features if already computed (its row of
        GlusEngine.encode_frames: a server encodes its cameras' frames in one call).
        A bad frame raises InputError and leaves the stream as it was.
        """
        stages = self.stages
        frame = check_frame(frame)
        if sam_features is not None:
            _check_sam_features(sam_features, stages)
        hw = frame.shape[:2]
        if self.hw is not None and hw != self.hw:
            raise InputError(f"frame size changed mid-stream from {self.hw} to {hw}")
        self.hw = hw
        index = self.frames_seen
        self.frames_seen += 1
        cache: dict = {} if sam_features is None else {"sam": list(sam_features)}

        def tokens_fn():
            if "clip" not in cache:
                cache["clip"] = stages.clip_tokens([frame])[0]
            return cache["clip"]

        def feats_fn():
            if "sam" not in cache:
                cache["sam"] = stages.sam_features(frame)
            return cache["sam"]

        # A frame's CLIP tokens are computed only when read: for the context pool (every
        # stride-th frame) or by a track whose LLM answers on it.
        if not self.fixed_context:
            self._update_context(index, tokens_fn)
        tracks = list(self.tracks.values())
        steps = frame_step(
            stages,
            tracks,
            index,
            frame,
            feats_fn,
            tokens_fn,
            self.prefix,
            self.force_seg,
            details=False,
            kv_policy=self.kv_policy,
            policy=self.policy,
            sticky_seg=self.sticky_seg,
            batch_llm=self.batch_llm,
        )
        masks, self.last_steps = {}, {}
        for name, (mask, info) in zip(self.tracks, steps):
            masks[name] = mask
            self.last_steps[name] = info
        return masks

    def state_nbytes(self) -> dict[str, int]:
        """Bytes held per kind of state: flat over a stream of any length."""
        return {
            "prefix_kv": 0 if self.prefix is None else self.prefix.nbytes,
            "window": int(sum(t.nbytes for tr in self.tracks.values() for t in tr.window)),
            "pool": int(sum(t.nbytes for _, t in self.pool)),
            "memory": int(sum(tr.bank.nbytes for tr in self.tracks.values() if tr.bank is not None)),
            "track_kv": int(sum(tr.kv.nbytes for tr in self.tracks.values() if tr.kv is not None)),
        }


def _check_sam_features(feats, stages: Stages) -> None:
    """Features handed to push must be one frame's three levels at the engine's sizes."""
    hw = [tuple(x) for x in stages.c["sam"]["feat_sizes"]]
    shapes = [getattr(f, "shape", None) for f in feats] if isinstance(feats, (list, tuple)) else None
    if shapes is None or len(shapes) != 3 or any(s is None or len(s) != 4 or s[0] != 1 for s in shapes):
        raise InputError(f"sam_features must be one frame's 3 feature maps [1, C, h, w], got shapes {shapes}")
    dtypes = {str(getattr(f, "dtype", None)) for f in feats}
    if dtypes != {"float32"}:
        raise InputError(f"sam_features must be float32, got {sorted(dtypes)}")
    if [tuple(s[2:]) for s in shapes] != hw:
        raise InputError(f"sam_features have sizes {[tuple(s[2:]) for s in shapes]}, the engine's are {hw}")
