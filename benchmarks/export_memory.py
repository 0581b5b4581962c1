"""Peak RAM and disk of `export.build` at GLUS-7B's widths, per LLM layer and per build step.

    python -m benchmarks.export_memory [--layers 1,2,3] [--precision int8] [--out benchmarks/results]

For each depth N: `make_tiny --shape glus-7b --llm-layers N` (bf16, sharded, random weights),
then, in a fresh process, the real `export.build.build(...)` while a sampler thread reads the
resident set of the build and its child processes every 20 ms. Each step of the build
(reference.load, each graph's export and its parity check, each quantization and its cosine
check, the rest) is wrapped so that the peak is kept per step. An int8 build makes every fp32
graph first, so its fp32 steps are also the fp32 build's. A fit over N (peak = a + b·N) per step
gives the bytes per layer; the extrapolation to 32 layers is written out with its arithmetic.
Writes `export-memory-glus-7b.{json,md}`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
FULL_DEPTH = 32


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:  # the task ended between the listing and the read
            pass
    return out


def tree_pids(pid: int) -> list[int]:
    """pid and all its descendants (the LLM's export child, export/llm_process.py)."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += _children(p)
    return pids


class PhaseSampler:
    """Resident set size of this process and its children (summed: an upper bound of what they
    need together), sampled in a thread; the peak is kept per named phase."""

    def __init__(self, period_s: float = 0.02):
        self.period_s, self.phase, self.peaks = period_s, "other", {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._page = os.sysconf("SC_PAGE_SIZE")

    def rss(self) -> int:
        total = 0
        for pid in tree_pids(os.getpid()):
            try:
                with open(f"/proc/{pid}/statm") as f:
                    total += int(f.read().split()[1]) * self._page
            except OSError:  # a child that has just exited
                pass
        return total

    def _note(self) -> None:
        r = self.rss()
        with self._lock:
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), r)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._note()
            time.sleep(self.period_s)

    @contextlib.contextmanager
    def during(self, phase: str):
        self._note()
        outer, self.phase = self.phase, phase
        try:
            yield
        finally:
            self._note()
            self.phase = outer

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._note()
        self._stop.set()
        self._thread.join()


def _wrap(s: PhaseSampler, module, name: str, label) -> None:
    """Replace module.name by the same function run inside phase label(*args, **kwargs)."""
    fn = getattr(module, name)

    def wrapped(*args, **kwargs):
        with s.during(label(*args, **kwargs)):
            return fn(*args, **kwargs)

    setattr(module, name, wrapped)


def measure_build(ckpt: Path, out: Path, precision: str) -> dict:
    """In this process: export.build at `precision`, with the peak resident set per build step."""
    import export.build as eb
    import export.llm_process as lp
    import export.onnx_utils as ou
    import export.quantize as eq
    import reference

    from .real_shapes import dir_bytes

    with PhaseSampler() as s:
        _wrap(s, reference, "load", lambda *a, **k: "load")
        _wrap(s, ou, "export_graph", lambda spec, *a, **k: f"export {spec.name}")
        _wrap(s, eb, "graph_parity", lambda spec, *a, **k: f"parity {spec.name}")
        _wrap(s, lp, "export_llm_in_child", lambda *a, **k: "export llm in a child (both processes)")
        _wrap(s, eb, "ort_parity", lambda outputs, path, *a, **k: f"parity {Path(path).stem} (ONNX Runtime)")
        _wrap(s, eq, "quantize_graph", lambda src, dst, method="", **k: f"quantize {Path(src).stem} {method}")
        _wrap(s, eb, "llm_seg_cosines", lambda *a, **k: "cosines llm")
        _wrap(s, eb, "int8_output_cosines", lambda *a, **k: "cosines sam_image")
        t = time.perf_counter()
        manifest = eb.build(ckpt / "glus", ckpt / "clip", precision=precision, out=out, force=True, progress=False)
        wall = time.perf_counter() - t
    graphs = {}
    for g in sorted(out.glob("*.onnx")):
        graphs[g.name] = eq.model_bytes(g)
    return {
        "peaks": s.peaks,
        "wall_s": wall,
        "engine_bytes": dir_bytes(out),
        "graph_bytes": graphs,
        "llm_int8": manifest.get("parity", {}).get("llm_int8"),
    }


