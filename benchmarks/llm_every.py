"""How far `llm_every=k` goes: held-out J&F and time per frame of the default model's int8 engine
for k = 1, 2, 4, ... (offline, exact window), each against k = 1 in the same run.

    python -m benchmarks.llm_every [--every 1,2,4,8] [--videos 24] [--frames 12] [--size 128x128]

The held-out sets are benchmarks/heldout.py's (seeds no training run draws from); k has no
threshold to choose, so nothing here is tuned on them. Writes llm-every-glus-tiny.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/threads.py

RESULTS = Path(__file__).parent / "results"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.llm_every", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="models/glus-tiny")
    p.add_argument("--every", default="1,2,4,8", help="comma-separated k (1 first: the yardstick)")
    p.add_argument("--videos", type=int, default=24)
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--size", default="128x128")
    p.add_argument("--precision", default="int8", choices=["fp32", "int8"])
    p.add_argument("--out", default=str(RESULTS))
    a = p.parse_args(argv)
    ks = sorted({int(x) for x in a.every.split(",") if x})
    if not ks or ks[0] < 1:
        p.error("--every needs positive integers")
    from evalkit.heldout import score
    from runtime import GlusEngine
    from runtime.paths import cache_dir
    from training.data import write_heldout

    from .heldout import engine_dir_for
    from .machine import machine_info, machine_slug

    model = Path(a.model)
    h, _, w = a.size.partition("x")
    data = write_heldout(cache_dir() / f"heldout-{a.videos}x{a.frames}-{a.size}", a.videos, a.frames, (int(h), int(w)))
    engine = GlusEngine.load(
        engine_dir_for(model / "glus", model / "clip", a.precision, cache_dir() / "heldout-engines"), threads=2
    )
    rows = {}
    for k in ks:
        frames_done = [0]

        def segment(frames, texts, k=k, frames_done=frames_done):
            frames_done[0] += len(frames) * len(texts)
            return [r.masks for r in engine.segment_video(frames, texts, llm_every=k)]

        t = time.perf_counter()
        r = score(segment, data, progress=True, desc=f"llm_every={k}")
        seconds = time.perf_counter() - t
        rows[k] = {
            "JF": r["JF"],
            "J": r["J"],
            "F": r["F"],
            "needs": r["needs"],
            "seconds": seconds,
            "ms_per_frame_expression": 1000 * seconds / frames_done[0],
        }
    base = rows[ks[0]]
    info = machine_info()
    info["slug"] = machine_slug(info)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    data_out = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": info,
        "precision": a.precision,
        "videos": a.videos,
        "frames": a.frames,
        "size": a.size,
        "rows": rows,
    }
    (out / "llm-every-glus-tiny.json").write_text(json.dumps(data_out, indent=1))
    lines = [
        f"## llm_every on the default model, {a.precision} engine, held-out set (machine {info['slug']})",
        "",
        f"{info['cpu']}, {info['cores']} cores; {data_out['date']}; {a.videos} videos x {a.frames} frames at"
        f" {a.size}, offline, exact window; time = the whole scoring pass (decode, segment, write)"
        " per frame and expression, against k=1 in the same run.",
        "",
        "| llm_every | J&F | ΔJ&F vs k=1 | colour | shape | motion | ms / frame-expression | speed-up vs k=1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k, r in rows.items():
        n = r["needs"]
        lines.append(
            f"| {k} | {r['JF']:.4f} | {r['JF'] - base['JF']:+.4f} | {n['colour']['JF']:.3f} |"
            f" {n['shape']['JF']:.3f} | {n['motion']['JF']:.3f} | {r['ms_per_frame_expression']:.1f} |"
            f" {base['ms_per_frame_expression'] / r['ms_per_frame_expression']:.2f}x |"
        )
    (out / "llm-every-glus-tiny.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
