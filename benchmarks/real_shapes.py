"""The whole path at GLUS-7B's real widths on this machine, at a cut LLM depth.

    python -m benchmarks.real_shapes [--llm-layers 2] [--work DIR] [--frames 12] [--out benchmarks/results]

make_tiny --shape glus-7b --llm-layers N (LLaMA-7B widths, CLIP ViT-L/14 at 224, SAM2 hiera-L
at 1024, bf16, sharded) → reference.load → export.build fp32 and int8 → GlusEngine on a
12-frame synthetic video with two expressions. Each heavy step runs in its own process, so
its peak resident set (VmHWM) is its own; the runtime's process imports no torch.

Measured: parity of the fp32 (and int8) engine against the reference (mask IoU per frame,
[SEG] cosine), the reference loop against the runtime per frame, per-stage latency of all six
graphs (memory attention at 64x64 with 0..7 memories), peak RSS of make_tiny, of each build and
of the runtime, bytes on disk; the FLOP split at depth N and at 32. Anything at 32 layers is an
extrapolation and says so, with its arithmetic. Writes real-shapes-glus-7b-L{N}.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
FULL_DEPTH = 32
GB = 1e9


# ---- processes --------------------------------------------------------------------------------
def run_measured(cmd: list[str], log: Path) -> dict:
    """Run `cmd` as a child; its wall time and its own peak RSS (wait4's ru_maxrss, in KiB)."""
    t = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    code = os.waitstatus_to_exitcode(status)
    if code:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({code}); log {log}:\n{tail}")
    return {"wall_s": wall, "peak_rss_bytes": usage.ru_maxrss * 1024, "log": str(log)}


def dir_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in Path(d).rglob("*") if f.is_file() and not f.name.startswith("."))


def vm_hwm() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


# ---- the video ----------------------------------------------------------------------------------
def make_video(frames: int, size: tuple[int, int], seed: int = 5) -> tuple[list[np.ndarray], list[str]]:
    """A synthetic video with (at least) two referring expressions."""
    from evalkit.synth import make_video as synth

    for index in range(50):
        v = synth(seed, index, frames, size)
        if len(v.expressions) >= 2:
            return list(v.annotation.images), [e.text for e in v.expressions[:2]]
    raise RuntimeError("no synthetic video with two expressions")


# ---- workers (children) -------------------------------------------------------------------------
def worker_reference(ckpt: Path, video: Path, out: Path) -> None:
    import torch

    import reference

    data = np.load(video, allow_pickle=False)
    frames, exprs = list(data["frames"]), [str(e) for e in data["expressions"]]
    torch.set_num_threads(os.cpu_count() or 1)
    t = time.perf_counter()
    ref = reference.load(ckpt / "glus", ckpt / "clip")
    load_s = time.perf_counter() - t
    save, per = {}, []
    for k, e in enumerate(exprs):
        t = time.perf_counter()
        r = reference.segment_video(ref, frames, e)
        per.append((time.perf_counter() - t) / len(frames))
        save[f"masks{k}"] = np.stack(r.masks)
        save[f"seg{k}"] = np.stack([f.seg_embedding for f in r.frames])
        save[f"is_seg{k}"] = np.array([f.is_seg for f in r.frames])
    np.savez(out, **save)
    (out.with_suffix(".json")).write_text(
        json.dumps({"load_s": load_s, "per_frame_s": per, "peak_rss_bytes": vm_hwm()})
    )


def worker_runtime(engine_dir: Path, video: Path, out: Path, kv_policy: str) -> None:
    from runtime import GlusEngine

    data = np.load(video, allow_pickle=False)
    frames, exprs = list(data["frames"]), [str(e) for e in data["expressions"]]
    t = time.perf_counter()
    engine = GlusEngine.load(engine_dir)
    load_s = time.perf_counter() - t
    engine.segment_video(frames[:2], exprs[:1], kv_policy=kv_policy)  # warm-up (ORT's first runs)
    t = time.perf_counter()
    res = engine.segment_video(frames, exprs, kv_policy=kv_policy)
    wall = time.perf_counter() - t
    save = {}
    for k, r in enumerate(res):
        save[f"masks{k}"] = np.stack(r.masks)
        save[f"seg{k}"] = np.stack([s.seg_embedding for s in r.steps])
        save[f"is_seg{k}"] = np.array([s.is_seg for s in r.steps])
    np.savez(out, **save)
    (out.with_suffix(".json")).write_text(
        json.dumps(
            {
                "load_s": load_s,
                "wall_s": wall,
                "per_frame_s": wall / (len(frames) * len(exprs)),
                "per_video_frame_s": wall / len(frames),
                "peak_rss_bytes": vm_hwm(),
                "torch_imported": "torch" in sys.modules,
            }
        )
    )


