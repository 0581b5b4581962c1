"""FLOPs of GLUS per stage, counted from shapes (no timing involved).

- LLM: 2 x (linear weights) x new tokens, plus attention 4 x hidden x new x total positions
  per layer (QK^T and AV as dense kernels compute them, masked entries included), plus lm_head
  and text_hidden_fcs at the last position only (as GLUS and the runtime do).
- CLIP: 2 x (linear/conv weights) x 257 tokens per image, attention over 257 tokens, and
  mm_projector on the 64 pooled tokens (transformers runs every layer, so all are counted).
- SAM2: torch.utils.flop_counter.FlopCounterMode on the reference's own stage methods, on the
  meta device. Meta because there scaled_dot_product_attention decomposes into matmuls the
  counter sees (on CPU the fused kernel is not counted), and shapes cost nothing: the hiera-L
  of GLUS-7B is counted without running it.

The reference loop re-runs every frame: the whole prompt (prefix + window) through the LLM and
all 8 images through CLIP. The runtime runs the prefix (and the 4 context images) once per
video, then per frame one CLIP image and only the window's tokens (kv_policy "exact") or only
the newest round's ("incremental").
"""

from __future__ import annotations

import types
from dataclasses import dataclass

from runtime import rules

CLIP_TOKENS = 257  # 16x16 patches + CLS at 224/14
EXPRESSION = "the red circle moving left"  # a typical synthetic expression, for token counts
VARIANTS = ("reference", "exact", "incremental")


# ---- token counts -------------------------------------------------------------------------------
def positions(ids: list[int]) -> int:
    """Sequence length of a tokenised prompt once each image placeholder becomes 64 tokens."""
    return len(ids) + ids.count(rules.IMAGE_TOKEN_INDEX) * (rules.TOKENS_PER_IMAGE - 1)


def step_tokens(tokenizer, step: int, expression: str = EXPRESSION) -> dict[str, int]:
    """Positions at query step `step` (1-based): the whole prompt, its window part (after the
    shared prefix), and what kv_policy="incremental" computes (the window at step 1, then from
    the previous round's [SEG] to the end: runtime.engine.GlusEngine.llm_step_incremental)."""
    past = [rules.ANSWER_SEG] * (min(step, rules.NUM_QUERY) - 1)
    ids = tokenizer.encode_prompt(rules.prompt_text(expression, past))
    prefix = tokenizer.encode_prompt(rules.prefix_text())
    rest = ids[len(prefix) :]
    incremental = positions(rest)
    if step > 1:
        eos = len(rest) - 1 - rest[::-1].index(tokenizer.eos_id)
        incremental = positions(rest[eos - 1 - rest[:eos][::-1].index(tokenizer.seg_id) :])
    return {"full": positions(ids), "prefix": positions(prefix), "window": positions(rest), "incremental": incremental}


# ---- LLM and CLIP from shapes ---------------------------------------------------------------------
def llm_linear_params(c: dict) -> int:
    """Weights every token multiplies through, from a LLaMA config dict (no embeddings)."""
    d, inter, layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    heads = c["num_attention_heads"]
    kvh = c.get("num_key_value_heads") or heads
    hd = d // heads
    return layers * (2 * d * heads * hd + 2 * d * kvh * hd + 3 * d * inter)  # q,o + k,v + mlp


def llm_flops(c: dict, new: int, total: int, out_dim: int = 256) -> float:
    """One LLM call: `new` tokens computed, attending to `total` positions (past + new)."""
    d = c["hidden_size"]
    linear = 2.0 * llm_linear_params(c) * new
    attention = 4.0 * c["num_hidden_layers"] * d * new * total
    last = 2.0 * c["vocab_size"] * d + 2.0 * (d * d + d * out_dim)  # lm_head + text_hidden_fcs
    return linear + attention + last


