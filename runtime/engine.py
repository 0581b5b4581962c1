"""`GlusEngine`: GLUS inference from an engine directory, without PyTorch.

Same answers as the reference loop (reference/inference.py), far less work per frame:
- the prompt part before the first query frame (system, 4 context images, context sentence)
  is run through the LLM once per video and context set, shared by every frame and every
  expression; each frame runs only its window's tokens on top of that KV cache;
- each frame is CLIP-encoded once and SAM2-encoded once, whatever the number of expressions;
- each expression's SAM2 memory bank has a fixed number of slots (runtime/memory.py).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reference import rules

from . import preprocess
from .backends import nbytes, open_graph, resolve_backend, to_host
from .errors import BackendError, EngineDirError, InputError
from .manifest import Manifest, read_manifest
from .memory import MemoryBank
from .tokenizer import RuntimeTokenizer

CLIP_BATCH = 8


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

    @property
    def score(self) -> float:
        """Confidence used by kf='auto': predicted IoU x object presence probability."""
        if self.iou is None:
            return -1.0
        return float(self.iou) * float(_sigmoid(self.object_score))


@dataclass
class ExpressionResult:
    expression: str
    masks: list[np.ndarray]  # bool, one per frame, at the frame's own size
    steps: list[StepInfo]  # per frame, the step that produced its mask
    key_frame: int = 0


@dataclass
class Prefix:
    """The shared prompt prefix and its LLM KV cache, for one set of context frames."""

    ids: list[int]
    kv: "np.ndarray | object"  # [L, 2, 1, KVH, P, HD]; an OrtValue on the GPU with I/O binding
    length: int  # P: positions taken by the prefix (text tokens + 64 per image)

    @property
    def nbytes(self) -> int:
        return nbytes(self.kv)


class _Track:
    """One expression followed through one pass: its conversation window and memory bank."""

    def __init__(self, expression: str, bank: MemoryBank | None, pass_name: str = "forward"):
        self.expression = expression
        self.bank = bank
        # Answers of the latest rounds; a window only ever shows the last Q-1 (fixed size).
        self.answers: deque = deque(maxlen=rules.NUM_QUERY - 1)
        self.t = 0  # position of the next query frame in this pass (its memory key)
        self.pass_name = pass_name
        # kv_policy="incremental": this track's own KV cache (prefix + window rounds), the
        # prefix it was built on, and where each round's <im_start> sits in it.
        self.kv: np.ndarray | None = None
        self.kv_prefix: Prefix | None = None
        self.round_starts: list[int] = []

    def past_answers(self, i: int) -> list[str]:
        """Answers of the earlier rounds in step i's window (rules.window_positions)."""
        n = len(rules.window_positions(i)) - 1
        return list(self.answers)[len(self.answers) - n:] if n else []

    def record(self, answer: str) -> None:
        self.answers.append(answer)