def worker_stages(engine_dirs: dict[str, Path], out: Path, repeats: int) -> None:
    from runtime.stages import Stages

    from .test_stages import STAGES, StageInputs, stage_call

    rows = {}
    for precision, d in engine_dirs.items():
        engine = Stages.load(d)
        x = StageInputs(engine, (240, 320))
        for stage, p in STAGES:
            if p != precision:
                continue
            fn = stage_call(engine, x, stage)
            fn()  # warm-up
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            rows[f"{stage}|{precision}"] = {
                "stage": stage,
                "precision": precision,
                "median_ms": 1000 * float(np.median(times)),
                "min_ms": 1000 * float(np.min(times)),
                "repeats": repeats,
            }
        del engine, x
    out.write_text(json.dumps(rows))


# ---- comparison ---------------------------------------------------------------------------------
def compare(ref: dict, got: dict, n_expr: int) -> dict:
    from .drift import cosine, mask_iou

    ious, coss, seg_agree = [], [], []
    for k in range(n_expr):
        ious += [mask_iou(a, b) for a, b in zip(ref[f"masks{k}"], got[f"masks{k}"])]
        for a, b in zip(ref[f"seg{k}"], got[f"seg{k}"]):
            coss.append(cosine(a, b))
        seg_agree += list(ref[f"is_seg{k}"] == got[f"is_seg{k}"])
    frac_nonempty = float(np.mean([m.any() for k in range(n_expr) for m in ref[f"masks{k}"]]))
    return {
        "iou_min": min(ious),
        "iou_mean": float(np.mean(ious)),
        "frames": len(ious),
        "frames_iou_ge_0999": float(np.mean(np.array(ious) >= 0.999)),
        "seg_cosine_min": min(coss),
        "seg_cosine_mean": float(np.mean(coss)),
        "seg_token_agreement": float(np.mean(seg_agree)),
        "reference_masks_nonempty": frac_nonempty,
    }


def flop_split(tokenizer_dir: Path, layers: int) -> dict:
    from reference.tokenizer import load_tokenizer

    from . import models
    from .flops import ModelFlops, shape_flops

    full = shape_flops("glus-7b", load_tokenizer(tokenizer_dir), models.cache_root())
    cut = ModelFlops(dict(full.llm, num_hidden_layers=layers), full.clip, full.sam, full.tokenizer)
    return {"depth": cut.summary(), "full": full.summary()}


def extrapolate(measured_s: float, f_cut: dict, f_full: dict) -> dict:
    """Per-frame time at 32 layers: the non-LLM part as measured, the LLM part scaled by FLOPs.
    The LLM's share of the measured time is taken as its FLOP share at this depth."""
    tot_cut = sum(f_cut.values())
    llm_s = measured_s * f_cut["llm"] / tot_cut
    other_s = measured_s - llm_s
    ratio = f_full["llm"] / f_cut["llm"]
    full_s = other_s + llm_s * ratio
    return {
        "measured_s": measured_s,
        "llm_share_flops": f_cut["llm"] / tot_cut,
        "llm_flop_ratio": ratio,
        "extrapolated_s": full_s,
        "arithmetic": f"{other_s:.2f} s (non-LLM, as measured) + {llm_s:.2f} s (LLM: {f_cut['llm'] / tot_cut:.0%}"
        f" of the FLOPs at this depth) x {ratio:.1f} (LLM FLOPs 32 layers / this depth)"
        f" = {full_s:.1f} s",
    }


def extrapolate_timed(measured_s: float, llm_s: float, ratio: float) -> dict:
    """Per-frame time at 32 layers from a measured LLM time: the rest as measured, the LLM's
    time scaled by its FLOP ratio (32 layers / this depth)."""
    other_s = measured_s - llm_s
    full_s = other_s + llm_s * ratio
    return {
        "measured_s": measured_s,
        "llm_s": llm_s,
        "llm_flop_ratio": ratio,
        "extrapolated_s": full_s,
        "arithmetic": f"{other_s:.2f} s (the rest, as measured) + {llm_s:.2f} s (the LLM graph's own"
        f" time at this depth, from the per-stage table) x {ratio:.1f} (LLM FLOPs"
        f" 32 layers / this depth) = {full_s:.1f} s",
    }


