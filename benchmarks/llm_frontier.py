"""The frontier of asking the LLM less: held-out J&F against the speed-up over GLUS's reference loop.

    python -m benchmarks.llm_frontier [--frames 16] [--repeats 3]

J&F: the trained default model on the held-out set, int8 engine (benchmarks.llm_every's
results, llm-every-glus-tiny.json: run that first). Speed-up: measured here on the medium model
(int8, exact and incremental windows, llm_every = 1, 2, 4, 8, 16, "auto"), interleaved with the
reference loop in worker processes, ratios of medians. The medium model has random weights, so
its "auto" asks the LLM as often as its own random answers make it; the "auto" point of the
frontier is instead placed at the LLM rate the trained model had on the held-out set, by the
line time = a + b x LLM rate fitted through the fixed-k rows of the same run (printed beside
the measured point). GLUS-7B widths: from the real-shapes benchmark's measured split at 2 layers
extrapolated to 32 (real-shapes-glus-7b-L2.json): the LLM window and CLIP scale with the LLM
rate, the rest is as measured. Writes llm-frontier.{json,md,svg}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/threads.py

RESULTS = Path(__file__).parent / "results"
EVERY = ("1", "2", "4", "8", "16", "auto")
GOAL_SPEEDUP, GOAL_DROP = 10.0, 0.01


def measure_medium(frames: int, repeats: int, size=(96, 128)) -> dict:
    from . import models
    from .harness import ModelBench, synth_video
    from .timing import interleaved
    from .worker import Worker

    mb = ModelBench("medium")
    glus_dir, clip_dir = mb.dirs
    video, expression, _ = synth_video(frames, size)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.save(tmp / "frames.npy", np.stack(video))
        ref = Worker(
            tmp / "frames.npy", expression, tmp / "r.npz", "reference", str(glus_dir), str(clip_dir), cwd=models.REPO
        )
        eng = Worker(
            tmp / "frames.npy", expression, tmp / "e.npz", "engine", str(mb.engine_dir("int8")), cwd=models.REPO
        )
        try:
            ref.wait_ready()
            eng.wait_ready()
            rates: dict[str, float] = {}

            def engine_run(policy, every):
                info = eng.run_info(policy, every)
                rates[f"{policy} {every}"] = info["llm_rate"]
                return info["seconds"]

            variants = {"reference": lambda: ref.run()}
            for policy in ("exact", "incremental"):
                for every in EVERY:
                    variants[f"{policy} {every}"] = lambda p=policy, e=every: engine_run(p, e)
            times = interleaved(variants, repeats)
        finally:
            ref.kill()
            eng.kill()
    base = statistics.median(times["reference"])
    return {
        "frames": frames,
        "size": list(size),
        "repeats": repeats,
        "reference_s": base,
        "rows": {
            k: {
                "median_s": statistics.median(v),
                "ms_per_frame": 1000 * statistics.median(v) / frames,
                "speedup": base / statistics.median(v),
                "llm_rate": rates.get(k, 1.0),
            }
            for k, v in times.items()
        },
    }


def stage_split(frames: int, every_list=("1", "16"), size=(96, 128)) -> dict:
    """Where a frame's time goes on the medium model (int8, exact window), per llm_every: seconds
    in each graph, the rest (tokenizing, resizing, the bank) as "host", from one timed run after
    a warm-up in this process."""
    from runtime import GlusEngine
    from runtime.errors import UnknownFilesWarning

    from .harness import ModelBench, synth_video

    mb = ModelBench("medium")
    video, expression, _ = synth_video(frames, size)
    with warnings.catch_warnings():  # the bench cache's key file beside the manifest
        warnings.simplefilter("ignore", UnknownFilesWarning)
        engine = GlusEngine.load(mb.engine_dir("int8"))
    graphs = engine._stages.graphs  # benchmark-only peek at the graphs, to time each
    spent: dict[str, float] = {}
    for name, g in graphs.items():

        def timed(*a, _run=g.run, _name=name, **kw):
            t = time.perf_counter()
            try:
                return _run(*a, **kw)
            finally:
                spent[_name] = spent.get(_name, 0.0) + time.perf_counter() - t

        g.run = timed
    out = {}
    for every in every_list:
        kw = {"llm_every": every if every == "auto" else int(every)}
        engine.segment_video(video, [expression], **kw)  # warm-up
        spent.clear()
        t = time.perf_counter()
        engine.segment_video(video, [expression], **kw)
        total = time.perf_counter() - t
        shares = {k: v / total for k, v in sorted(spent.items(), key=lambda kv: -kv[1])}
        shares["host"] = 1.0 - sum(shares.values())
        out[every] = {"ms_per_frame": 1000 * total / frames, "share": shares}
    return out


def fit_line(points: list[tuple[float, float]]) -> tuple[float, float]:
    """(a, b) of the least-squares line y = a + b x."""
    x, y = np.array([p[0] for p in points]), np.array([p[1] for p in points])
    b, a = np.polyfit(x, y, 1)
    return float(a), float(b)


def glus7b_seconds(real: dict, policy: str, rate: float) -> float:
    """Per frame-expression at 32 layers, int8: the measured rest, CLIP (one frame's encode over
    the video's expressions) and the LLM window (x its 32-layer FLOP ratio) scaled by the rate."""
    key = f"runtime-int8-{policy}"
    e = real["extrapolated_32"][key]
    clip_s = real["measured"]["stages"]["vision|fp32"]["median_ms"] / 1000 / len(real["video"]["expressions"])
    rest = e["measured_s"] - e["llm_s"] - clip_s
    return rest + rate * (clip_s + e["llm_s"] * e["llm_flop_ratio"])


def glus7b_flop_split(real: dict, policy: str, rate: float) -> dict:
    """TFLOP per frame at 32 layers: LLM window, CLIP, SAM2 (rate scales the first two)."""
    pf = real["flops"]["depth"]["per_frame"][policy]
    ratio = real["extrapolated_32"][f"runtime-int8-{policy}"]["llm_flop_ratio"]
    return {"llm": rate * pf["llm"] * ratio / 1e12, "clip": rate * pf["clip"] / 1e12, "sam2": pf["sam2"] / 1e12}


def render(series: dict[str, list[dict]], base_jf: float, title: str) -> str:
    """J&F against speed-up (log axis), one colour per series, the goal corner shaded."""
    W, H, L, R, T, B = 800, 420, 64, 230, 34, 52
    xs = [p["speedup"] for s in series.values() for p in s]
    js = [p["jf"] for s in series.values() for p in s]
    x0, x1 = 0.8, max(16.0, max(xs) * 1.15)
    lo, hi = min(js + [base_jf - GOAL_DROP]) - 0.02, max(js) + 0.02

    def x(v):
        return L + (W - L - R) * (math.log(v) - math.log(x0)) / (math.log(x1) - math.log(x0))

    def y(v):
        return T + (H - T - B) * (hi - v) / (hi - lo)

    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
        f'<rect width="{W}" height="{H}" fill="white"/>',
        f'<text x="{(W - R + L) / 2}" y="20" text-anchor="middle" font-size="14">{escape(title)}</text>',
        f'<rect x="{x(GOAL_SPEEDUP):.1f}" y="{T}" width="{W - R - x(GOAL_SPEEDUP):.1f}"'
        f' height="{y(base_jf - GOAL_DROP) - T:.1f}" fill="#2ca02c" fill-opacity="0.15"/>',
        f'<text x="{x(GOAL_SPEEDUP) + 4:.1f}" y="{y(base_jf - GOAL_DROP) - 6:.1f}" fill="#2ca02c">10x, ≤ 1 pt</text>',
    ]
    for v in (1, 2, 4, 8, 10, 16, 32):
        if x0 <= v <= x1:
            out.append(f'<line x1="{x(v):.1f}" x2="{x(v):.1f}" y1="{T}" y2="{H - B}" stroke="#ddd"/>')
            out.append(f'<text x="{x(v):.1f}" y="{H - B + 16}" text-anchor="middle">{v}x</text>')
    step = 0.02 if hi - lo < 0.2 else 0.05
    v = math.ceil(lo / step) * step
    while v <= hi:
        out.append(f'<line x1="{L}" x2="{W - R}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{L - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.2f}</text>')
        v += step
    out.append(
        f'<line x1="{L}" x2="{W - R}" y1="{y(base_jf):.1f}" y2="{y(base_jf):.1f}"'
        ' stroke="#888" stroke-dasharray="4 3"/>'
    )
    out.append(
        f'<text x="{(W - R + L) / 2}" y="{H - 12}" text-anchor="middle">'
        "speed-up per frame over the reference loop</text>"
    )
    out.append(
        f'<text x="16" y="{(H - B + T) / 2}" text-anchor="middle" transform="rotate(-90 16 {(H - B + T) / 2})">'
        "held-out J&amp;F (trained default model, int8)</text>"
    )
    for k, (name, pts) in enumerate(series.items()):
        c = colours[k % len(colours)]
        pts = sorted(pts, key=lambda p: p["speedup"])
        path = " ".join(f"{x(p['speedup']):.1f},{y(p['jf']):.1f}" for p in pts)
        out.append(f'<polyline points="{path}" fill="none" stroke="{c}" stroke-opacity="0.5"/>')
        for p in pts:
            out.append(f'<circle cx="{x(p["speedup"]):.1f}" cy="{y(p["jf"]):.1f}" r="4" fill="{c}"/>')
            out.append(
                f'<text x="{x(p["speedup"]) + 5:.1f}" y="{y(p["jf"]) - 5:.1f}" fill="{c}">{escape(p["label"])}</text>'
            )
        out.append(f'<circle cx="{W - R + 16}" cy="{T + 10 + 18 * k}" r="4" fill="{c}"/>')
        out.append(f'<text x="{W - R + 24}" y="{T + 14 + 18 * k}">{escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.llm_frontier", description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(RESULTS))
    a = p.parse_args(argv)
    from .machine import machine_info, machine_slug

    held = json.loads((RESULTS / "llm-every-glus-tiny.json").read_text())
    real = json.loads((RESULTS / "real-shapes-glus-7b-L2.json").read_text())
    med = measure_medium(a.frames, a.repeats)
    split = stage_split(a.frames)
    hrows = held["rows"]
    base_jf = hrows["1"]["JF"]
    table, series = [], {}
    for policy, suffix in (("exact", ""), ("incremental", "+incremental")):
        rows = med["rows"]
        line = fit_line([(rows[f"{policy} {k}"]["llm_rate"], rows[f"{policy} {k}"]["median_s"]) for k in EVERY[:-1]])
        for every in EVERY:
            name = every + suffix
            h = hrows.get(name) or hrows.get(every)  # J&F of the incremental window where it was measured
            rate = h["llm_rate"]
            m = rows[f"{policy} {every}"]
            fitted = med["reference_s"] / (line[0] + line[1] * rate)
            speed = m["speedup"] if every != "auto" else fitted
            s7 = real["extrapolated_32"]["reference"]["extrapolated_s"] / glus7b_seconds(real, policy, rate)
            table.append(
                {
                    "variant": name,
                    "jf": h["JF"],
                    "jf_source": name if name in hrows else every,
                    "needs": {k: v["JF"] for k, v in h["needs"].items()},
                    "llm_rate_heldout": rate,
                    "medium_measured_speedup": m["speedup"],
                    "medium_llm_rate": m["llm_rate"],
                    "medium_speedup": speed,
                    "glus7b_speedup": s7,
                    "glus7b_tflop": glus7b_flop_split(real, policy, rate),
                }
            )
            series.setdefault(f"medium, {policy}", []).append({"label": every, "speedup": speed, "jf": h["JF"]})
            series.setdefault(f"GLUS-7B widths, {policy}", []).append({"label": every, "speedup": s7, "jf": h["JF"]})
    info = machine_info()
    info["slug"] = machine_slug(info)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    ok = [r for r in table if r["medium_speedup"] >= GOAL_SPEEDUP and r["jf"] >= base_jf - GOAL_DROP]
    res = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": info,
        "medium": med,
        "medium_stage_split": split,
        "rows": table,
        "meets_goal": ok,
    }
    (out / "llm-frontier.json").write_text(json.dumps(res, indent=1))
    (out / "llm-frontier.svg").write_text(
        render(series, base_jf, "Asking the LLM less: held-out J&F against speed-up (int8)")
    )
    lines = [
        f"## Asking the LLM less: the frontier (machine {info['slug']})",
        "",
        f"{info['cpu']}, {info['cores']} cores, {res['date']}. J&F: trained default model, held-out set, int8"
        f" ({held['date']}, llm-every-glus-tiny.md). Medium: {a.frames} frames at 96x128, int8, {a.repeats} interleaved"
        " repeats after a warm-up, speed-up = reference median / variant median; for auto, the speed-up at the"
        " trained model's held-out LLM rate from the line through the fixed-k rows (the medium model's own"
        " measured auto, at its random weights' rate, beside it). GLUS-7B: 32 layers extrapolated from the"
        " 2-layer measurement (real-shapes-glus-7b-L2.md), not measured.",
        "",
        "| variant | J&F | ΔJ&F | colour / shape / motion | LLM on (held-out) | medium speed-up |"
        " medium measured (its LLM rate) | GLUS-7B speed-up | GLUS-7B TFLOP/frame LLM / CLIP / SAM2 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        n, f = r["needs"], r["glus7b_tflop"]
        lines.append(
            f"| {r['variant']} | {r['jf']:.4f} | {r['jf'] - base_jf:+.4f} | {n['colour']:.3f} / {n['shape']:.3f} /"
            f" {n['motion']:.3f} | {100 * r['llm_rate_heldout']:.0f}% | **{r['medium_speedup']:.2f}x** |"
            f" {r['medium_measured_speedup']:.2f}x ({100 * r['medium_llm_rate']:.0f}%) | {r['glus7b_speedup']:.2f}x |"
            f" {f['llm']:.2f} / {f['clip']:.2f} / {f['sam2']:.2f} |"
        )
    lines += [
        "",
        f"Reference loop on the medium model: {1000 * med['reference_s'] / a.frames:.0f} ms per frame."
        f" Meets 10x at ≤ 1 point: {', '.join(r['variant'] for r in ok) if ok else 'none'}.",
        "",
        "Where the medium model's frame goes (int8, exact window, one timed run after a warm-up, share of the"
        " wall time per graph; host: tokenizing, resizing, the bank):",
        "",
        *(
            f"- llm_every={k}: {v['ms_per_frame']:.0f} ms per frame; "
            + ", ".join(f"{g} {100 * x:.0f}%" for g, x in v["share"].items())
            for k, v in split.items()
        ),
        "",
        "![frontier](llm-frontier.svg)",
    ]
    (out / "llm-frontier.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
