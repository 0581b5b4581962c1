"""One expression followed through a video: its state, and the step that advances it a frame.

A `Track` holds what GLUS carries from one query frame to the next for one expression: the
conversation's past answers (the window shows the last Q-1), the SAM2 memory bank, the position
of the next query frame (its memory key), the last [SEG] embedding the LLM gave, and with
kv_policy="incremental" its own KV cache. `frame_step` advances a set of tracks by one frame:
an LLM step per track on the shared prefix, then the SAM2 work of every track that answered
[SEG], batched (memory attention per track, one mask-decoder and one memory-encoder call).
GlusEngine (offline passes) and Stream (a camera) both drive their tracks through it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from . import preprocess, rules
from .llm_policy import EveryK, scene_signature
from .memory import MemoryBank
from .stages import Prefix, Stages

EVERY_FRAME = EveryK(1)  # GLUS: the LLM answers on every frame


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class StepInfo:
    """What one query step produced (the reference's FrameResult, without torch)."""

    frame: int
    step: int
    next_token: int
    is_seg: bool
    seg_embedding: np.ndarray
    low_res_logits: np.ndarray | None = None
    iou: float | None = None
    object_score: float | None = None
    memories: list[int] = field(default_factory=list)
    pass_name: str = "forward"
    # Whether the LLM answered on this frame and why (runtime/llm_policy.py); if not, the mask
    # came from SAM2 alone, prompted by the track's last [SEG] (next_token, is_seg,
    # seg_embedding: that answer's).
    llm_ran: bool = True
    why: str = "every frame"

    @staticmethod
    def confidence(iou, object_score) -> float:
        """Predicted IoU x object presence probability."""
        iou, obj = (float(np.asarray(v).reshape(-1)[0]) for v in (iou, object_score))
        return iou * float(_sigmoid(obj))

    @property
    def score(self) -> float:
        """The decoder's confidence in this mask (used by key_frames="auto" and llm_every="auto"),
        -1 where nothing was decoded."""
        if self.iou is None:
            return -1.0
        return self.confidence(self.iou, self.object_score)


class Track:
    """One expression followed through one pass: its conversation window and memory bank."""

    def __init__(self, expression: str, bank: MemoryBank | None, pass_name: str = "forward"):
        self.expression = expression
        self.bank = bank
        # Answers of the latest rounds; a window only ever shows the last Q-1 (fixed size).
        self.answers: deque = deque(maxlen=rules.NUM_QUERY - 1)
        self.t = 0  # position of the next query frame in this pass (its memory key)
        self.pass_name = pass_name
        # The LLM's rounds: the CLIP tokens of the frames it saw (the window shows the last Q)
        # and how many rounds there were (GLUS's window rule counts rounds, not frames).
        self.window: deque = deque(maxlen=rules.NUM_QUERY)
        self.rounds = 0
        self.last_seg: np.ndarray | None = None  # the LLM's latest [SEG] embedding
        self.last_token: int | None = None  # and the token it answered with
        self.last_seg_answer: np.ndarray | None = None  # the embedding of its latest [SEG] answer
        # The last frame the LLM saw: its position, the decoder's confidence there (None if
        # nothing was decoded) and its scene signature (llm_every="auto"'s yardsticks).
        self.llm_t = -1
        self.llm_score: float | None = None
        self.llm_scene: np.ndarray | None = None
        # kv_policy="incremental": this track's own KV cache (prefix + window rounds), the
        # prefix it was built on, and where each round's <im_start> sits in it.
        self.kv: np.ndarray | None = None
        self.kv_prefix: Prefix | None = None
        self.round_starts: list[int] = []

    def past_answers(self, i: int) -> list[str]:
        """Answers of the earlier rounds in step i's window (rules.window_positions)."""
        n = len(rules.window_positions(i)) - 1
        return list(self.answers)[len(self.answers) - n :] if n else []

    def record(self, answer: str) -> None:
        self.answers.append(answer)


def incremental_llm_step(
    stages: Stages, tr: Track, prefix: Prefix, past: list[str], window_tokens: list[np.ndarray]
) -> tuple[np.ndarray, int]:
    """Approximate window (kv_policy="incremental"): keep the cached rounds when the window
    slides instead of re-running them; only the newest round's tokens are computed.

    Until the window first slides this equals the exact step (earlier rounds never attend
    to later ones). On a slide the oldest round is cut out of the cache and the later keys
    are rotated back to the positions they would have (kernels.rope_shift); their values
    still carry attention to the dropped round: that is the approximation.
    """
    from kernels.rope_shift import shift_keys

    rest = stages.window_ids(prefix, tr.expression, past)
    if tr.kv is None or tr.kv_prefix is not prefix:  # first step, or a new context
        seg, logits, kv = stages.llm(
            stages.embed(rest, window_tokens), prefix.length, prefix.kv, keep_present="host"
        )  # edited on the host below
        tr.kv, tr.kv_prefix = kv, prefix
        tr.round_starts = [prefix.length + p for p in stages.im_start_positions(rest)]
        return seg[0], int(np.argmax(logits[0]))
    eos = len(rest) - 1 - rest[::-1].index(stages.tokenizer.eos_id)
    prev_seg = eos - 1 - rest[:eos][::-1].index(stages.seg_id)
    tail = rest[prev_seg:]  # "[SEG] ▁. </s> ▁USER : <im_start> <image> ... ▁is ▁"
    kv = tr.kv[..., :-1, :]  # the trailing "▁" after "is" vanishes once [SEG] follows
    if len(tr.round_starts) >= rules.NUM_QUERY:  # slide: drop the oldest round
        p0, p1 = prefix.length, tr.round_starts[1]
        later = kv[..., p1:, :].copy()
        later[:, 0] = shift_keys(later[:, 0], p0 - p1, stages.llm_c["rope_theta"])
        kv = np.concatenate([kv[..., :p0, :], later], axis=-2)
        tr.round_starts = [s - (p1 - p0) for s in tr.round_starts[1:]]
    start = kv.shape[-2]
    seg, logits, present = stages.llm(stages.embed(tail, window_tokens[-1:]), start, kv, keep_present="host")
    tr.round_starts.append(start + stages.im_start_positions(tail)[0])
    tr.kv = present
    return seg[0], int(np.argmax(logits[0]))


def frame_step(
    stages: Stages,
    tracks: list[Track],
    frame_index: int,
    frame: np.ndarray,
    feats_fn,
    tokens_fn,
    prefix: Prefix,
    force_seg: bool,
    details: bool,
    kv_policy: str = "exact",
    policy=None,
    sticky_seg: bool = False,
    batch_llm: bool = False,
) -> list[tuple[np.ndarray, StepInfo]]:
    """Advance every track by one query frame: (mask, StepInfo) per track.

    feats_fn() gives the frame's SAM2 features, tokens_fn() its CLIP tokens; each is called only
    if some track needs it. policy (runtime/llm_policy.py; default: every frame, GLUS) says
    whether a track's LLM answers on this frame: its window gains the frame and GLUS's step runs
    on it. A track that does not ask keeps its last answer: after a [SEG] (or with force_seg) its
    mask comes from SAM2 alone, memory attention over its bank and the decoder prompted with its
    last [SEG] embedding, stored in the bank like any frame's; after "no [SEG]", GLUS's empty
    mask, nothing stored. A verifying policy (llm_every="auto") first decodes that SAM2-alone
    mask and may then ask the LLM after all (the mask is then the LLM's, as on any asked frame).

    sticky_seg: where the answer is "no [SEG]", prompt the decoder with the track's last [SEG]
    embedding instead (if it has one) and keep the mask if the decoder's object score says the
    object is present (> 0); else GLUS's empty mask, nothing stored.

    batch_llm: where more than one track asks the LLM at the same point of the frame, their
    windows run as one call of the engine's "llm_batched" graph on the shared prefix (checked
    beforehand by Stages.check_batch_llm; kv_policy="exact" only)."""
    policy = policy or EVERY_FRAME
    h, w = frame.shape[:2]
    scene = scene_signature(feats_fn()[2]) if policy.needs_scene else None
    infos: list[StepInfo | None] = [None] * len(tracks)
    reasons = [policy.before(tr, scene) for tr in tracks]

    def answer(asks: list[tuple[int, str]]) -> None:  # GLUS's LLM step for each (track j, why)
        for j, _ in asks:
            tracks[j].window.append(tokens_fn())
        # (expression, past answers, window) per ask; the past answers are those of the window's
        # round, rounds + 1: GLUS's rules count the LLM's rounds
        requests = [
            (tracks[j].expression, tracks[j].past_answers(tracks[j].rounds + 1), list(tracks[j].window))
            for j, _ in asks
        ]
        if batch_llm and len(asks) > 1:
            answers = stages.llm_steps_batched(prefix, requests)
        elif kv_policy == "incremental":
            answers = [
                incremental_llm_step(stages, tracks[j], prefix, past, w) for (j, _), (_, past, w) in zip(asks, requests)
            ]
        else:
            answers = [stages.llm_step(prefix, *r) for r in requests]
        for (j, why), (seg, tok) in zip(asks, answers):
            record(j, why, seg, tok)

    def record(j: int, why: str, seg: np.ndarray, tok: int) -> None:  # track j's answer on this frame
        tr = tracks[j]
        tr.rounds += 1
        tr.last_seg, tr.last_token = seg, tok
        is_seg = tok == stages.seg_id
        if is_seg:
            tr.last_seg_answer = seg
        tr.record(rules.ANSWER_SEG if is_seg else rules.ANSWER_NO_SEG)
        infos[j] = StepInfo(frame_index, tr.t + 1, tok, is_seg, seg, pass_name=tr.pass_name, llm_ran=True, why=why)

    def keep(j: int) -> None:  # track j keeps its last answer on this frame
        tr = tracks[j]
        infos[j] = StepInfo(
            frame_index,
            tr.t + 1,
            tr.last_token,
            tr.last_token == stages.seg_id,
            tr.last_seg,
            pass_name=tr.pass_name,
            llm_ran=False,
            why="skipped: SAM2 alone on the last answer",
        )

    def prompt(j: int) -> np.ndarray | None:
        info = infos[j]
        if info.is_seg or force_seg:
            return info.seg_embedding
        if sticky_seg and tracks[j].last_seg_answer is not None:
            return tracks[j].last_seg_answer
        return None

    for j, why in enumerate(reasons):
        if why is None:
            keep(j)
    answer([(j, why) for j, why in enumerate(reasons) if why is not None])
    decoded: dict[int, tuple] = {}  # j -> (cond, low, iou, obj): this frame's SAM2 output
    feats = None
    if policy.verifies:  # SAM2 alone first, for the tracks that skipped; then the LLM where it must
        rows = [j for j in range(len(tracks)) if reasons[j] is None and prompt(j) is not None]
        if rows:
            feats = feats_fn()
            decoded.update(_decode_rows(stages, tracks, infos, rows, [prompt(j) for j in rows], feats))
        late = []  # the tracks whose SAM2-alone mask the policy rejects: their LLM answers after all
        for j in rows:
            score = StepInfo.confidence(decoded[j][2], decoded[j][3])
            why = policy.after(tracks[j], score)
            if why is not None:
                del decoded[j]
                late.append((j, why))
        answer(late)
    todo = [(j, prompt(j)) for j in range(len(tracks)) if j not in decoded]  # the [SEG] each decode reads
    todo = [(j, seg) for j, seg in todo if seg is not None]
    if todo:
        feats = feats if feats is not None else feats_fn()
        decoded.update(_decode_rows(stages, tracks, infos, [j for j, _ in todo], [seg for _, seg in todo], feats))
    out: list = [None] * len(tracks)
    stored = []  # tracks whose mask goes into their bank, in track order
    for j, tr in enumerate(tracks):
        info = infos[j]
        if j not in decoded:
            out[j] = (np.zeros((h, w), bool), info)  # GLUS: empty mask, nothing stored
            continue
        _, low, iou, obj = decoded[j]
        info.iou, info.object_score = float(iou[0]), float(obj[0])
        if details:
            info.low_res_logits = low
        if not (info.is_seg or force_seg) and info.object_score <= 0:  # sticky [SEG]: object gone
            out[j] = (np.zeros((h, w), bool), info)
            continue
        out[j] = (preprocess.logits_to_masks(low[None], (h, w))[0, 0], info)
        if tr.bank is not None:
            stored.append(j)
    if stored:
        mems = stages.encode_memory(
            np.concatenate([decoded[j][0] for j in stored], 0), np.stack([decoded[j][1] for j in stored])
        )
        for r, j in enumerate(stored):
            tracks[j].bank.store(tracks[j].t, mems[r])
    for j, tr in enumerate(tracks):
        if infos[j].llm_ran:
            tr.llm_t = tr.t
            if j in decoded:
                tr.llm_score = infos[j].score
            tr.llm_scene = scene
        tr.t += 1
    return out


def _decode_rows(stages: Stages, tracks: list[Track], infos, rows: list[int], prompts, feats) -> dict[int, tuple]:
    """Memory attention per track over its bank, then one mask-decoder call for all rows."""
    conds = []
    for j in rows:
        tr = tracks[j]
        keys, mem = tr.bank.read(tr.t) if tr.bank is not None else ([], None)
        infos[j].memories = keys
        conds.append(stages.condition(feats, mem))
    cond = np.concatenate(conds, 0)
    low, iou, obj = stages.decode(cond, feats, np.stack(prompts))
    return {j: (cond[r : r + 1], low[r], iou[r], obj[r]) for r, j in enumerate(rows)}


class FrameEncodings:
    """Each frame's CLIP tokens and SAM2 features, computed once however many passes read them
    (key frames' forward and backward passes, key_frames="auto"'s scoring pass), and dropped
    after the last planned read: plan(order) before a pass, done(i) after each of its frames."""

    def __init__(self, stages: Stages, frames: list[np.ndarray], known_tokens: dict[int, np.ndarray] | None = None):
        self.stages, self.frames = stages, frames
        self.reads = [0] * len(frames)
        self.tokens: dict[int, np.ndarray] = dict(known_tokens or {})
        self.feats: dict[int, list[np.ndarray]] = {}

    def plan(self, order) -> None:
        for i in order:
            self.reads[i] += 1

    def clip(self, i: int) -> np.ndarray:
        if i not in self.tokens:
            self.tokens[i] = self.stages.clip_tokens([self.frames[i]])[0]
        return self.tokens[i]

    def sam(self, i: int) -> list[np.ndarray]:
        if i not in self.feats:
            self.feats[i] = self.stages.sam_features(self.frames[i])
        return self.feats[i]

    def done(self, i: int) -> None:
        """One planned read of frame i is over; after the last, what the frame holds is freed."""
        self.reads[i] -= 1
        if self.reads[i] <= 0:
            self.tokens.pop(i, None)
            self.feats.pop(i, None)
