"""Turn a benchmark results JSON into markdown tables (the README embeds the latest CPU one).

python -m benchmarks.report [RESULTS.json] [-o OUT.md]     # default: newest in results/
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MODEL_ORDER = ("trained", "tiny", "medium", "glus-7b")


def _models(section: dict | None) -> list[str]:
    if not section:
        return []
    return sorted(section, key=lambda m: (MODEL_ORDER.index(m) if m in MODEL_ORDER else 99, m))


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out + [""]


def _g(x: float) -> str:
    """GFLOP with sensible digits."""
    return f"{x / 1e9:,.0f}" if x >= 1e11 else f"{x / 1e9:,.2f}"


def machine_lines(d: dict) -> list[str]:
    m = d["machine"]
    peak = d.get("peak") or {}
    runs = d.get("runs") or [{}]
    last = runs[-1]
    lines = [
        f"Machine **{m['slug']}**: {m['cpu']}, {m['cores']} cores ({', '.join(m.get('isa', []))}), "
        f"{m.get('memory_gb', '?')} GB; Python {m.get('python')}, torch {m.get('torch')} "
        f"({m.get('torch_threads')} threads, OMP_WAIT_POLICY={m.get('omp_wait_policy')}), "
        f"ONNX Runtime {m.get('onnxruntime')} (intra-op spinning off), CPU execution. Both sides' "
        "thread pools wait without spinning: on a shared machine spinning costs 4-70x "
        "(benchmarks/threads.py)."
    ]
    if peak:
        lines.append(
            f"Measured peak (numpy fp32 {peak['n']}² matmul, all cores, same run): "
            f"**{peak['gflops_best']:.0f} GFLOP/s** (median {peak['gflops_median']:.0f}); "
            f"load average at the probe {peak.get('load_average')}."
        )
    if last:
        lines.append(
            f"Last run: {last.get('started')} ({last.get('mode')} set), wall "
            f"{last.get('wall_s', 0):.0f} s, load average {last.get('load_average_start')} → "
            f"{last.get('load_average_end')} (other jobs share these cores: figures are noisy)."
        )
    return lines + [""]


def flops_section(d: dict) -> list[str]:
    f = d.get("flops")
    if not f:
        return []
    rows = []
    for name in _models(f):
        s = f[name]
        pf = s["per_frame"]
        ref, ex, inc = (sum(pf[v].values()) for v in ("reference", "exact", "incremental"))
        sp = s["reference_split"]
        rows.append(
            [
                name,
                _g(ref),
                f"{sp['llm']:.0%} / {sp['clip']:.0%} / {sp['sam2']:.0%}",
                _g(ex),
                _g(inc),
                _g(s["runtime_prefix_once"]),
                f"{ref / ex:.2f}x",
                f"{ref / inc:.2f}x",
            ]
        )
    return [
        "### FLOPs per frame (counted from shapes; long-video steady state: full window, 7 memories)",
        "",
        *_table(
            [
                "model",
                "reference loop GFLOP",
                "LLM / 8×CLIP / SAM2",
                "runtime exact GFLOP",
                "runtime incremental GFLOP",
                "runtime prefix, once per video",
                "FLOP ratio exact",
                "FLOP ratio incremental",
            ],
            rows,
        ),
        "The FLOP ratios are the speed-ups the runtime's work reduction alone would give.",
        "",
    ]


def e2e_section(d: dict) -> list[str]:
    e = d.get("end_to_end")
    if not e:
        return []
    rows = []
    for name in _models(e):
        s = e[name]
        for v, t in s["variants"].items():
            dr = s.get("drift", {}).get(v)
            lo, hi = t["speedup_per_repeat"]
            rows.append(
                [
                    name,
                    v,
                    f"{t['per_frame_ms']:,.0f}",
                    f"{t['fps']:.2f}",
                    f"**{t['speedup']:.2f}x**" if v != "reference" else "1.00x",
                    f"{lo:.2f}–{hi:.2f}" if v != "reference" else "",
                    f"{s['achieved_gflops'][v]:.1f}",
                    f"{dr['iou_mean']:.4f} / {dr['iou_min']:.4f}" if dr else "",
                    f"{dr['seg_cosine_min']:.5f}" if dr else "",
                    f"{dr['vs_reference']['JF']:.4f}" if dr else "",
                ]
            )
    first = e[_models(e)[0]]
    return [
        f"### End to end, one expression, same video, interleaved runs (machine {first['machine']})",
        "",
        *_table(
            [
                "model",
                "variant",
                "ms / frame",
                "FPS",
                "speed-up (median)",
                "per-repeat range",
                "achieved GFLOP/s",
                "mask IoU vs ref (mean / min)",
                "[SEG] cos min",
                "J&F vs ref",
            ],
            rows,
        ),
        "; ".join(
            f"{n}: {e[n]['frames']} frames at {e[n]['size'][0]}x{e[n]['size'][1]}, {e[n]['repeats']} repeats"
            for n in _models(e)
        )
        + ". Per-frame figures divide a whole video's time (the runtime's once-per-video prefix "
        "included) by its frames.",
        "",
    ]


def drift_section(d: dict) -> list[str]:
    dr = d.get("drift")
    if not dr:
        return []
    rows = []
    for name in _models(dr):
        s = dr[name]
        rows.append([name, "reference", f"{s['reference_JF_vs_gt']:.4f}", "", "1.0000", "", ""])
        for v, r in s["variants"].items():
            x = r["summary"]
            rows.append(
                [
                    name,
                    v,
                    f"{x['JF_vs_gt']:.4f}",
                    f"{x['delta_JF_vs_reference']:+.4f}",
                    f"{x['JF_vs_reference']:.4f}",
                    f"{x['frac_frames_iou_ge_0.999']:.1%}",
                    f"{x['seg_cosine_min']:.5f} / {x['seg_cosine_mean']:.5f}",
                ]
            )
        st = s.get("streaming")
        if st:
            rows.append(
                [
                    name,
                    "stream fp32 (causal context)",
                    f"{st['JF_vs_gt']:.4f}",
                    f"{st['delta_JF_vs_offline']:+.4f} vs offline",
                    f"{st['JF_vs_offline']:.4f} vs offline",
                    "",
                    "",
                ]
            )
    first = dr[_models(dr)[0]]
    ds = first["dataset"]
    return [
        f"### J&F drift on the synthetic validation set (machine {first['machine']})",
        "",
        *_table(
            [
                "model",
                "variant",
                "J&F vs GT",
                "ΔJ&F vs reference",
                "J&F vs reference masks",
                "frames IoU ≥ 0.999",
                "[SEG] cos min / mean",
            ],
            rows,
        ),
        f"{ds['videos']} videos x {ds['frames']} frames at {ds['size'][0]}x{ds['size'][1]}, "
        f"{ds['expressions']} expressions (evalkit.synth seed {ds['seed']}). "
        + (
            "'trained' is the shipped model (models/glus-tiny): its J&F against the GT is real. "
            if "trained" in dr
            else ""
        )
        + (
            "The random models' J&F against the GT is near meaningless; for them the drift against "
            "the reference is the real figure. "
            if any(m != "trained" for m in dr)
            else ""
        )
        + "Per-expression values are in the JSON.",
        "",
    ]


def stages_section(d: dict) -> list[str]:
    st, cost = d.get("stages"), d.get("cost") or {}
    if not st:
        return []
    rows = []
    for name in _models(st):
        c = {r["key"]: r for r in (cost.get(name) or {}).get("rows", [])}
        for key, s in st[name]["stages"].items():
            r = c.get(key, {})
            rows.append(
                [
                    name,
                    s["stage"],
                    s["precision"],
                    f"{s['median_ms']:,.2f}",
                    s["rounds"],
                    _g(r["flops"]) if r else "",
                    f"{r['gflops']:.1f}" if r else "",
                    f"{r['share_of_peak']:.1%}" if r else "",
                ]
            )
    first = st[_models(st)[0]]
    return [
        f"### Per-stage latency and cost (machine {first['machine']}, ONNX Runtime CPU)",
        "",
        *_table(["model", "stage", "precision", "median ms", "rounds", "GFLOP", "GFLOP/s", "share of peak"], rows),
        "int8 GFLOP/s count the same (fp32-equivalent) operations. memory_attention M=0 is no "
        "call: + no_mem_embed only.",
        "",
    ]


def memory_section(d: dict) -> list[str]:
    mem, e2e = d.get("memory") or {}, d.get("end_to_end") or {}
    names = [n for n in MODEL_ORDER if n in mem or n in e2e] + sorted((set(mem) | set(e2e)) - set(MODEL_ORDER))
    if not names:
        return []
    rows = []
    for name in names:
        m = mem.get(name) or {}
        procs = (e2e.get(name) or {}).get("processes") or {}
        sizes = m.get("engine_bytes") or {}
        for v, p in procs.items():
            disk = m.get("checkpoint_bytes") if v == "reference" else sizes.get(v.split()[1])
            rows.append(
                [
                    name,
                    v,
                    f"{p['peak_rss_bytes'] / 2**20:,.0f}",
                    f"{disk / 2**20:,.1f}" if disk else "",
                    "yes" if p.get("imports_torch") else "no",
                ]
            )
        if not procs and sizes:
            rows += [[name, f"engine {k}", "", f"{b / 2**20:,.1f}", ""] for k, b in sizes.items()]
    slug = next((s[n]["machine"] for s in (mem, e2e) for n in names if n in s), "?")
    out = [
        f"### Memory (machine {slug})",
        "",
        *_table(
            [
                "model",
                "variant",
                "peak RSS MiB (own process, end-to-end runs)",
                "checkpoint / engine on disk MiB",
                "imports torch",
            ],
            rows,
        ),
        "Peak RSS is VmHWM of each end-to-end variant's own process (the two int8 variants share "
        "one); on disk: the checkpoint (GLUS + CLIP dirs) or the files the engine's manifest uses.",
    ]
    procs = [
        f"{n} {mem[n]['benchmark_process_peak_rss_bytes'] / 2**20:,.0f} MiB"
        for n in names
        if (mem.get(n) or {}).get("benchmark_process_peak_rss_bytes")
    ]
    if procs:
        out.append(
            "The benchmark session itself (every model loaded) had peaked at " + ", ".join(procs) + " when measured."
        )
    for name in names:
        st = (mem.get(name) or {}).get("stream")
        if st:
            out.append(
                f"Long stream ({name}, {st['engine']} engine, {st['frames']} frames): RSS slope "
                f"**{st['rss_slope_kib_per_frame']:+.2f} KiB/frame** from frame {st['fit_from']} on "
                f"({st['rss_growth_mib']:+.1f} MiB over the fit); stream state at most "
                f"{st['state_bytes_max'] / 1024:,.0f} KiB."
            )
    return out + [""]


def to_markdown(d: dict) -> str:
    lines = [f"## Benchmarks: {d['machine']['slug']}", ""]
    lines += machine_lines(d)
    for part in (e2e_section, drift_section, flops_section, stages_section, memory_section):
        try:
            lines += part(d)
        except (KeyError, TypeError, IndexError) as e:  # e.g. a section merged from an older run
            lines += [f"({part.__name__.removesuffix('_section')}: cannot tabulate, {type(e).__name__} {e})", ""]
    lines.append(
        "Made by `python -m pytest benchmarks/` (see benchmarks/conftest.py); "
        "`python -m benchmarks.report` rebuilds this table from the JSON."
    )
    return "\n".join(lines) + "\n"


def newest(directory: Path = RESULTS_DIR) -> Path:
    files = sorted(directory.glob("*.json"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"no results JSON in {directory}: run `python -m pytest benchmarks/` first")
    return files[-1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n")[0])
    p.add_argument("results", nargs="?", type=Path, help="results JSON (default: newest in benchmarks/results)")
    p.add_argument("-o", "--out", type=Path, help="write here (default: stdout)")
    a = p.parse_args(argv)
    try:
        path = a.results or newest()
        md = to_markdown(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if a.out:
        a.out.write_text(md)
    else:
        sys.stdout.write(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
