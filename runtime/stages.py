"""The engine directory's graphs as GLUS's stages, one function each, on numpy arrays.

`Stages.load` opens the directory (manifest, graphs on their backend, constant arrays, the
tokenizer); each stage is one step of GLUS's inference: CLIP tokens of frames, SAM2 features of
a frame, the shared prompt prefix through the LLM, one query step of the LLM on top of it, the
memory-conditioned image feature, the mask decoder, the memory encoder. What a tracked
expression keeps between frames, and the order in which the stages run for it, is
runtime/tracking.py's; GlusEngine and Stream drive both.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import preprocess, rules
from .backends import nbytes, open_graph, resolve_backend, to_host
from .checks import check_expression, check_kv_policy
from .errors import EngineDirError, InputError, InvariantError, UnknownFilesWarning
from .manifest import OPTIONAL_GRAPHS, Manifest, read_manifest
from .memory import MemoryBank
from .tokenizer import RuntimeTokenizer

CLIP_BATCH = 8


@dataclass
class Prefix:
    """The shared prompt prefix and its LLM KV cache, for one set of context frames."""

    ids: list[int]
    kv: np.ndarray | object  # [L, 2, 1, KVH, P, HD]; an OrtValue on the GPU with I/O binding
    length: int  # P: positions taken by the prefix (text tokens + 64 per image)

    @property
    def nbytes(self) -> int:
        return nbytes(self.kv)


class Stages:
    def __init__(
        self,
        manifest: Manifest,
        graphs: dict,
        arrays: dict,
        tokenizer: RuntimeTokenizer,
        backend: str,
        device: str,
        open_optional=None,
    ):
        self.manifest = manifest
        self.graphs = graphs
        self._open_optional = open_optional  # name -> graph, for OPTIONAL_GRAPHS on first use
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
        check_rules(c)
        self.embed_tokens = arrays["embed_tokens"]
        self.no_mem_embed = arrays["no_mem_embed"].reshape(1, -1, 1, 1)

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
    ) -> Stages:
        """Open an engine directory (GlusEngine.load documents the options)."""
        manifest = read_manifest(engine_dir, verify_hashes=verify)
        unknown = manifest.unknown_files()
        if unknown:  # not used, but someone put them there: maybe a graph they meant to be used
            warnings.warn(
                f"engine directory {engine_dir} holds files its manifest does not name, not used:"
                f" {', '.join(unknown[:8])}{' ...' if len(unknown) > 8 else ''}",
                UnknownFilesWarning,
                stacklevel=3,
            )
        trt = manifest.data.get("tensorrt") or {}
        backend = resolve_backend(backend, device, bool(trt.get("built")))
        fp16 = manifest.precision == "fp16"

        def open_named(name):
            return open_graph(manifest.graph_path(name), backend, device, threads, fp16, spin, io_binding)

        graphs = {name: open_named(name) for name in manifest.graphs if name not in OPTIONAL_GRAPHS}
        arrays = {}
        for name, entry in manifest.arrays.items():
            arr = np.load(manifest.path(entry), allow_pickle=False)
            if list(arr.shape) != list(entry["shape"]):
                raise EngineDirError(f"array {name}: shape {arr.shape} != manifest {entry['shape']}")
            arrays[name] = arr
        t = manifest.constants["tokens"]
        try:
            tok = RuntimeTokenizer.from_file(
                manifest.path(manifest.data["tokenizer"]),
                bos_id=t["bos"],
                eos_id=t["eos"],
                seg_id=t["seg"],
                im_start_id=t["im_start"],
                im_end_id=t["im_end"],
            )
        except ValueError as e:
            raise EngineDirError(f"tokenizer does not match the manifest: {e}") from None
        return cls(manifest, graphs, arrays, tok, backend, device, open_optional=open_named)

    def graph(self, name: str):
        """A graph by name; an optional one is opened here, on its first use."""
        if name not in self.graphs:
            if name not in self.manifest.graphs or self._open_optional is None:
                raise EngineDirError(f"engine directory {self.manifest.directory} has no {name!r} graph")
            self.graphs[name] = self._open_optional(name)
        return self.graphs[name]

    # ---- checks that need the engine's facts ------------------------------------------------
    def check_expression(self, expression) -> str:
        return check_expression(expression, self.tokenizer, int(self.llm_c["max_positions"]))

    def check_kv_policy(self, kv_policy: str) -> str:
        return check_kv_policy(kv_policy, self.llm_c.get("rope_type", "default"))

    def check_batch_llm(self, batch_llm, kv_policy: str) -> bool:
        """batch_llm=True needs the engine's batched LLM graph and the shared prefix's cache."""
        if not isinstance(batch_llm, bool):
            raise InputError(f"batch_llm must be True or False, got {batch_llm!r}")
        if not batch_llm:
            return False
        if "llm_batched" not in self.manifest.graphs:
            raise InputError(
                f"batch_llm=True needs a batched LLM graph, which engine directory {self.manifest.directory}"
                " does not have: rebuild it with python -m export.build --batched-llm"
            )
        if kv_policy != "exact":
            # kv_policy="incremental" keeps a KV cache per expression: there is no one cache to share.
            raise InputError(
                f"batch_llm=True runs the windows on the shared prefix: it needs kv_policy='exact', got {kv_policy!r}"
            )
        return True

    # ---- image stages ----------------------------------------------------------------------
    def clip_tokens(self, frames: list[np.ndarray]) -> np.ndarray:
        """[N, 64, hidden] projected CLIP tokens, in batches."""
        cc = self.c["clip"]
        out = []
        for s in range(0, len(frames), CLIP_BATCH):
            px = np.stack(
                [
                    preprocess.clip_preprocess(
                        f,
                        size=cc["resize_shortest_edge"],
                        crop=cc["crop"][0],
                        mean=cc["mean"],
                        std=cc["std"],
                        resample=cc["resample"],
                    )
                    for f in frames[s : s + CLIP_BATCH]
                ]
            )
            out.append(self.graphs["vision"].run(px.astype(np.float32))[0])
        return np.concatenate(out, 0)

    def sam_features(self, frame: np.ndarray) -> list[np.ndarray]:
        """[high_res0, high_res1, image_feat] of one frame, shared by all expressions."""
        x = preprocess.sam_preprocess(frame, self.sam_size)[None].astype(np.float32)
        return self.graphs["sam_image"].run(x)

    @property
    def stacking_refused(self) -> str | None:
        """Why the image graph cannot encode several frames in one call with each row equal to
        the frame encoded alone, or None where it can (stacking_refused below)."""
        return stacking_refused(self.manifest)

    def sam_features_stacked(self, frames: list[np.ndarray]) -> list[list[np.ndarray]]:
        """sam_features of each frame (of any sizes: each is resized to the graph's square), in
        one image-graph call, or one call per frame where stacking_refused says why not. Either
        way a row equals the frame's own sam_features: bit for bit on a CPU
        (tests/test_sam_image_batch.py); a GPU may pick other kernels for another batch size
        (benchmarks/gpu_check.py measures it)."""
        if not frames:
            return []
        if self.stacking_refused is not None:
            return [self.sam_features(f) for f in frames]
        return self.sam_features_one_call(frames)

    def sam_features_one_call(self, frames: list[np.ndarray]) -> list[list[np.ndarray]]:
        """The frames through the image graph as one call, rows split, whatever the graph: the
        stacking itself, without sam_features_stacked's refusal (benchmarks and tests measure
        what a dynamic-int8 graph does to the rows with it)."""
        x = np.stack([preprocess.sam_preprocess(f, self.sam_size) for f in frames]).astype(np.float32)
        levels = self.graphs["sam_image"].run(x)
        return [[level[i : i + 1] for level in levels] for i in range(len(frames))]

    # ---- LLM stages ------------------------------------------------------------------------
    def embed(self, ids: list[int], images: list[np.ndarray]) -> np.ndarray:
        """[1, T, hidden] input embeddings: token rows, each <image> replaced by its 64 tokens."""
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

    def llm(self, embeds: np.ndarray, start: int, past, keep_present: str = "device"):
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
        emb = self.embed(ids, list(context_tokens))
        _, _, kv = self.llm(emb, 0, empty)
        return Prefix(ids, kv, emb.shape[1])

    def window_ids(self, prefix: Prefix, expression: str, past: list[str]) -> list[int]:
        """The prompt's tokens after the cached prefix (checked to start with it, never assumed)."""
        ids = self.tokenizer.encode_prompt(rules.prompt_text(expression, past))
        n = len(prefix.ids)
        if ids[:n] != prefix.ids:  # guaranteed by rules.split_prefix
            raise InvariantError("prompt does not start with the cached prefix tokens")
        return ids[n:]

    def llm_step(
        self, prefix: Prefix, expression: str, past: list[str], window_tokens: list[np.ndarray]
    ) -> tuple[np.ndarray, int]:
        """[SEG] embedding and next token of one query step, on top of the cached prefix."""
        emb = self.embed(self.window_ids(prefix, expression, past), window_tokens)
        seg, logits, _ = self.llm(emb, prefix.length, prefix.kv)
        return seg[0], int(np.argmax(logits[0]))

    def llm_steps_batched(self, prefix: Prefix, requests) -> list[tuple[np.ndarray, int]]:
        """llm_step for several (expression, past, window_tokens) on the same prefix, in one call
        of the "llm_batched" graph: [SEG] embedding and next token per request, in order."""
        embeds = [self.embed(self.window_ids(prefix, e, past), window) for e, past, window in requests]
        x, pos, mask, last = pad_windows(embeds, prefix.length)
        seg, logits = self.graph("llm_batched").run(x, pos, mask, last, prefix.kv)
        return [(seg[i], int(np.argmax(logits[i]))) for i in range(len(requests))]

    def im_start_positions(self, ids: list[int]) -> list[int]:
        """Sequence positions (image tokens expanded) of each <im_start> in ids."""
        out, pos = [], 0
        for t in ids:
            if t == self.tokenizer.im_start_id:
                out.append(pos)
            pos += rules.TOKENS_PER_IMAGE if t == rules.IMAGE_TOKEN_INDEX else 1
        return out

    # ---- SAM2 stages -----------------------------------------------------------------------
    def condition(self, feats: list[np.ndarray], memories: np.ndarray | None) -> np.ndarray:
        """The image feature the mask decoder reads: memory attention over the bank's memories,
        or SAM2's no-memory embedding added when there are none."""
        image_feat = feats[2]
        if memories is None:
            return image_feat + self.no_mem_embed.astype(image_feat.dtype)
        return self.graphs["memory_attention"].run(image_feat, memories.astype(np.float32))[0]

    def decode(self, cond: np.ndarray, feats: list[np.ndarray], segs: np.ndarray):
        """(low-res mask logits [B,1,h,w], predicted IoU [B,1], object score [B,1]) for a batch
        of conditioned features and [SEG] embeddings of the same frame."""
        b = len(segs)
        hr0 = np.repeat(feats[0], b, 0)
        hr1 = np.repeat(feats[1], b, 0)
        return self.graphs["mask_decoder"].run(cond, hr0, hr1, segs.astype(np.float32))

    def encode_memory(self, cond: np.ndarray, low_res_logits: np.ndarray) -> np.ndarray:
        """[B, mem_dim, h, w] memories of this frame's masks, for the banks."""
        return self.graphs["memory_encoder"].run(cond, low_res_logits)[0]

    def new_bank(self, use_memory: bool) -> MemoryBank | None:
        if not use_memory:
            return None
        return MemoryBank(
            (int(self.c["sam"]["mem_dim"]), *self.feat_hw),
            num_slots=rules.NUM_MASKMEM,
            mem_stride=int(self.c["mem_stride"]),
        )