def llm_fp32_weight_bytes(layers: int) -> int:
    """fp32 bytes of what the "llm" graph holds: LLaMA's layers, norms and lm_head (embed_tokens
    is not in it: the engine keeps it as an array, the graph takes inputs_embeds) + the [SEG] head."""
    from benchmarks.flops import llm_linear_params
    from reference.make_tiny import LLAMA_7B_VOCAB, shape_spec

    c = dict(shape_spec("glus-7b", layers)["llama"], vocab_size=LLAMA_7B_VOCAB)
    h = c["hidden_size"]
    norms = (2 * c["num_hidden_layers"] + 1) * h
    seg_head = h * h + h + h * 256 + 256
    return 4 * (llm_linear_params(c) + c["vocab_size"] * h + norms + seg_head)


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least squares y = a + b x."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return my - b * mx, b


def summarize(rows: list[dict]) -> dict:
    """Least-squares line over N of the whole build's peak and of each step's, extrapolated to 32."""
    xs = [r["layers"] for r in rows]
    steps = sorted({k for r in rows for k in r["peaks"]})
    fits = {
        "build": fit_line(xs, [max(r["peaks"].values()) for r in rows]),
        "llm_weights_fp32": fit_line(xs, [r["llm_weight_bytes"] for r in rows]),
        "checkpoint": fit_line(xs, [r["checkpoint_bytes"] for r in rows]),
        "engine": fit_line(xs, [r["engine_bytes"] for r in rows]),
    }
    for k in steps:
        if all(k in r["peaks"] for r in rows):
            fits[f"step {k}"] = fit_line(xs, [r["peaks"][k] for r in rows])
    full = {k: a + b * FULL_DEPTH for k, (a, b) in fits.items()}
    top_step = max((k for k in full if k.startswith("step ")), key=lambda k: full[k])
    # The step at the peak can change with depth (at few layers the LLM export's child, at 32
    # a step whose growth per layer is larger): the extrapolated peak is the highest step line,
    # never below the line through each depth's own peak.
    peak_key = top_step if full[top_step] >= full["build"] else "build"
    a, b = fits[peak_key]
    wa, wb = fits["llm_weights_fp32"]
    what = f"step {top_step[5:]}" if peak_key == top_step else "the build's peak"
    return {
        "fit": fits,
        "extrapolated_32": full,
        "top_step_32": top_step,
        "peak_32": full[peak_key],
        "peak_over_llm_weights_32": full[peak_key] / full["llm_weights_fp32"],
        "arithmetic": (
            f"peak(32) = {what}: {a / 1e9:.2f} GB + 32 x {b / 1e9:.3f} GB = {full[peak_key] / 1e9:.1f} GB"
            f" (the line through each depth's own peak: {full['build'] / 1e9:.1f} GB);"
            f" fp32 LLM weights(32) = {wa / 1e9:.2f} GB + 32 x {wb / 1e9:.3f} GB ="
            f" {full['llm_weights_fp32'] / 1e9:.1f} GB"
        ),
    }