def clip_flops(clip: dict, llm_hidden: int, images: int) -> float:
    """`images` CLIP encodes + mm_projector."""
    d, inter, layers = clip["hidden_size"], clip["intermediate_size"], clip["num_hidden_layers"]
    patch = 3 * 14 * 14 * d  # conv patch embedding, per patch token
    linear = 2.0 * (layers * (4 * d * d + 2 * d * inter) * CLIP_TOKENS + patch * (CLIP_TOKENS - 1))
    attention = 4.0 * layers * d * CLIP_TOKENS * CLIP_TOKENS
    projector = 2.0 * d * llm_hidden * rules.TOKENS_PER_IMAGE
    return images * (linear + attention + projector)


# ---- SAM2 with FlopCounterMode ------------------------------------------------------------------------
def counted(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


def sam_flops(sam) -> dict:
    """FLOPs of each SAM2 stage of one frame; memory attention for M = 0..7 memories.

    `sam` is a throwaway sam2 SAM2Base: it is moved to the meta device."""
    import torch

    from reference.model import GlusModel

    sam = sam.to("meta")
    s = int(sam.image_size)
    view = types.SimpleNamespace(sam=sam, sam_image_size=s, _to_map=lambda t, size: GlusModel._to_map(None, t, size))
    keep = {}

    def encode():
        keep["f"] = GlusModel.encode_image(view, torch.zeros(1, 3, s, s, device="meta"))

    out = {"sam_image": counted(encode)}
    f = keep["f"]
    h, w = f.sizes[-1]
    mem = (torch.zeros(1, int(sam.mem_dim), h, w, device="meta"),) * 2
    out["memory_attention"] = {0: 0.0}  # M = 0: + no_mem_embed only
    for m in range(1, rules.NUM_MASKMEM + 1):
        out["memory_attention"][m] = counted(lambda m=m: GlusModel.condition(view, f, [mem] * m))
    cond = f.tokens[-1]

    def decode():
        keep["d"] = GlusModel.decode(view, f, cond, torch.zeros(256, device="meta"))

    out["mask_decoder"] = counted(decode)
    out["memory_encoder"] = counted(lambda: GlusModel.encode_memory(view, f, cond, keep["d"].low_res_logits))
    return out


def sam_yaml_flops(yaml_path) -> dict:
    from reference.sam import build_sam2_model

    return sam_flops(build_sam2_model(yaml_path))


# ---- one model ------------------------------------------------------------------------------------
@dataclass
class ModelFlops:
    llm: dict  # LLaMA config dict (hidden_size, intermediate_size, ..., vocab_size)
    clip: dict  # CLIP vision sizes
    sam: dict  # sam_flops()
    tokenizer: object
    out_dim: int = 256

    def tokens(self, step: int) -> dict[str, int]:
        return step_tokens(self.tokenizer, step)

    def llm_call(self, new: int, total: int) -> float:
        return llm_flops(self.llm, new, total, self.out_dim)

    def clip_images(self, n: int) -> float:
        return clip_flops(self.clip, self.llm["hidden_size"], n)

    def sam_step(self, memories: int) -> float:
        s = self.sam
        return s["sam_image"] + s["memory_attention"][memories] + s["mask_decoder"] + s["memory_encoder"]

    def prefix(self) -> float:
        """The runtime's once-per-video work: 4 context images and the prefix prefill."""
        p = self.tokens(1)["prefix"]
        return self.clip_images(rules.NUM_CONTEXT) + self.llm_call(p, p)

    def step(self, variant: str, step: int, memories: int) -> dict[str, float]:
        """FLOPs of query step `step` (1-based) by stage: llm, clip, sam2."""
        tk = self.tokens(step)
        if variant == "reference":
            llm = self.llm_call(tk["full"], tk["full"])
            clip = self.clip_images(rules.NUM_CONTEXT + min(step, rules.NUM_QUERY))
        else:
            llm = self.llm_call(tk["window" if variant == "exact" else "incremental"], tk["full"])
            clip = self.clip_images(1)
        return {"llm": llm, "clip": clip, "sam2": self.sam_step(memories)}

    def steady_frame(self, variant: str) -> dict[str, float]:
        """One frame of a long video: full window, 7 memories."""
        return self.step(variant, rules.NUM_QUERY + 1, rules.NUM_MASKMEM)

    def video(self, variant: str, n_frames: int) -> float:
        """Total FLOPs of one expression over an n-frame video (every frame answered [SEG])."""
        total = 0.0 if variant == "reference" else self.prefix()
        for t in range(n_frames):
            m = len([k for k in rules.memory_frame_indices(t) if k < t])
            total += sum(self.step(variant, t + 1, m).values())
        return total

    def stage_table(self) -> dict[str, float]:
        """FLOPs of each stage the stage benchmarks time, keyed like them."""
        s = self.sam
        tk = self.tokens(rules.NUM_QUERY + 1)
        out = {
            "vision": self.clip_images(1),
            "llm_prefix": self.llm_call(tk["prefix"], tk["prefix"]),
            "llm_window_exact": self.llm_call(tk["window"], tk["full"]),
            "llm_window_incremental": self.llm_call(tk["incremental"], tk["full"]),
            "sam_image": s["sam_image"],
            "mask_decoder": s["mask_decoder"],
            "memory_encoder": s["memory_encoder"],
        }
        for m, v in s["memory_attention"].items():
            out[f"memory_attention_m{m}"] = v
        return out

    def summary(self) -> dict:
        frames = {v: self.steady_frame(v) for v in VARIANTS}
        return {
            "tokens_steady": self.tokens(rules.NUM_QUERY + 1),
            "per_frame": frames,
            "reference_split": split(frames["reference"]),
            "runtime_prefix_once": self.prefix(),
            "stages": self.stage_table(),
            "llm_linear_params": llm_linear_params(self.llm),
        }


def split(stages: dict) -> dict:
    total = sum(stages.values())
    return {k: v / total for k, v in stages.items()}


def shape_flops(shape: str, tokenizer, cache_dir=None) -> ModelFlops:
    """ModelFlops of a reference.make_tiny shape, from SHAPES alone (SAM2 counted on meta).

    With cache_dir, SAM2's counts are kept there (building hiera-L to count it takes seconds)."""
    import hashlib
    import json
    import tempfile
    from importlib import resources
    from pathlib import Path

    import sam2
    import torch

    from reference.make_tiny import LLAMA_7B_VOCAB, SHAPES, write_sam2_yaml

    spec = SHAPES[shape]
    llm = dict(spec["llama"], vocab_size=tokenizer.vocab_size if shape == "tiny" else LLAMA_7B_VOCAB)
    cached = None
    if cache_dir is not None:
        h = hashlib.sha256(f"{spec['sam2']}:{torch.__version__}:{getattr(sam2, '__version__', '')}".encode())
        for src in (__file__, resources.files("reference") / "model.py"):
            h.update(Path(str(src)).read_bytes())
        cached = Path(cache_dir) / f"samflops-{shape}-{h.hexdigest()[:16]}.json"
        if cached.is_file():
            sam = json.loads(cached.read_text())
            sam["memory_attention"] = {int(k): v for k, v in sam["memory_attention"].items()}
            return ModelFlops(llm, spec["clip"], sam, tokenizer)
    if spec["sam2"] is None:  # GLUS's own hiera-L config
        sam = sam_yaml_flops(Path(str(resources.files("sam2") / "configs/sam2/sam2_hiera_l.yaml")))
    else:
        with tempfile.TemporaryDirectory() as d:
            yaml = Path(d) / "sam2.yaml"
            write_sam2_yaml(yaml, spec["sam2"])
            sam = sam_yaml_flops(yaml)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(json.dumps(sam))
    return ModelFlops(llm, spec["clip"], sam, tokenizer)


def format_split(name: str, summary: dict) -> str:
    r, s = summary["per_frame"]["reference"], summary["reference_split"]
    total = sum(r.values())
    return (
        f"{name}: reference loop {total / 1e9:,.1f} GFLOP/frame = LLM {r['llm'] / 1e9:,.1f} "
        f"({s['llm']:.1%}) + 8 CLIP encodes {r['clip'] / 1e9:,.1f} ({s['clip']:.1%}) + SAM2 "
        f"{r['sam2'] / 1e9:,.1f} ({s['sam2']:.1%})"
    )