class GlusEngine:
    def __init__(self, manifest: Manifest, graphs: dict, arrays: dict, tokenizer: RuntimeTokenizer,
                 backend: str, device: str):
        self.manifest = manifest
        self.graphs = graphs
        self.arrays = arrays
        self.tokenizer = tokenizer
        self.backend = backend
        self.device = device
        c = manifest.constants
        self.c = c
        self.sam_size = int(c["sam"]["image_size"])
        self.feat_hw = tuple(c["sam"]["feat_sizes"][-1])
        self.llm_c = c["llm"]
        self.seg_id = int(c["tokens"]["seg"])
        self._check_rules(c)
        self.embed_tokens = arrays["embed_tokens"]
        self.no_mem_embed = arrays["no_mem_embed"].reshape(1, -1, 1, 1)

    # ---- loading ---------------------------------------------------------------------------
    @classmethod
    def load(cls, engine_dir: str | Path, backend: str = "auto", device: str = "cpu",
             threads: int | None = None, verify: bool = True, spin: bool = False,
             io_binding: bool | None = None) -> "GlusEngine":
        """Open an engine directory built by `python -m export.build`.

        io_binding (default: on for CUDA, off for the CPU) keeps the LLM's prefix KV cache on
        the device between calls instead of copying it in and out on every call; the masks are
        the same either way (tested on the CPU, where it only adds bookkeeping).

        spin=True lets ONNX Runtime's idle threads busy-wait: slightly faster on a dedicated,
        otherwise idle CPU, about 4x slower when other processes share the cores (default off).
        Raises EngineDirError (missing/corrupt/mismatched directory) or BackendError.
        """
        manifest = read_manifest(engine_dir, verify_hashes=verify)
        trt = manifest.data.get("tensorrt") or {}
        backend = resolve_backend(backend, device, bool(trt.get("built")))
        fp16 = manifest.precision == "fp16"
        graphs = {name: open_graph(manifest.graph_path(name), backend, device, threads, fp16, spin,
                                   io_binding)
                  for name in manifest.graphs}
        arrays = {}
        for name, entry in manifest.arrays.items():
            arr = np.load(manifest.path(entry), allow_pickle=False)
            if list(arr.shape) != list(entry["shape"]):
                raise EngineDirError(f"array {name}: shape {arr.shape} != manifest {entry['shape']}")
            arrays[name] = arr
        t = manifest.constants["tokens"]
        try:
            tok = RuntimeTokenizer.from_file(
                manifest.path(manifest.data["tokenizer"]), bos_id=t["bos"], eos_id=t["eos"],
                seg_id=t["seg"], im_start_id=t["im_start"], im_end_id=t["im_end"])
        except ValueError as e:
            raise EngineDirError(f"tokenizer does not match the manifest: {e}") from None
        return cls(manifest, graphs, arrays, tok, backend, device)

    @staticmethod
    def _check_rules(c: dict) -> None:
        """The engine was built for this runtime's GLUS rules (prompt pieces, window sizes)."""
        want = {"num_context": rules.NUM_CONTEXT, "num_query": rules.NUM_QUERY,
                "num_maskmem": rules.NUM_MASKMEM, "tokens_per_image": rules.TOKENS_PER_IMAGE}
        p = c["prompt"]
        want_prompt = {"system": rules.SYSTEM, "answer_prefix": rules.ANSWER_PREFIX,
                       "context_sentence": rules.CONTEXT_SENTENCE,
                       "question_template": rules.QUESTION_TEMPLATE}
        bad = [k for k, v in want.items() if c.get(k) != v]
        bad += [f"prompt.{k}" for k, v in want_prompt.items() if p.get(k) != v]
        if bad:
            raise EngineDirError(f"engine built for other GLUS rules ({', '.join(bad)}): rebuild it")

    # ---- input checks ----------------------------------------------------------------------
    def check_frame(self, frame) -> np.ndarray:
        try:
            return preprocess.check_frame(frame)
        except (TypeError, ValueError) as e:
            raise InputError(f"bad frame: {e}") from None

    def check_expression(self, expression) -> str:
        try:
            expr = rules.normalize_expression(expression)
            worst = rules.prompt_text(expr, [rules.ANSWER_NO_SEG] * (rules.NUM_QUERY - 1))
        except ValueError as e:
            raise InputError(f"bad expression {expression!r}: {e}") from None
        ids = self.tokenizer.encode_prompt(worst)
        n = len(ids) + ids.count(rules.IMAGE_TOKEN_INDEX) * (rules.TOKENS_PER_IMAGE - 1)
        if n > self.llm_c["max_positions"]:
            raise InputError(
                f"expression too long: its full prompt takes {n} positions, the engine's LLM "
                f"has {self.llm_c['max_positions']}"
            )
        return expr

    # ---- stages ----------------------------------------------------------------------------
    def clip_tokens(self, frames: list[np.ndarray]) -> np.ndarray:
        """[N, 64, hidden] projected CLIP tokens, in batches."""
        cc = self.c["clip"]
        out = []
        for s in range(0, len(frames), CLIP_BATCH):
            px = np.stack([preprocess.clip_preprocess(
                f, size=cc["resize_shortest_edge"], crop=cc["crop"][0], mean=cc["mean"],
                std=cc["std"], resample=cc["resample"]) for f in frames[s:s + CLIP_BATCH]])
            out.append(self.graphs["vision"].run(px.astype(np.float32))[0])
        return np.concatenate(out, 0)

    def sam_features(self, frame: np.ndarray) -> list[np.ndarray]:
        """[high_res0, high_res1, image_feat] of one frame, shared by all expressions."""
        x = preprocess.sam_preprocess(frame, self.sam_size)[None].astype(np.float32)
        return self.graphs["sam_image"].run(x)

    def _embed(self, ids: list[int], images: list[np.ndarray]) -> np.ndarray:
        pieces, text, k = [], [], 0
        for t in ids:
            if t == rules.IMAGE_TOKEN_INDEX:
                if text:
                    pieces.append(self.embed_tokens[text])
                    text = []
                pieces.append(images[k])
                k += 1
            else:
                text.append(t)
        if text:
            pieces.append(self.embed_tokens[text])
        return np.concatenate(pieces, 0)[None].astype(np.float32)

    def _llm(self, embeds: np.ndarray, start: int, past, keep_present: str = "device"):
        """(seg, logits, present). With I/O binding `present` (past + this call's keys/values)
        stays on the device (keep_present="device"): the prefix is kept there and an exact
        step's present is dropped without a copy back; keep_present="host" copies it."""
        pos = np.arange(start, start + embeds.shape[1], dtype=np.int64)[None]
        outs = self.graphs["llm"].run(embeds, pos, past, device_outputs=(2,))
        if keep_present == "host":
            outs[2] = to_host(outs[2])
        return outs

    def prefix(self, context_tokens: np.ndarray) -> Prefix:
        """Run the shared prompt prefix once: BOS, system, 'USER: ', context images, sentence."""
        ids = self.tokenizer.encode_prompt(rules.prefix_text())
        lc = self.llm_c
        empty = np.zeros((lc["layers"], 2, 1, lc["kv_heads"], 0, lc["head_dim"]), np.float32)
        emb = self._embed(ids, list(context_tokens))
        _, _, kv = self._llm(emb, 0, empty)
        return Prefix(ids, kv, emb.shape[1])

    def llm_step(self, prefix: Prefix, expression: str, past: list[str],
                 window_tokens: list[np.ndarray]) -> tuple[np.ndarray, int]:
        """[SEG] embedding and next token of one query step, on top of the cached prefix."""
        ids = self.tokenizer.encode_prompt(rules.prompt_text(expression, past))
        n = len(prefix.ids)
        if ids[:n] != prefix.ids:  # guaranteed by rules.split_prefix; checked, never assumed
            raise RuntimeError("prompt does not start with the cached prefix tokens")
        emb = self._embed(ids[n:], window_tokens)
        seg, logits, _ = self._llm(emb, prefix.length, prefix.kv)
        return seg[0], int(np.argmax(logits[0]))

    def _im_start_positions(self, ids: list[int]) -> list[int]:
        """Sequence positions (image tokens expanded) of each <im_start> in ids."""
        out, pos = [], 0
        for t in ids:
            if t == self.tokenizer.im_start_id:
                out.append(pos)
            pos += rules.TOKENS_PER_IMAGE if t == rules.IMAGE_TOKEN_INDEX else 1
        return out

    def llm_step_incremental(self, tr: "_Track", prefix: Prefix, past: list[str],
                             window_tokens: list[np.ndarray]) -> tuple[np.ndarray, int]:
        """Approximate window (kv_policy="incremental"): keep the cached rounds when the window
        slides instead of re-running them; only the newest round's tokens are computed.

        Until the window first slides this equals the exact step (earlier rounds never attend
        to later ones). On a slide the oldest round is cut out of the cache and the later keys
        are rotated back to the positions they would have (kernels.rope_shift); their values
        still carry attention to the dropped round: that is the approximation.
        """
        from kernels.rope_shift import shift_keys

        ids = self.tokenizer.encode_prompt(rules.prompt_text(tr.expression, past))
        n = len(prefix.ids)
        if ids[:n] != prefix.ids:
            raise RuntimeError("prompt does not start with the cached prefix tokens")
        rest = ids[n:]
        if tr.kv is None or tr.kv_prefix is not prefix:  # first step, or a new context
            seg, logits, kv = self._llm(self._embed(rest, window_tokens), prefix.length, prefix.kv,
                                        keep_present="host")  # edited on the host below
            tr.kv, tr.kv_prefix = kv, prefix
            tr.round_starts = [prefix.length + p for p in self._im_start_positions(rest)]
            return seg[0], int(np.argmax(logits[0]))
        eos = len(rest) - 1 - rest[::-1].index(self.tokenizer.eos_id)
        prev_seg = eos - 1 - rest[:eos][::-1].index(self.seg_id)
        tail = rest[prev_seg:]  # "[SEG] ▁. </s> ▁USER : <im_start> <image> ... ▁is ▁"
        kv = tr.kv[..., :-1, :]  # the trailing "▁" after "is" vanishes once [SEG] follows
        if len(tr.round_starts) >= rules.NUM_QUERY:  # slide: drop the oldest round
            p0, p1 = prefix.length, tr.round_starts[1]
            later = kv[..., p1:, :].copy()
            later[:, 0] = shift_keys(later[:, 0], p0 - p1, self.llm_c["rope_theta"])
            kv = np.concatenate([kv[..., :p0, :], later], axis=-2)
            tr.round_starts = [s - (p1 - p0) for s in tr.round_starts[1:]]
        start = kv.shape[-2]
        seg, logits, present = self._llm(self._embed(tail, window_tokens[-1:]), start, kv,
                                         keep_present="host")
        tr.round_starts.append(start + self._im_start_positions(tail)[0])
        tr.kv = present
        return seg[0], int(np.argmax(logits[0]))

    def condition(self, feats: list[np.ndarray], memories: np.ndarray | None) -> np.ndarray:
        image_feat = feats[2]
        if memories is None:
            return image_feat + self.no_mem_embed.astype(image_feat.dtype)
        return self.graphs["memory_attention"].run(image_feat, memories.astype(np.float32))[0]

    # ---- one frame for a set of tracks -----------------------------------------------------
    def _frame_step(self, tracks: list[_Track], frame_index: int, frame: np.ndarray,
                    feats_fn, prefix: Prefix, window_tokens: list[np.ndarray], force_seg: bool,
                    details: bool, kv_policy: str = "exact") -> list[tuple[np.ndarray, StepInfo]]:
        """Advance every track by one query frame; SAM2 work is batched across tracks."""
        h, w = frame.shape[:2]
        out: list = [None] * len(tracks)
        seg_rows, seg_tracks = [], []
        for j, tr in enumerate(tracks):
            i = tr.t + 1
            if kv_policy == "incremental":
                seg, tok = self.llm_step_incremental(tr, prefix, tr.past_answers(i), window_tokens)
            else:
                seg, tok = self.llm_step(prefix, tr.expression, tr.past_answers(i), window_tokens)
            is_seg = tok == self.seg_id
            info = StepInfo(frame_index, i, tok, is_seg, seg, pass_name=tr.pass_name)
            if is_seg or force_seg:
                tr.record(rules.ANSWER_SEG if is_seg else rules.ANSWER_NO_SEG)
                seg_rows.append(j)
                seg_tracks.append((tr, info))
            else:
                tr.record(rules.ANSWER_NO_SEG)  # GLUS: empty mask, nothing stored
                out[j] = (np.zeros((h, w), bool), info)
        if seg_rows:
            feats = feats_fn()
            conds = []
            for tr, info in seg_tracks:
                keys, mem = tr.bank.read(tr.t) if tr.bank is not None else ([], None)
                info.memories = keys
                conds.append(self.condition(feats, mem))
            cond = np.concatenate(conds, 0)
            b = len(seg_tracks)
            hr0 = np.repeat(feats[0], b, 0)
            hr1 = np.repeat(feats[1], b, 0)
            segs = np.stack([info.seg_embedding for _, info in seg_tracks]).astype(np.float32)
            low, iou, obj = self.graphs["mask_decoder"].run(cond, hr0, hr1, segs)
            masks = preprocess.logits_to_masks(low, (h, w))[:, 0]  # [B, H, W]
            if any(tr.bank is not None for tr, _ in seg_tracks):
                mems = self.graphs["memory_encoder"].run(cond, low)[0]
            for r, (j, (tr, info)) in enumerate(zip(seg_rows, seg_tracks)):
                if tr.bank is not None:
                    tr.bank.store(tr.t, mems[r])
                if details:
                    info.low_res_logits = low[r]
                info.iou, info.object_score = float(iou[r, 0]), float(obj[r, 0])
                out[j] = (masks[r], info)
        for tr in tracks:
            tr.t += 1
        return out

    def _bank(self, use_memory: bool) -> MemoryBank | None:
        if not use_memory:
            return None
        return MemoryBank((int(self.c["sam"]["mem_dim"]), *self.feat_hw),
                          num_slots=rules.NUM_MASKMEM, mem_stride=int(self.c["mem_stride"]))

    # ---- offline ---------------------------------------------------------------------------
    def _run_pass(self, frames, order: list[int], exprs: list[str], prefix: Prefix,
                  known_tokens: dict[int, np.ndarray], *,
                  pass_name: str, force_seg: bool, use_memory: bool, details: bool,
                  kv_policy: str = "exact", progress=None):
        tracks = [_Track(e, self._bank(use_memory), pass_name) for e in exprs]
        window: deque = deque(maxlen=rules.NUM_QUERY)  # CLIP tokens of the window's frames
        results = [dict() for _ in exprs]
        for idx in order:
            # Context frames were encoded for the prefix already: encode each frame once.
            tokens = known_tokens.get(idx)
            window.append(tokens if tokens is not None else self.clip_tokens([frames[idx]])[0])
            cache: list = []

            def feats_fn(idx=idx, cache=cache):
                if not cache:
                    cache.append(self.sam_features(frames[idx]))
                return cache[0]

            steps = self._frame_step(tracks, idx, frames[idx], feats_fn, prefix, list(window),
                                     force_seg, details, kv_policy)
            for j, (mask, info) in enumerate(steps):
                results[j][idx] = (mask, info)
            if progress is not None:
                progress()
        return results

    def segment_video(self, frames, expressions, key_frames=None, *, kf: str | None = None,
                      force_seg: bool = False, use_memory: bool = True, kv_policy: str = "exact",
                      details: bool = False, progress=None) -> list[ExpressionResult]:
        """Masks for every frame and every expression, as the reference loop computes them.

        frames: RGB uint8 H x W x 3 arrays. expressions: a str or a list of str.
        key_frames: None, or one key frame (int or None) per expression: GLUS's key-frame
        mode (forward from k, then backward from k with a fresh memory and conversation).
        kf="auto": self-refined key frames: a first forward pass scores every frame by the mask
        decoder's IoU x object probability, the best frame becomes the key frame.
        kv_policy: "exact" (default: the reference's results) or "incremental" (approximate,
        faster: see llm_step_incremental). progress: called with no argument after every
        query-frame step (all expressions of a pass advance together).
        """
        self.check_kv_policy(kv_policy)
        if isinstance(expressions, str):
            expressions = [expressions]
        exprs = [self.check_expression(e) for e in expressions]
        if not exprs:
            raise InputError("no expressions given")
        frames = [self.check_frame(f) for f in frames]
        n = len(frames)
        if n == 0:
            raise InputError("the video has no frames")
        if kf not in (None, "auto"):
            raise InputError(f"kf must be None or 'auto', got {kf!r}")
        if kf == "auto" and key_frames is not None:
            raise InputError("give either key_frames or kf='auto', not both")
        if key_frames is None:
            key_frames = [None] * len(exprs)
        key_frames = list(key_frames)
        if len(key_frames) != len(exprs):
            raise InputError(f"{len(key_frames)} key frames for {len(exprs)} expressions")
        for k in key_frames:
            if k is not None and not (isinstance(k, (int, np.integer)) and 0 <= k < n):
                raise InputError(f"key frame {k!r} is outside the video (0..{n - 1})")

        context = rules.context_frame_indices(n)
        context_tokens = self.clip_tokens([frames[i] for i in context])
        prefix = self.prefix(context_tokens)
        known = dict(zip(context, context_tokens))
        opts = dict(force_seg=force_seg, use_memory=use_memory, kv_policy=kv_policy, progress=progress)
        if kf == "auto":
            first = self._run_pass(frames, list(range(n)), exprs, prefix, known, pass_name="score",
                                   details=False, **opts)
            key_frames = [max(range(n), key=lambda i, r=r: r[i][1].score) for r in first]
        ks = [int(k or 0) for k in key_frames]
        merged: list[dict] = [dict() for _ in exprs]
        for k in sorted(set(ks)):
            members = [j for j, kj in enumerate(ks) if kj == k]
            group = [exprs[j] for j in members]
            fwd = self._run_pass(frames, list(range(k, n)), group, prefix, known, pass_name="forward",
                                 details=details, **opts)
            bwd = (self._run_pass(frames, list(range(k, -1, -1)), group, prefix, known, pass_name="backward",
                                  details=details, **opts) if k > 0 else [dict() for _ in group])
            for j, f, b in zip(members, fwd, bwd):
                merged[j].update(f)
                merged[j].update(b)  # frames 0..k from the backward pass
        return [ExpressionResult(expressions[j], [merged[j][i][0] for i in range(n)],
                                 [merged[j][i][1] for i in range(n)], ks[j])
                for j in range(len(exprs))]

    # ---- streaming -------------------------------------------------------------------------
    def check_kv_policy(self, kv_policy: str) -> None:
        if kv_policy not in ("exact", "incremental"):
            raise InputError(f"kv_policy must be 'exact' or 'incremental', got {kv_policy!r}")
        if kv_policy == "incremental" and self.llm_c.get("rope_type", "default") != "default":
            raise InputError("kv_policy='incremental' supports LLaMA's default RoPE only")

    def stream(self, expressions=(), *, context_frames=None, refresh_every: int = 16,
               pool_size: int = 16, force_seg: bool = False, use_memory: bool = True,
               kv_policy: str = "exact"):
        from .stream import Stream

        self.check_kv_policy(kv_policy)
        return Stream(self, expressions, context_frames=context_frames, refresh_every=refresh_every,
                      pool_size=pool_size, force_seg=force_seg, use_memory=use_memory,
                      kv_policy=kv_policy)


__all__ = ["GlusEngine", "ExpressionResult", "StepInfo", "BackendError", "EngineDirError", "InputError"]