def stacking_refused(manifest: Manifest) -> str | None:
    """Why an engine's image graph cannot stack frames with each row equal to the frame encoded
    alone, or None where it can: it needs the graph's frame axis (engines built since
    export.sam_graphs gave it one) and activations quantized by nothing but the frame itself (a
    dynamic-int8 graph scales them over the whole call)."""
    g = manifest.graphs["sam_image"]
    if not isinstance(g["inputs"][0]["shape"][0], str):
        return (
            f"the image graph of engine directory {manifest.directory} takes one frame per call:"
            " rebuild it with python -m export.build"
        )
    if (g.get("quantization") or {}).get("method") == "dynamic-int8":
        return (
            f"the image graph of engine directory {manifest.directory} is dynamic int8: its activation"
            " scales span the whole call, so a frame's features would depend on the other frames (use an"
            " fp32 or fp16 engine)"
        )
    return None


def pad_windows(embeds: list[np.ndarray], start: int):
    """[1, T_i, H] windows right-padded into one batch for the "llm_batched" graph:
    (inputs_embeds [B,T,H], position_ids [B,T], new_mask [B,T], last [B]), T = max T_i.
    Each row's real tokens keep the positions a one-window call gives them (start, start+1, ...);
    padding is zeros, masked out, and after every real token, so no real token attends to it."""
    if not embeds:
        raise ValueError("no windows to batch")
    t = max(e.shape[1] for e in embeds)
    b, h = len(embeds), embeds[0].shape[2]
    x = np.zeros((b, t, h), np.float32)
    mask = np.zeros((b, t), np.int64)
    for i, e in enumerate(embeds):
        x[i, : e.shape[1]] = e[0]
        mask[i, : e.shape[1]] = 1
    pos = np.broadcast_to(np.arange(start, start + t, dtype=np.int64), (b, t)).copy()
    last = np.array([e.shape[1] - 1 for e in embeds], np.int64)
    return x, pos, mask, last


def check_rules(c: dict) -> None:
    """The engine was built for this runtime's GLUS rules (prompt pieces, window sizes)."""
    want = {
        "num_context": rules.NUM_CONTEXT,
        "num_query": rules.NUM_QUERY,
        "num_maskmem": rules.NUM_MASKMEM,
        "tokens_per_image": rules.TOKENS_PER_IMAGE,
    }
    p = c["prompt"]
    want_prompt = {
        "system": rules.SYSTEM,
        "answer_prefix": rules.ANSWER_PREFIX,
        "context_sentence": rules.CONTEXT_SENTENCE,
        "question_template": rules.QUESTION_TEMPLATE,
    }
    bad = [k for k, v in want.items() if c.get(k) != v]
    bad += [f"prompt.{k}" for k, v in want_prompt.items() if p.get(k) != v]
    if bad:
        raise EngineDirError(f"engine built for other GLUS rules ({', '.join(bad)}): rebuild it")