def runtime_llm_seconds(stages: dict, precision: str, variant: str, frames: int) -> float:
    """The LLM graph's seconds per frame-expression: the window step, plus the prefix (one per
    video and expression) spread over the video's frames."""
    window = stages[f"llm_window_{variant}|{precision}"]["median_ms"]
    prefix = stages[f"llm_prefix|{precision}"]["median_ms"]
    return (window + prefix / frames) / 1000


# ---- driver -------------------------------------------------------------------------------------
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.real_shapes", description=__doc__.split("\n")[0])
    p.add_argument("--llm-layers", type=int, default=2)
    p.add_argument("--work", default=None, help="where checkpoints/engines go (default: the bench cache)")
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--size", default="240x320", help="HxW of the synthetic frames")
    p.add_argument("--stage-repeats", type=int, default=3)
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--rebuild", action="store_true", help="remake the checkpoint and engines")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite the results from what an earlier run of --work measured (runs nothing)",
    )
    p.add_argument("--worker", choices=["reference", "runtime", "stages"], help=argparse.SUPPRESS)
    p.add_argument("--args", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        w = json.loads(a.args)
        if a.worker == "reference":
            worker_reference(Path(w["ckpt"]), Path(w["video"]), Path(w["out"]))
        elif a.worker == "runtime":
            worker_runtime(Path(w["engine"]), Path(w["video"]), Path(w["out"]), w["kv_policy"])
        else:
            worker_stages({k: Path(v) for k, v in w["engines"].items()}, Path(w["out"]), w["repeats"])
        return 0
    if a.llm_layers < 1:
        p.error("--llm-layers must be >= 1")
    try:
        h, w = (int(x) for x in a.size.lower().split("x"))
    except ValueError:
        p.error(f"--size must be HxW, got {a.size!r}")
    from tqdm import tqdm

    from . import models
    from .machine import machine_info, machine_slug

    n = a.llm_layers
    work = Path(a.work) if a.work else models.cache_root() / "real-shapes"
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / f"glus-7b-L{n}"
    py = sys.executable
    steps = tqdm(total=8, desc=f"glus-7b L{n}", unit="step")
    record_path = work / f"measured-L{n}.json"
    rec = json.loads(record_path.read_text()) if record_path.is_file() and not a.rebuild else {}

    def save_rec():
        record_path.write_text(json.dumps(rec, indent=1))

    if a.rebuild or "make_tiny" not in rec or not (ckpt / "glus" / "config.json").is_file():
        steps.set_postfix_str("make_tiny")
        rec["make_tiny"] = run_measured(
            [py, "-m", "reference.make_tiny", str(ckpt), "--shape", "glus-7b", "--llm-layers", str(n)],
            work / f"make_tiny-L{n}.log",
        )
        save_rec()
    rec["checkpoint_bytes"] = dir_bytes(ckpt / "glus")
    rec["clip_bytes"] = dir_bytes(ckpt / "clip")
    steps.update()
    engines = {}
    for precision in ("fp32", "int8"):
        d = work / f"engine-L{n}-{precision}"
        engines[precision] = d
        key = f"build_{precision}"
        if a.rebuild or key not in rec or not (d / "manifest.json").is_file():
            steps.set_postfix_str(f"export.build {precision}")
            rec[key] = run_measured(
                [
                    py,
                    "-m",
                    "export.build",
                    "--checkpoint",
                    str(ckpt / "glus"),
                    "--clip",
                    str(ckpt / "clip"),
                    "--precision",
                    precision,
                    "--out",
                    str(d),
                    "--force",
                ],
                work / f"build-{precision}-L{n}.log",
            )
            save_rec()
        manifest = json.loads((d / "manifest.json").read_text())
        rec[key]["engine_bytes"] = dir_bytes(d)
        rec[key]["graph_bytes"] = {
            g: sum((d / f["file"]).stat().st_size for f in [e, *e["external_data"]])
            for g, e in manifest["graphs"].items()
        }
        rec[key]["parity"] = manifest["parity"]
        steps.update()

    frames, exprs = make_video(a.frames, (h, w))
    video = work / f"video-{a.frames}-{h}x{w}.npz"
    np.savez(video, frames=np.stack(frames), expressions=np.array(exprs))

    def child(kind, args, name):
        out = work / f"{name}-L{n}.npz"
        m = run_measured(
            [py, "-m", "benchmarks.real_shapes", "--worker", kind, "--args", json.dumps({**args, "out": str(out)})],
            work / f"{name}-L{n}.log",
        )
        info = json.loads(out.with_suffix(".json").read_text()) if kind != "stages" else {}
        return out, {**info, "process": m}

    def measured(name):  # --report-only: what an earlier run of this work directory measured
        if not a.report_only:
            return False
        if name not in rec:
            p.error(f"--report-only: {record_path} has no {name!r}; run without it first")
        return True

    steps.set_postfix_str("reference loop")
    ref_out = work / f"reference-L{n}.npz"
    if not measured("reference"):
        ref_out, rec["reference"] = child("reference", {"ckpt": str(ckpt), "video": str(video)}, "reference")
        save_rec()
    steps.update()
    ref = dict(np.load(ref_out))
    for precision, policy in (("fp32", "exact"), ("int8", "exact"), ("int8", "incremental")):
        name = f"runtime-{precision}-{policy}"
        steps.set_postfix_str(name)
        out = work / f"{name}-L{n}.npz"
        if not measured(name):
            out, rec[name] = child(
                "runtime", {"engine": str(engines[precision]), "video": str(video), "kv_policy": policy}, name
            )
        rec[name]["vs_reference"] = compare(ref, dict(np.load(out)), len(exprs))
        save_rec()
        steps.update()
    steps.set_postfix_str("stages")
    stages_out = work / f"stages-L{n}.json"
    if not measured("stages"):
        rec["stages_process"] = run_measured(
            [
                py,
                "-m",
                "benchmarks.real_shapes",
                "--worker",
                "stages",
                "--args",
                json.dumps(
                    {
                        "engines": {k: str(v) for k, v in engines.items()},
                        "out": str(stages_out),
                        "repeats": a.stage_repeats,
                    }
                ),
            ],
            work / f"stages-L{n}.log",
        )
        rec["stages"] = json.loads(stages_out.read_text())
        save_rec()
    steps.update()
    steps.close()

    flops = flop_split(ckpt / "glus", n)
    info = machine_info()
    info["slug"] = machine_slug(info)
    ref_frame = float(np.median(rec["reference"]["per_frame_s"]))
    speed = {k: ref_frame / rec[k]["per_frame_s"] for k in rec if k.startswith("runtime-")}
    ext = {
        "reference": extrapolate(
            ref_frame, flops["depth"]["per_frame"]["reference"], flops["full"]["per_frame"]["reference"]
        )
    }
    for k in speed:
        # The runtime's LLM time is measured (per-stage table), not inferred from a FLOP share:
        # a frame's SAM2 and CLIP encodes are shared by the expressions, so FLOP shares of one
        # expression's frame would understate it.
        variant = "incremental" if k.endswith("incremental") else "exact"
        precision = k.split("-")[1]
        ratio = flops["full"]["per_frame"][variant]["llm"] / flops["depth"]["per_frame"][variant]["llm"]
        ext[k] = extrapolate_timed(
            rec[k]["per_frame_s"], runtime_llm_seconds(rec["stages"], precision, variant, a.frames), ratio
        )
    data = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": info,
        "model": f"glus-7b-L{n}",
        "llm_layers": n,
        "video": {"frames": a.frames, "size": [h, w], "expressions": exprs},
        "measured": rec,
        "speedup_vs_reference": speed,
        "flops": flops,
        "extrapolated_32": ext,
    }
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"real-shapes-glus-7b-L{n}.json").write_text(json.dumps(data, indent=1, default=float))
    md = markdown(data)
    (out / f"real-shapes-glus-7b-L{n}.md").write_text(md)
    print(md)
    return 0