def markdown(data: dict) -> str:
    gb = 1e9
    rows = data["rows"]
    m = data["machine"]
    lines = [
        f"## export.build memory at GLUS-7B widths (machine {m['slug']}, {data['label']})",
        "",
        f"{m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB; {data['date']}."
        f" `python -m benchmarks.export_memory --layers {','.join(str(r['layers']) for r in rows)}"
        f" --precision {data['precision']}`: per depth, make_tiny --shape glus-7b --llm-layers N"
        " (bf16 checkpoint) then the real export.build in a fresh process, the resident set"
        " sampled every 20 ms and its peak kept per build step.",
        "",
        "| layers | checkpoint GB (bf16) | fp32 LLM weights GB | build peak GB | peak / LLM weights"
        " | step at the peak | engine GB | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        top = max(r["peaks"], key=r["peaks"].get)
        lines.append(
            f"| {r['layers']} | {r['checkpoint_bytes'] / gb:.2f} | {r['llm_weight_bytes'] / gb:.2f} |"
            f" {r['peaks'][top] / gb:.2f} | {r['peaks'][top] / r['llm_weight_bytes']:.2f}x | {top} |"
            f" {r['engine_bytes'] / gb:.2f} | {r['wall_s']:.0f} |"
        )
    steps = [k for k in data["summary"]["fit"] if k.startswith("step ")] if data["summary"] else []
    if steps:
        lines += [
            "",
            "Peak resident set per build step (GB) and its growth per LLM layer:",
            "",
            "| step | " + " | ".join(f"N={r['layers']}" for r in rows) + " | per layer | at 32 layers (extrapolated) |",
            "|---|" + "---|" * len(rows) + "---|---|",
        ]
        fit, full = data["summary"]["fit"], data["summary"]["extrapolated_32"]
        for k in sorted(steps, key=lambda k: -full[k]):
            lines.append(
                f"| {k[5:]} | "
                + " | ".join(f"{r['peaks'][k[5:]] / gb:.2f}" for r in rows)
                + f" | {fit[k][1] / gb:+.3f} | {full[k] / gb:.1f} |"
            )
        s = data["summary"]
        lines += [
            "",
            f"**Extrapolation to 32 layers (not measured):** {s['arithmetic']}: peak / fp32"
            f" LLM weights = {s['peak_over_llm_weights_32']:.2f}x, at step {s['top_step_32'][5:]}."
            f" Checkpoint {s['extrapolated_32']['checkpoint'] / gb:.1f} GB, engine"
            f" {s['extrapolated_32']['engine'] / gb:.1f} GB on disk.",
        ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.export_memory", description=__doc__.split("\n")[0])
    p.add_argument("--layers", default="1,2,3", help="comma-separated LLM depths (default 1,2,3)")
    p.add_argument("--precision", default="int8", choices=["fp32", "int8"])
    p.add_argument("--label", default="", help="a name for this code state in the output file name")
    p.add_argument("--work", default=None, help="scratch directory (default: a temp dir)")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--keep", action="store_true", help="keep the checkpoints in --work for another run")
    p.add_argument("--one", help=argparse.SUPPRESS)  # the child: CKPT:OUT, one build
    a = p.parse_args(argv)
    import tempfile

    if a.one is not None:
        ckpt, out = a.one.split(":")
        print(json.dumps(measure_build(Path(ckpt), Path(out), a.precision)))
        return 0
    try:
        depths = sorted({int(x) for x in a.layers.split(",") if x})
    except ValueError:
        p.error(f"--layers must be comma-separated integers, got {a.layers!r}")
    if not depths or min(depths) < 1:
        p.error("--layers needs depths >= 1")
    from tqdm import tqdm

    from reference.make_tiny import make_tiny

    from .machine import machine_info, machine_slug
    from .real_shapes import dir_bytes

    work = Path(a.work or tempfile.mkdtemp(prefix="glus-export-memory-"))
    rows = []
    for n in tqdm(depths, desc="export memory", unit="depth"):
        ckpt, out = work / f"ckpt-L{n}", work / f"engine-L{n}"
        if not (ckpt / "glus" / "config.json").is_file():  # --work kept from an earlier run: reused
            make_tiny(ckpt, shape="glus-7b", llm_layers=n, shards=2)
        r = subprocess.run(
            [sys.executable, "-m", "benchmarks.export_memory", "--one", f"{ckpt}:{out}", "--precision", a.precision],
            capture_output=True,
            text=True,
            check=False,
        )
        if r.returncode:
            print(r.stderr[-3000:], file=sys.stderr)
            return 1
        row = json.loads(r.stdout.strip().splitlines()[-1])
        row.update(
            layers=n,
            checkpoint_bytes=dir_bytes(ckpt / "glus"),
            clip_bytes=dir_bytes(ckpt / "clip"),
            llm_weight_bytes=llm_fp32_weight_bytes(n),
        )
        rows.append(row)
        subprocess.run(["rm", "-rf", str(out)] + ([] if a.keep else [str(ckpt)]), check=False)
    info = machine_info()
    info["slug"] = machine_slug(info)
    data = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": info,
        "precision": a.precision,
        "label": a.label or "as built",
        "rows": rows,
        "summary": summarize(rows) if len(rows) > 1 else None,
    }
    res = Path(a.out)
    res.mkdir(parents=True, exist_ok=True)
    stem = "export-memory-glus-7b" + (f"-{a.label}" if a.label else "")
    (res / f"{stem}.json").write_text(json.dumps(data, indent=1))
    (res / f"{stem}.md").write_text(markdown(data))
    print(markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
