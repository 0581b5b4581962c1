"""`GlusEngine`: GLUS inference from an engine directory, without PyTorch.

Same answers as the reference loop (reference/inference.py), far less work per frame:
- the prompt part before the first query frame (system, 4 context images, context sentence)
  is run through the LLM once per video and context set, shared by every frame and every
  expression; each frame runs only its window's tokens on top of that KV cache;
- each frame is CLIP-encoded once and SAM2-encoded once per call, whatever the number of
  expressions and passes;
- each expression's SAM2 memory bank has a fixed number of slots (runtime/memory.py).

The stages (one per graph) are runtime/stages.py's, one expression's state and its one-frame
step runtime/tracking.py's; this module plans the passes of a video.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import rules
from .checks import check_frame, check_key_frames
from .errors import BackendError, EngineDirError, InputError
from .llm_policy import AutoTrigger, llm_policy
from .manifest import Manifest
from .stages import Stages
from .stream import Stream
from .tracking import FrameEncodings, StepInfo, Track, frame_step


@dataclass
class ExpressionResult:
    expression: str
    masks: list[np.ndarray]  # bool, one per frame, at the frame's own size
    steps: list[StepInfo]  # per frame, the step that produced its mask
    key_frame: int = 0


class GlusEngine:
    """An engine directory, ready to segment videos and streams."""

    def __init__(self, stages: Stages):
        self._stages = stages

    @classmethod
    def load(
        cls,
        engine_dir: str | Path,
        backend: str = "auto",
        device: str = "cpu",
        threads: int | None = None,
        verify: bool = True,
        spin: bool = False,
        io_binding: bool | None = None,
    ) -> GlusEngine:
        """Open an engine directory built by `python -m export.build`.

        io_binding (default: on for CUDA, off for the CPU) keeps the LLM's prefix KV cache on
        the device between calls instead of copying it in and out on every call; the masks are
        the same either way (tested on the CPU, where it only adds bookkeeping).

        spin=True lets ONNX Runtime's idle threads busy-wait: slightly faster on a dedicated,
        otherwise idle CPU, about 4x slower when other processes share the cores (default off).
        Raises EngineDirError (missing/corrupt/mismatched directory) or BackendError.
        """
        return cls(Stages.load(engine_dir, backend, device, threads, verify, spin, io_binding))

    # ---- read-only facts -------------------------------------------------------------------
    @property
    def manifest(self) -> Manifest:
        return self._stages.manifest

    @property
    def precision(self) -> str:
        return self._stages.manifest.precision

    @property
    def backend(self) -> str:
        return self._stages.backend

    @property
    def device(self) -> str:
        return self._stages.device

    @property
    def io_binding(self) -> bool:
        """Whether every graph keeps its outputs on the device (GlusEngine.load's io_binding)."""
        return all(getattr(g, "io_binding", False) for g in self._stages.graphs.values())

    def check_expression(self, expression) -> str:
        """The expression as the engine will read it, or InputError (GLUS's rules, or a prompt
        longer than the engine's LLM holds): to check a sentence before any frame is read."""
        return self._stages.check_expression(expression)

    # ---- offline ---------------------------------------------------------------------------
    def segment_video(
        self,
        frames,
        expressions,
        key_frames=None,
        *,
        force_seg: bool = False,
        use_memory: bool = True,
        kv_policy: str = "exact",
        details: bool = False,
        progress=None,
        llm_every=1,
        sticky_seg: bool = False,
        batch_llm: bool = False,
    ) -> list[ExpressionResult]:
        """Masks for every frame and every expression, as the reference loop computes them.

        frames: RGB uint8 H x W x 3 arrays. expressions: a str or a list of str.
        key_frames: None (every expression from frame 0), a frame index k for all expressions
        or one (int or None) per expression: GLUS's key-frame mode (forward from k, then
        backward from k with a fresh memory and conversation); or "auto": self-refined key
        frames, a first forward pass scores every frame by the mask decoder's IoU x object
        probability and the best frame becomes the key frame. A frame read by several passes
        is encoded once and its features kept until the last of them (with key frames, up to
        the whole video's SAM2 features at once).
        llm_every: 1 (default: GLUS, the LLM answers on every frame, the reference's masks), k:
        the LLM answers on every k-th query frame of a pass (its first included), or "auto" (or
        an llm_policy.AutoTrigger with its own thresholds): the LLM answers when SAM2's own
        mask loses confidence, the scene changes or too many frames went by. Between, SAM2
        alone carries the object (tracking.frame_step), and a frame the LLM does not see is not
        CLIP-encoded. StepInfo.llm_ran and StepInfo.why say which frames the LLM saw and why.
        sticky_seg: where the LLM answers "no [SEG]" (GLUS: an empty mask), prompt SAM2 with
        the last [SEG] instead while its object score says the object is there (off: GLUS).
        kv_policy: "exact" (default: the reference's results) or "incremental" (approximate,
        faster: see tracking.incremental_llm_step). progress: called with no argument after
        every query-frame step (all expressions of a pass advance together).
        batch_llm: where several expressions ask the LLM on the same frame, run their windows as
        one call on the shared prefix's cache (the prefix is passed once, not copied per
        expression); needs an engine built with `export.build --batched-llm` and
        kv_policy="exact" (InputError otherwise). fp32: the same masks as without; int8: the
        manifest's parity "llm_batched_rows" says how close each row is to its own call.
        """
        st = self._stages
        st.check_kv_policy(kv_policy)
        batch_llm = st.check_batch_llm(batch_llm, kv_policy)
        if isinstance(expressions, str):
            expressions = [expressions]
        exprs = [st.check_expression(e) for e in expressions]
        if not exprs:
            raise InputError("no expressions given")
        frames = [check_frame(f) for f in frames]
        n = len(frames)
        if n == 0:
            raise InputError("the video has no frames")
        ks = check_key_frames(key_frames, len(exprs), n)
        policy = llm_policy(llm_every)

        context = rules.context_frame_indices(n)
        context_tokens = st.clip_tokens([frames[i] for i in context])
        prefix = st.prefix(context_tokens)
        opts = dict(
            prefix=prefix,
            force_seg=force_seg,
            use_memory=use_memory,
            kv_policy=kv_policy,
            progress=progress,
            policy=policy,
            sticky_seg=sticky_seg,
            batch_llm=batch_llm,
        )
        enc = FrameEncodings(st, frames, dict(zip(context, context_tokens)))
        auto = ks == "auto"
        if auto:
            enc.plan(range(n))  # the scoring pass
            enc.plan(range(n))  # held until the passes from the key frames are planned
            first = self._run_pass(enc, list(range(n)), exprs, pass_name="score", details=False, **opts)
            ks = [max(range(n), key=lambda i, r=r: r[i][1].score) for r in first]
        for k in set(ks):
            enc.plan(range(k, n))
            enc.plan(range(k, -1, -1) if k > 0 else ())
        if auto:
            for i in range(n):
                enc.done(i)  # the hold
        merged: list[dict] = [dict() for _ in exprs]
        for k in sorted(set(ks)):
            members = [j for j, kj in enumerate(ks) if kj == k]
            group = [exprs[j] for j in members]
            fwd = self._run_pass(enc, list(range(k, n)), group, pass_name="forward", details=details, **opts)
            bwd = (
                self._run_pass(enc, list(range(k, -1, -1)), group, pass_name="backward", details=details, **opts)
                if k > 0
                else [dict() for _ in group]
            )
            for j, f, b in zip(members, fwd, bwd):
                merged[j].update(f)
                merged[j].update(b)  # frames 0..k from the backward pass
        return [
            ExpressionResult(
                expressions[j], [merged[j][i][0] for i in range(n)], [merged[j][i][1] for i in range(n)], ks[j]
            )
            for j in range(len(exprs))
        ]

    def _run_pass(
        self,
        enc: FrameEncodings,
        order: list[int],
        exprs: list[str],
        *,
        prefix,
        pass_name: str,
        force_seg: bool,
        use_memory: bool,
        details: bool,
        kv_policy: str,
        progress,
        policy=None,
        sticky_seg: bool = False,
        batch_llm: bool = False,
    ):
        st = self._stages
        tracks = [Track(e, st.new_bank(use_memory), pass_name) for e in exprs]
        results = [dict() for _ in exprs]
        for idx in order:
            steps = frame_step(
                st,
                tracks,
                idx,
                enc.frames[idx],
                lambda idx=idx: enc.sam(idx),
                lambda idx=idx: enc.clip(idx),
                prefix,
                force_seg,
                details,
                kv_policy,
                policy=policy,
                sticky_seg=sticky_seg,
                batch_llm=batch_llm,
            )
            enc.done(idx)
            for j, (mask, info) in enumerate(steps):
                results[j][idx] = (mask, info)
            if progress is not None:
                progress()
        return results

    # ---- streaming -------------------------------------------------------------------------
    def encode_frames(self, frames) -> list[list[np.ndarray]]:
        """The SAM2 features of several frames (of one camera or several): row i goes to frame
        i's Stream.push(frame, sam_features=row), and equals what the stream computes alone. One
        image-encoder call, or one call per frame where runtime.stages.stacking_refused(manifest)
        says why not (no frame axis, or a dynamic-int8 image encoder)."""
        return self._stages.sam_features_stacked([check_frame(f) for f in frames])

    def stream(
        self,
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
    ) -> Stream:
        """A Stream (runtime/stream.py): push a camera's frames one by one, get each frame's masks."""
        return Stream(
            self._stages,
            expressions,
            context_frames=context_frames,
            refresh_every=refresh_every,
            pool_size=pool_size,
            force_seg=force_seg,
            use_memory=use_memory,
            kv_policy=kv_policy,
            llm_every=llm_every,
            sticky_seg=sticky_seg,
            batch_llm=batch_llm,
        )


__all__ = ["AutoTrigger", "BackendError", "EngineDirError", "ExpressionResult", "GlusEngine", "InputError", "StepInfo"]
