"""The GLUS inference loop, as the published code runs it (the baseline the engine must beat).

For every query frame the whole prompt (system, 4 context frames, a window of up to 4 query
rounds) is rebuilt, every image in it re-encoded by CLIP and the LLM re-run from scratch; the
[SEG] embedding at the last prompt position prompts SAM2's decoder; SAM2's memory bank carries
the object from frame to frame (runtime/rules.py restates each rule of GLUS's code it follows).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from runtime import rules

from .loader import GlusReference
from .preprocess import check_frame, clip_pixels, sam_pixels, upsample_logits


@dataclass
class FrameResult:
    """What one query step produced; the runtime is compared on these."""

    frame: int  # index in the video
    step: int  # 1-based query step within its pass
    mask: np.ndarray  # bool, frame H x W
    next_token: int
    is_seg: bool
    seg_embedding: np.ndarray  # [out_dim] (computed even when the token is not [SEG])
    low_res_logits: np.ndarray | None  # [1, 4h, 4w]; None when no mask was decoded
    iou: float | None
    object_score: float | None
    memories: list[int] = field(default_factory=list)  # pass positions read from the bank
    pass_name: str = "forward"


@dataclass
class VideoResult:
    masks: list[np.ndarray]  # one bool H x W mask per video frame
    frames: list[FrameResult]  # per frame, the step that produced its mask
    context: list[int]
    passes: dict[str, list[FrameResult]]


def _check_frames(frames) -> list[np.ndarray]:
    frames = list(frames)
    if not frames:
        raise ValueError("the video has no frames")
    return [check_frame(f) for f in frames]


@torch.no_grad()
def run_pass(
    ref: GlusReference,
    frames: list[np.ndarray],
    context: list[int],
    order: list[int],
    expression: str,
    *,
    use_memory: bool = True,
    pass_name: str = "forward",
    progress: bool = False,
) -> list[FrameResult]:
    """One GLUS `inference_frames` call: query frames `order` (video indices) after `context`."""
    model, tok = ref.model, ref.tokenizer
    param = next(model.parameters())
    dtype, device = param.dtype, param.device
    # GLUS preprocesses every image of the pass once (on the CPU, then moved to the model) ...
    clip_in = {i: clip_pixels(ref.clip_processor, frames[i]).to(device, dtype) for i in set(context) | set(order)}
    answers: list[str] = []  # answer written to history for each pass position
    bank: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    results = []
    steps = tqdm(range(1, len(order) + 1), desc=f"reference {pass_name}", disable=not progress)
    for i in steps:
        t = i - 1  # position of the current query frame in this pass (its memory key)
        window = rules.window_positions(i)
        past = [answers[p] for p in window[:-1]]
        ids = tok.encode_prompt(rules.prompt_text(expression, past))
        # ... but re-encodes every image of the prompt with CLIP at every step.
        pixels = torch.stack([clip_in[c] for c in context] + [clip_in[order[p]] for p in window])
        llm = model.seg_embedding(ids, model.encode_clip(pixels))
        is_seg = llm.next_token == tok.seg_id
        frame = frames[order[t]]
        h, w = frame.shape[:2]
        if not is_seg:
            # GLUS: no mask for this frame, nothing stored in the bank, and the history records
            # the answer as "[SEG] ." so that later prompts keep one [SEG] per past round.
            answers.append(rules.ANSWER_NO_SEG)
            results.append(
                FrameResult(
                    order[t],
                    i,
                    np.zeros((h, w), bool),
                    llm.next_token,
                    False,
                    llm.seg_embedding.float().cpu().numpy(),
                    None,
                    None,
                    None,
                    [],
                    pass_name,
                )
            )
            continue
        answers.append(rules.ANSWER_SEG)
        feats = model.encode_image(sam_pixels(frame, model.sam_image_size).to(device, dtype)[None])
        keys = [k for k in rules.memory_frame_indices(t) if k in bank] if use_memory else []
        conditioned = model.condition(feats, [bank[k] for k in keys])
        dec = model.decode(feats, conditioned, llm.seg_embedding)
        mask = (upsample_logits(dec.low_res_logits, (h, w))[0, 0] > 0).cpu().numpy()
        if use_memory:
            bank[t] = model.encode_memory(feats, conditioned, dec.low_res_logits)
        results.append(
            FrameResult(
                order[t],
                i,
                mask,
                llm.next_token,
                True,
                llm.seg_embedding.float().cpu().numpy(),
                dec.low_res_logits[0].float().cpu().numpy(),
                float(dec.iou[0, 0]),
                float(dec.object_score[0, 0]),
                keys,
                pass_name,
            )
        )
    return results


def segment_video(
    ref: GlusReference,
    frames,
    expression: str,
    *,
    key_frame: int | None = None,
    use_memory: bool = True,
    progress: bool = False,
) -> VideoResult:
    """Masks for every frame of `frames` (RGB uint8 arrays) for one referring expression.

    key_frame k (GLUS's KFS mode): a forward pass over frames k..N-1, then a backward pass over
    k, k-1, ..., 0 with a fresh memory bank and conversation; frames 0..k come from the backward
    pass. (The published script saves the forward masks under wrong names and never writes the
    frames after k; this is the intended behaviour.) use_memory=False is GLUS's
    `--not_use_mem_bank` ablation.
    """
    frames = _check_frames(frames)
    expr = rules.normalize_expression(expression)
    n = len(frames)
    context = rules.context_frame_indices(n)
    k = 0 if key_frame is None else int(key_frame)
    if not 0 <= k < n:
        raise ValueError(f"key frame {key_frame} is outside the video (0..{n - 1})")
    passes = {
        "forward": run_pass(ref, frames, context, list(range(k, n)), expr, use_memory=use_memory, progress=progress)
    }
    if k > 0:
        passes["backward"] = run_pass(
            ref,
            frames,
            context,
            list(range(k, -1, -1)),
            expr,
            use_memory=use_memory,
            pass_name="backward",
            progress=progress,
        )
    by_frame = {r.frame: r for r in passes["forward"]}
    by_frame.update({r.frame: r for r in passes.get("backward", [])})
    ordered = [by_frame[i] for i in range(n)]
    return VideoResult([r.mask for r in ordered], ordered, context, passes)