def markdown(d: dict) -> str:
    m, n = d["measured"], d["llm_layers"]
    mi = d["machine"]
    L = [
        f"## GLUS-7B widths at {n} LLM layers: the whole path on CPU (machine {mi['slug']})",
        "",
        f"{mi['cpu']}, {mi['cores']} cores, {mi['memory_gb']} GB, ONNX Runtime {mi['onnxruntime']},"
        f" torch {mi['torch']}; {d['date']}. `python -m benchmarks.real_shapes --llm-layers {n}`:"
        f" `make_tiny --shape glus-7b --llm-layers {n}` (LLaMA-7B widths: hidden 4096, MLP 11008,"
        " 32 heads, vocab 32003; CLIP ViT-L/14 at 224; SAM2 hiera-L at 1024; bf16, 2 shards; random"
        f" weights) → export.build fp32 / int8 → GlusEngine, on a {d['video']['frames']}-frame"
        f" {d['video']['size'][0]}x{d['video']['size'][1]} synthetic video with two expressions"
        f" ({'; '.join(repr(e) for e in d['video']['expressions'])}). Every step in its own process.",
        "",
        "### Parity against the reference (every frame of both expressions)",
        "",
        "| engine | mask IoU min / mean | frames IoU ≥ 0.999 | [SEG] cosine min / mean | [SEG]-token agreement |",
        "|---|---|---|---|---|",
    ]
    for k in ("runtime-fp32-exact", "runtime-int8-exact", "runtime-int8-incremental"):
        c = m[k]["vs_reference"]
        L.append(
            f"| {k.removeprefix('runtime-')} | {c['iou_min']:.4f} / {c['iou_mean']:.4f} |"
            f" {c['frames_iou_ge_0999']:.0%} | {c['seg_cosine_min']:.6f} / {c['seg_cosine_mean']:.6f} |"
            f" {c['seg_token_agreement']:.0%} |"
        )
    c = m["runtime-fp32-exact"]["vs_reference"]
    L += [
        "",
        f"{c['reference_masks_nonempty']:.0%} of the reference's masks are non-empty (random weights:"
        " make_tiny points the [SEG] row of lm_head along real prompts' hidden states so that both"
        " branches of GLUS's loop run).",
        "",
        "### Per frame: the reference loop against the runtime (same depth, same machine, same run)",
        "",
        "| loop | s per frame-expression | speed-up | peak RSS GB | extrapolated to 32 layers (s) |",
        "|---|---|---|---|---|",
    ]
    ref_frame = float(np.median(m["reference"]["per_frame_s"]))
    ext = d["extrapolated_32"]
    L.append(
        f"| reference (PyTorch, re-runs the prompt) | {ref_frame:.2f} | 1.00x |"
        f" {m['reference']['peak_rss_bytes'] / GB:.1f} | {ext['reference']['extrapolated_s']:.1f} |"
    )
    for k, s in d["speedup_vs_reference"].items():
        L.append(
            f"| {k.removeprefix('runtime-')} | {m[k]['per_frame_s']:.2f} | {s:.2f}x |"
            f" {m[k]['peak_rss_bytes'] / GB:.1f} | {ext[k]['extrapolated_s']:.1f} |"
        )
    L += [
        "",
        "Runtime figures: one `segment_video` call over both expressions (each frame SAM2- and"
        " CLIP-encoded once for both), divided by frames x expressions; its process imports no torch"
        f" (torch in sys.modules: {m['runtime-fp32-exact']['torch_imported']}).",
        "",
        "**32 layers is an extrapolation, not a measurement.** Arithmetic, per loop:",
        "",
    ]
    for k, e in ext.items():
        L.append(f"- {k}: {e['arithmetic']}")
    L += [
        "",
        "### Per-stage latency (ONNX Runtime CPU, median of "
        f"{next(iter(m['stages'].values()))['repeats']} after a warm-up)",
        "",
        "| stage | precision | ms | GFLOP |",
        "|---|---|---|---|",
    ]
    fl = d["flops"]["depth"]["stages"]
    for v in m["stages"].values():
        L.append(f"| {v['stage']} | {v['precision']} | {v['median_ms']:.0f} | {fl.get(v['stage'], 0) / 1e9:.1f} |")
    L += [
        "",
        "### Build, memory, disk",
        "",
        "| step | wall s | peak RSS GB | bytes on disk GB |",
        "|---|---|---|---|",
        f"| make_tiny | {m['make_tiny']['wall_s']:.0f} | {m['make_tiny']['peak_rss_bytes'] / GB:.1f} |"
        f" {m['checkpoint_bytes'] / GB:.2f} (+ CLIP {m['clip_bytes'] / GB:.2f}) |",
    ]
    for prec in ("fp32", "int8"):
        b = m[f"build_{prec}"]
        L.append(
            f"| export.build {prec} | {b['wall_s']:.0f} | {b['peak_rss_bytes'] / GB:.1f}"
            f" | {b['engine_bytes'] / GB:.2f} |"
        )
    L += [
        "",
        "Graph sizes (GB): "
        + "; ".join(
            f"{prec}: " + ", ".join(f"{g} {v / GB:.2f}" for g, v in m[f"build_{prec}"]["graph_bytes"].items())
            for prec in ("fp32", "int8")
        ),
        "",
    ]
    fd, ff = d["flops"]["depth"], d["flops"]["full"]
    for label, f in ((f"{n} layers", fd), ("32 layers", ff)):
        r, s = f["per_frame"]["reference"], f["reference_split"]
        L.append(
            f"FLOP split of one reference-loop frame, {label}: {sum(r.values()) / 1e9:,.0f} GFLOP ="
            f" LLM {s['llm']:.1%} + 8 CLIP encodes {s['clip']:.1%} + SAM2 {s['sam2']:.1%}."
        )
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    sys.exit(main())
