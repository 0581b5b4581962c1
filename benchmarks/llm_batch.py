"""What batching the LLM across expressions gains: one call for the windows of n expressions
over the shared prefix, against the loop of n calls, on the medium model (fp32 and int8).

    python -m benchmarks.llm_batch [--counts 1,2,4,8] [--repeats 5]

Both sides are the engine's own: engines built with `export.build --batched-llm` (the
"llm_batched" graph of export/llm_batched.py, int8-quantized with the LLM's method), the loop
Stages.llm_step once per expression (batch_llm=False), the batch Stages.llm_steps_batched
(what frame_step runs with batch_llm=True), each from the window's tokens (embedding and
padding included) to [SEG] and next token. ONNX Runtime, 2 threads, alternating, medians of
--repeats. Parity: each batched row's [SEG] against the loop's. Writes llm-batch-medium.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/threads.py

RESULTS = Path(__file__).parent / "results"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.llm_batch", description=__doc__.split("\n")[0])
    p.add_argument("--counts", default="1,2,4,8")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=str(RESULTS))
    a = p.parse_args(argv)
    counts = [int(c) for c in a.counts.split(",")]
    import warnings

    from evalkit import synth
    from export.onnx_utils import cosine, rel_error
    from runtime import rules
    from runtime.errors import UnknownFilesWarning
    from runtime.stages import Stages

    from . import models
    from .machine import load_average, machine_info, machine_slug

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnknownFilesWarning)
        stages = {
            prec: Stages.load(models.engine_dir("medium", prec, batched_llm=True), threads=2)
            for prec in ("fp32", "int8")
        }
    method = stages["int8"].manifest.graphs["llm_batched"]["quantization"]["method"]

    load_before = load_average()
    v = synth.make_video(7, 0, 8, (96, 128), per_object=2)
    texts = list(dict.fromkeys(e.text for e in v.expressions))
    while len(texts) < max(counts):
        texts += [f"{t} again" for t in texts][: max(counts) - len(texts)]
    frames = list(v.annotation.images)
    rows, parity, build_rows = {}, {}, {}
    for prec, st in stages.items():
        build_rows[prec] = st.manifest.data["parity"]["llm_batched_rows"]
        ctx = st.clip_tokens([frames[i] for i in rules.context_frame_indices(len(frames))])
        prefix = st.prefix(ctx)
        window = list(st.clip_tokens(frames[: rules.NUM_QUERY]))
        past = [rules.ANSWER_SEG] * (rules.NUM_QUERY - 1)
        requests = [(t, past, window) for t in texts]
        st.graph("llm_batched")  # opened before the timing
        for n in counts:

            def loop(n=n, st=st, prefix=prefix, requests=requests):
                return [st.llm_step(prefix, *r) for r in requests[:n]]

            def batch(n=n, st=st, prefix=prefix, requests=requests):
                return st.llm_steps_batched(prefix, requests[:n])

            times = {"loop": [], "batch": []}
            loop(), batch()  # warm-up
            for _ in range(a.repeats):
                for name, fn in (("loop", loop), ("batch", batch)):
                    t = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t)
            want, got = loop(), batch()
            med = {k: statistics.median(x) for k, x in times.items()}
            rows[f"{prec} {n}"] = {
                "precision": prec,
                "expressions": n,
                "loop_ms": 1000 * med["loop"],
                "batch_ms": 1000 * med["batch"],
                "speedup": med["loop"] / med["batch"],
                "tokens": [len(st.window_ids(prefix, r[0], past)) for r in requests[:n]],
            }
            parity[f"{prec} {n}"] = {
                "seg_rel_error_max": max(rel_error(g[0], w[0]) for g, w in zip(got, want)),
                "seg_cosine_min": min(cosine(g[0], w[0]) for g, w in zip(got, want)),
                "next_token_agrees": all(g[1] == w[1] for g, w in zip(got, want)),
            }
    load = {"before": load_before, "after": load_average()}
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
        "build_row_check": build_rows,
        "load_average": load,
    }
    (out / "llm-batch-medium.json").write_text(json.dumps(res, indent=1))
    lines = [
        f"## The LLM batched across expressions: medium model, one window step (machine {info['slug']})",
        "",
        f"{info['cpu']}, {info['cores']} cores, {res['date']}; ONNX Runtime, 2 threads; int8: {method} (the"
        f" engine's LLM method, the batched graph quantized with it); a window of {rules.NUM_QUERY} frames per"
        f" expression on the shared prefix ({prefix.length} positions); medians of {a.repeats} alternating"
        " repeats. Loop: one llm call per expression (batch_llm=False, the default); batch: one call of the"
        " engine's llm_batched graph (`export.build --batched-llm`, export/llm_batched.py), which the runtime"
        " runs with `batch_llm=True` (segment_video, stream). Both from the window's tokens to [SEG]."
        f" Load average (1/5/15 min) before {load['before']}, after {load['after']} on {info['cores']} cores:"
        " other work on the cores slows both sides; the ratio is what to read.",
        "",
        "| precision | expressions | loop ms | batch ms | speed-up | [SEG] rel. error max (batch vs loop) |"
        " cosine min | next token agrees |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k, r in rows.items():
        q = parity[k]
        lines.append(
            f"| {r['precision']} | {r['expressions']} | {r['loop_ms']:.1f} | {r['batch_ms']:.1f} |"
            f" {r['speedup']:.2f}x | {q['seg_rel_error_max']:.1e} | {q['seg_cosine_min']:.6f} |"
            f" {'yes' if q['next_token_agrees'] else 'no'} |"
        )
    lines += [
        "",
        "The build's own row check (manifest parity `llm_batched_rows`, three window lengths): "
        + "; ".join(
            f"{prec} bit-identical {'yes' if r['bit_identical'] else 'no'}, [SEG] cosine to the one-window call"
            f" >= {r['seg_cosine_min']:.6f}"
            + (
                f", to fp32 >= {r['seg_cosine_to_fp32_min']:.5f} (one-window int8 calls:"
                f" {r['loop_seg_cosine_to_fp32_min']:.5f})"
                if "seg_cosine_to_fp32_min" in r
                else ""
            )
            for prec, r in build_rows.items()
        )
        + ". fp32 rows are the loop's bit for bit (right padding: no real token attends to the padding);"
        " dynamic int8 quantizes activations per tensor, so one row's scale depends on the others'.",
    ]
    (out / "llm-batch-medium.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
