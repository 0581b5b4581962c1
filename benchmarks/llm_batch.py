"""What batching the LLM across expressions would gain: one call for the windows of n expressions
over the shared prefix, against today's loop of n calls, on the medium model (fp32 and int8).

    python -m benchmarks.llm_batch [--counts 1,2,4,8] [--repeats 5]

The engine's llm graph has a batch of 1. Here a graph with a batch axis is exported from the same
weights (BatchedLlm: windows right-padded, a mask over the padding, the prefix's KV cache passed
once with a batch of 1 and broadcast inside the graph, each row's last real token read), and
int8-quantized as the engine's (the method its manifest records). Both run on ONNX Runtime with
2 threads, alternating, medians of --repeats. Parity: each batched row's [SEG] against the loop's.
Writes llm-batch-medium.{json,md}; the runtime does not use such a graph (yet).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/threads.py

RESULTS = Path(__file__).parent / "results"


def batched_module(model):
    import torch
    from torch import nn

    class BatchedLlm(nn.Module):
        """(inputs_embeds [B,T,H], position_ids [B,T], new_mask [B,T] (1 real, 0 pad), last [B],
        past_kv [L,2,1,KVH,P,HD]) -> (seg_embedding [B,out], logits [B,V])."""

        def __init__(self):
            super().__init__()
            self.model = model
            self.num_layers = int(model.llm.config.num_hidden_layers)

        def forward(self, inputs_embeds, position_ids, new_mask, last, past_kv):
            from transformers import DynamicCache

            b = inputs_embeds.shape[0]
            p = past_kv.shape[4]
            cache = DynamicCache(
                [
                    (past_kv[i, 0].expand(b, -1, -1, -1), past_kv[i, 1].expand(b, -1, -1, -1))
                    for i in range(self.num_layers)
                ]
            )
            mask = torch.cat([torch.ones(b, p, dtype=new_mask.dtype), new_mask], 1)
            out = model.llm.model(
                inputs_embeds=inputs_embeds,
                position_ids=position_ids,
                attention_mask=mask,
                past_key_values=cache,
                use_cache=True,
            )
            h = out.last_hidden_state[torch.arange(b), last]  # [B, H]
            logits = model.llm.lm_head(h[:, None])[:, 0]
            return model.seg_head(h), logits

    return BatchedLlm().eval()


def export_batched(model, dims: dict, path: Path) -> Path:
    import torch

    from export.onnx_utils import GraphSpec, export_graph

    g = torch.Generator().manual_seed(0)
    b, t, p = 2, 5, 3
    spec = GraphSpec(
        name="llm_batch",
        module=batched_module(model),
        inputs={
            "inputs_embeds": torch.randn(b, t, dims["hidden"], generator=g) * 0.02,
            "position_ids": torch.arange(p, p + t, dtype=torch.int64)[None].repeat(b, 1),
            "new_mask": torch.ones(b, t, dtype=torch.int64),
            "last": torch.full((b,), t - 1, dtype=torch.int64),
            "past_kv": torch.randn(dims["layers"], 2, 1, dims["kv_heads"], p, dims["head_dim"], generator=g),
        },
        outputs=["seg_embedding", "logits"],
        dynamic={
            "inputs_embeds": {0: "B", 1: "T"},
            "position_ids": {0: "B", 1: "T"},
            "new_mask": {0: "B", 1: "T"},
            "last": {0: "B"},
            "past_kv": {4: "P"},
        },
        dim_min={"B": 1, "T": 1, "P": 0},
    )
    return export_graph(spec, path)


def pad_batch(embeds: list[np.ndarray], start: int):
    """Right-pad [1, T_i, H] windows into one batch: (embeds, position_ids, new_mask, last)."""
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.llm_batch", description=__doc__.split("\n")[0])
    p.add_argument("--counts", default="1,2,4,8")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=str(RESULTS))
    a = p.parse_args(argv)
    counts = [int(c) for c in a.counts.split(",")]
    import warnings

    from evalkit import synth
    from export.llm import llm_dims
    from export.onnx_utils import cosine, ort_session, rel_error
    from export.quantize import quantize_graph
    from runtime import rules
    from runtime.errors import UnknownFilesWarning
    from runtime.stages import Stages

    from . import models
    from .harness import ModelBench
    from .machine import machine_info, machine_slug

    mb = ModelBench("medium")
    work = models.cache_root() / "llm-batch-medium"
    work.mkdir(parents=True, exist_ok=True)
    fp32_path = work / "llm_batch.onnx"
    if not fp32_path.is_file():
        export_batched(mb.reference.model, llm_dims(mb.reference.model), fp32_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnknownFilesWarning)
        stages = {prec: Stages.load(mb.engine_dir(prec), threads=2) for prec in ("fp32", "int8")}
    method = stages["int8"].manifest.graphs["llm"]["quantization"]["method"]
    int8_path = work / f"llm_batch.int8-{method}.onnx"
    if not int8_path.is_file():
        quantize_graph(fp32_path, int8_path, method)
    sessions = {"fp32": ort_session(fp32_path, threads=2), "int8": ort_session(int8_path, threads=2)}

    v = synth.make_video(7, 0, 8, (96, 128), per_object=2)
    texts = list(dict.fromkeys(e.text for e in v.expressions))
    while len(texts) < max(counts):
        texts += [f"{t} again" for t in texts][: max(counts) - len(texts)]
    frames = list(v.annotation.images)
    rows, parity = {}, {}
    for prec, st in stages.items():
        ctx = st.clip_tokens([frames[i] for i in rules.context_frame_indices(len(frames))])
        prefix = st.prefix(ctx)
        window = list(st.clip_tokens(frames[: rules.NUM_QUERY]))
        past = [rules.ANSWER_SEG] * (rules.NUM_QUERY - 1)
        embeds = [st.embed(st.window_ids(prefix, t, past), window) for t in texts]
        kv = np.asarray(prefix.kv)
        sess = sessions[prec]
        for n in counts:
            feeds = dict(
                zip(("inputs_embeds", "position_ids", "new_mask", "last"), pad_batch(embeds[:n], prefix.length))
            )
            feeds["past_kv"] = kv

            def loop(n=n, st=st, prefix=prefix, embeds=embeds):
                return [st.llm(e, prefix.length, prefix.kv)[0][0] for e in embeds[:n]]

            def batch(feeds=feeds, sess=sess):
                return sess.run(None, feeds)[0]

            times = {"loop": [], "batch": []}
            loop(), batch()  # warm-up
            for _ in range(a.repeats):
                for name, fn in (("loop", loop), ("batch", batch)):
                    t = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t)
            want, got = np.stack(loop()), batch()
            med = {k: statistics.median(x) for k, x in times.items()}
            rows[f"{prec} {n}"] = {
                "precision": prec,
                "expressions": n,
                "loop_ms": 1000 * med["loop"],
                "batch_ms": 1000 * med["batch"],
                "speedup": med["loop"] / med["batch"],
                "tokens": [int(e.shape[1]) for e in embeds[:n]],
            }
            parity[f"{prec} {n}"] = {
                "seg_rel_error_max": max(rel_error(got[i], want[i]) for i in range(n)),
                "seg_cosine_min": min(cosine(got[i], want[i]) for i in range(n)),
            }
    info = machine_info()
    info["slug"] = machine_slug(info)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    res = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": info,
        "int8_method": method,
        "rows": rows,
        "parity": parity,
    }
    (out / "llm-batch-medium.json").write_text(json.dumps(res, indent=1))
    lines = [
        f"## The LLM batched across expressions: medium model, one window step (machine {info['slug']})",
        "",
        f"{info['cpu']}, {info['cores']} cores, {res['date']}; ONNX Runtime, 2 threads; int8: {method} (the"
        f" engine's); a window of {rules.NUM_QUERY} frames per expression on the shared prefix ({prefix.length}"
        f" positions); medians of {a.repeats} alternating repeats. Loop: today's, one llm call per expression;"
        " batch: one call of a graph with a batch axis (benchmarks/llm_batch.py), not used by the runtime.",
        "",
        "| precision | expressions | loop ms | batch ms | speed-up | [SEG] rel. error max (batch vs loop) |"
        " cosine min |",
        "|---|---|---|---|---|---|---|",
    ]
    for k, r in rows.items():
        q = parity[k]
        lines.append(
            f"| {r['precision']} | {r['expressions']} | {r['loop_ms']:.1f} | {r['batch_ms']:.1f} |"
            f" {r['speedup']:.2f}x | {q['seg_rel_error_max']:.1e} | {q['seg_cosine_min']:.6f} |"
        )
    (out / "llm-batch-medium.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
