"""What stacking several cameras' frames into one SAM2 image-encoder call would gain, and what it
would change, on the medium model (fp32): the question behind serving/cameras.py's choice to run
the cameras of one Triton `execute` one by one (or in threads) instead of as one batch.

    python -m benchmarks.sam_image_batch [--counts 1,2,4,8] [--repeats 5]

The engine's sam_image graph has a batch of 1. Here the same module (export.sam_graphs.
SamImageGraph) is exported with a batch axis; n frames are encoded as n calls of batch 1 and as
one call of batch n, alternating, on ONNX Runtime with 2 threads, medians of --repeats. Exactness:
each batched row against the same frame encoded alone by the same graph, and batch 1 of this
graph against the engine's own graph (exported without the axis). Writes
results/sam-image-batch-medium.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/threads.py

RESULTS = Path(__file__).parent / "results"


def export_batched(model, path: Path) -> Path:
    import torch

    from export.onnx_utils import GraphSpec, export_graph
    from export.sam_graphs import SamImageGraph

    s = int(model.sam_image_size)
    spec = GraphSpec(
        name="sam_image",
        module=SamImageGraph(model),
        inputs={"image": torch.randn(2, 3, s, s, generator=torch.Generator().manual_seed(0))},
        outputs=["high_res0", "high_res1", "image_feat"],
        dynamic={"image": {0: "B"}},
        dim_min={"B": 1},
    )
    return export_graph(spec, path)


def max_abs(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


def measure(session, engine_session, size: int, counts: list[int], repeats: int) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for n in counts:
        x = rng.standard_normal((n, 3, size, size)).astype(np.float32)
        singles = [session.run(None, {"image": x[i : i + 1]}) for i in range(n)]
        batched = session.run(None, {"image": x})
        engine = [engine_session.run(None, {"image": x[i : i + 1]}) for i in range(n)]
        loop_s, batch_s = [], []
        for _ in range(repeats):
            t = time.perf_counter()
            for i in range(n):
                session.run(None, {"image": x[i : i + 1]})
            loop_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            session.run(None, {"image": x})
            batch_s.append(time.perf_counter() - t)
        lo, ba = statistics.median(loop_s), statistics.median(batch_s)
        rows.append(
            {
                "frames": n,
                "loop_ms": 1000 * lo,
                "batch_ms": 1000 * ba,
                "speedup": lo / ba,
                "batch_vs_single_max_abs": max(max_abs([b[i : i + 1] for b in batched], singles[i]) for i in range(n)),
                "batch_rows_bit_identical": all(
                    np.array_equal(b[i : i + 1], s) for i in range(n) for b, s in zip(batched, singles[i])
                ),
                "axis_graph_vs_engine_graph_max_abs": max(max_abs(s, e) for s, e in zip(singles, engine)),
            }
        )
        print(f"frames {n}: loop {1000 * lo:.1f} ms, batch {1000 * ba:.1f} ms, {lo / ba:.2f}x", flush=True)
    return rows


def to_markdown(out: dict) -> str:
    m = out["machine"]
    lines = [
        f"## SAM2's image encoder batched across cameras: medium model, fp32 (machine {m['slug']})",
        "",
        f"{m.get('cpu', '')}, {m.get('cores', '?')} cores, {out['date']}; ONNX Runtime, 2 threads; image"
        f" {out['size']}x{out['size']}; medians of {out['repeats']} alternating repeats. Loop: n calls of batch 1"
        " (what serving/cameras.py does); batch: one call with a batch axis (benchmarks/sam_image_batch.py).",
        "",
        "| frames | loop ms | batch ms | speed-up | batched rows vs alone, max abs | bit-identical |",
        "|---|---|---|---|---|---|",
    ]
    for r in out["rows"]:
        lines.append(
            f"| {r['frames']} | {r['loop_ms']:.1f} | {r['batch_ms']:.1f} | {r['speedup']:.2f}x"
            f" | {r['batch_vs_single_max_abs']:.1e} | {'yes' if r['batch_rows_bit_identical'] else 'no'} |"
        )
    worst = max(r["axis_graph_vs_engine_graph_max_abs"] for r in out["rows"])
    exact = all(r["batch_rows_bit_identical"] for r in out["rows"])
    best = max(r["speedup"] for r in out["rows"] if r["frames"] > 1)
    lines += [
        "",
        f"Best speed-up of a stacked call here: {best:.2f}x. "
        + (
            "Stacked rows equal the frames encoded alone, bit for bit, in this graph; "
            if exact
            else "Stacked rows differ from the frames encoded alone (table); "
        )
        + f"but the graph exported with a batch axis differs at batch 1 from the engine's own by up to {worst:.1e}"
        " (the exporter optimises the two differently), so serving would need that graph in the engine, and"
        " with the default engine's int8 image encoder (activation scales per tensor, computed at run time over"
        " the batch) a frame's features would depend on the other cameras' frames. On this CPU the convolutions"
        " and attention are compute-bound at batch 1 and stacking gains nothing, so serving/cameras.py runs the"
        " cameras of one `execute` one by one or in threads. A GPU, where batch 1 leaves the device idle, is"
        " where stacking should pay: not measured (no GPU).",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sam_image_batch", description=__doc__.split("\n")[0])
    p.add_argument("--counts", default="1,2,4,8")
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args(argv)
    counts = [int(c) for c in a.counts.split(",")]

    import reference
    from export.onnx_utils import ort_session

    from . import models
    from .machine import machine_info, machine_slug

    model = reference.load(*models.checkpoint("medium")).model
    engine_graph = models.engine_dir("medium", "fp32") / "sam_image.onnx"
    with tempfile.TemporaryDirectory() as tmp:
        path = export_batched(model, Path(tmp) / "sam_image_batched.onnx")
        session = ort_session(path, threads=2)
        rows = measure(session, ort_session(engine_graph, threads=2), int(model.sam_image_size), counts, a.repeats)
    info = machine_info()
    info["slug"] = machine_slug(info)
    out = {
        "machine": info,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "size": int(model.sam_image_size),
        "repeats": a.repeats,
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sam-image-batch-medium.json").write_text(json.dumps(out, indent=2) + "\n")
    (RESULTS / "sam-image-batch-medium.md").write_text(to_markdown(out))
    print(f"wrote {RESULTS / 'sam-image-batch-medium.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
