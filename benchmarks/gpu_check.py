"""The GPU check: GLUS at its real shapes on one CUDA GPU, in one short run (< 8 min on an H100).

    bash benchmarks/gpu_check.sh                      # what to run on the GPU machine
    python -m benchmarks.gpu_check [--out DIR] [--budget-s 420]
    python -m benchmarks.gpu_check --device cpu --shape tiny --engine-shape tiny --frames 4
                                                      # the same code path on a CPU (the tests)

Without CUDA (torch's) it writes nothing, says why and exits 0: the check skips cleanly.

1. reference — GLUS-7B at full depth (LLaMA-7B: 32 layers, hidden 4096; CLIP ViT-L/14; SAM2
   hiera-L at 1024) built directly on the GPU with random weights from make_tiny's config,
   tokenizer and CLIP (a 13.5 GB bf16 checkpoint is not written and re-read inside 8 minutes;
   the loader's path at these widths is proven on the CPU by benchmarks/real_shapes.py), the
   [SEG] row pointed as make_tiny points it so that SAM2 runs, cast to bf16 (as GLUS runs).
   Measured: the reference loop over a --frames video (GLUS's per-frame re-run of the whole
   prompt), per frame, after a warm-up; each component alone (the 8 CLIP encodes, the LLM
   prefill, SAM2's image encoder, memory attention + decoder + memory encoder), CUDA-synced,
   median of 3; the FLOP split (benchmarks/flops.py) and the TFLOP/s it implies; peak GPU memory.
2. runtime — only where ONNX Runtime has the CUDA provider (onnxruntime-gpu: see
   gpu_check.sh): an engine of --engine-shape (LLaMA-7B widths at --engine-layers) built here
   at fp32, fp16 and int8; GlusEngine on cuda:0 (I/O binding) against GlusEngine on the CPU
   (fp32): mask IoU, [SEG] cosine, per-frame time of both.

Every phase writes OUT/gpu-check-<machine>.json when it ends, so a run cut off by the device's
time limit still brings back what it measured; a phase that does not fit in what is left of
--budget-s is skipped and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from .drift import cosine, mask_iou
from .machine import machine_info, machine_slug


# ---- small pieces -------------------------------------------------------------------------------
def cuda_status() -> dict:
    """What this machine offers: torch's CUDA, the GPU, ONNX Runtime's providers."""
    out = {"torch_cuda": False, "gpu": None, "ort_providers": []}
    try:
        import torch

        out["torch"] = torch.__version__
        out["torch_cuda"] = bool(torch.cuda.is_available())
        if out["torch_cuda"]:
            p = torch.cuda.get_device_properties(0)
            out["gpu"] = {
                "name": p.name,
                "memory_gb": round(p.total_memory / 1e9, 1),
                "count": torch.cuda.device_count(),
            }
    except ImportError:
        out["torch"] = None
    try:
        import onnxruntime as ort

        out["ort"] = ort.__version__
        out["ort_providers"] = ort.get_available_providers()
    except ImportError:
        out["ort"] = None
    return out


def skip_reason(device: str, status: dict) -> str | None:
    """Why the check cannot run on `device` here (None: it can)."""
    if device.startswith("cuda") and not status["torch_cuda"]:
        return "no CUDA GPU visible to torch: the GPU check is skipped (run it on the GPU machine)"
    return None


def video(frames: int, size=(240, 320)):
    from .real_shapes import make_video

    return make_video(frames, size)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int = 3) -> float:
    """Median seconds of fn() over `repeats` runs after one warm-up."""
    fn()
    sync(device)
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync(device)
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


# ---- phase 1: the reference on the GPU ----------------------------------------------------------
def build_reference(work: Path, shape: str, layers: int | None, device: str, dtype_name: str):
    """make_tiny's config, tokenizer and CLIP at 1 LLM layer; the model itself built on `device`
    at `layers` layers with random weights, [SEG] row pointed, cast to `dtype_name`."""
    import torch
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig

    from reference.config import read_config
    from reference.loader import GlusReference, _load_clip
    from reference.make_tiny import SHAPES, _seg_favouring_head, make_tiny
    from reference.model import GlusModel
    from reference.tokenizer import load_tokenizer

    glus_dir, clip_dir = make_tiny(work / f"ref-{shape}", shape=shape, llm_layers=1)
    raw = json.loads((glus_dir / "config.json").read_text())
    raw["num_hidden_layers"] = layers or SHAPES[shape]["llama"]["num_hidden_layers"]
    (glus_dir / "config.json").write_text(json.dumps(raw, indent=2))  # no weights are read back
    cfg = read_config(glus_dir)
    tok = load_tokenizer(glus_dir)
    dev = torch.device(device)
    torch.manual_seed(0)
    with dev:
        model = GlusModel(cfg, CLIPVisionConfig.from_pretrained(str(clip_dir)))
    model.clip = _load_clip(clip_dir, torch.float32).to(dev)
    with torch.no_grad():
        _seg_favouring_head(model, tok, clip_probes=True)
    model.to(getattr(torch, dtype_name)).eval()
    processor = CLIPImageProcessorPil.from_pretrained(str(clip_dir))
    return GlusReference(model, tok, processor, cfg, glus_dir, clip_dir), glus_dir


def component_times(ref, frames, expression: str, device: str) -> dict:
    """Seconds of each part of one reference-loop frame, alone (median of 3 after a warm-up)."""
    import torch

    from reference.preprocess import clip_pixels, sam_pixels
    from runtime import rules

    model, tok = ref.model, ref.tokenizer
    p = next(model.parameters())
    n = len(frames)
    context = rules.context_frame_indices(n)
    window = rules.window_positions(rules.NUM_QUERY)  # a full window: the steady state
    ids = tok.encode_prompt(rules.prompt_text(expression, [rules.ANSWER_SEG] * (len(window) - 1)))
    pixels = torch.stack([clip_pixels(ref.clip_processor, frames[i]) for i in list(context) + list(window)]).to(
        p.device, p.dtype
    )
    sam_in = sam_pixels(frames[0], model.sam_image_size).to(p.device, p.dtype)[None]
    out = {}
    with torch.no_grad():
        tokens = model.encode_clip(pixels)
        out["clip_8_images"] = timed(lambda: model.encode_clip(pixels), device)
        llm = model.seg_embedding(ids, tokens)
        out["llm_prefill"] = timed(lambda: model.seg_embedding(ids, tokens), device)
        out["llm_prompt_positions"] = len(ids) + (rules.TOKENS_PER_IMAGE - 1) * len(pixels)
        feats = model.encode_image(sam_in)
        out["sam_image_encoder"] = timed(lambda: model.encode_image(sam_in), device)
        bank = []
        for _ in range(rules.NUM_MASKMEM):  # a full memory bank: 7 memories
            cond = model.condition(feats, bank)
            dec = model.decode(feats, cond, llm.seg_embedding)
            bank.append(model.encode_memory(feats, cond, dec.low_res_logits))

        def sam_rest():
            cond = model.condition(feats, bank)
            dec = model.decode(feats, cond, llm.seg_embedding)
            model.encode_memory(feats, cond, dec.low_res_logits)

        out["memory_attention_decoder_encoder"] = timed(sam_rest, device)
    return out


def phase_reference(work: Path, shape: str, layers: int | None, frames: int, device: str, dtype_name: str) -> dict:
    import torch

    import reference

    from .real_shapes import flop_split

    t0 = time.perf_counter()
    ref, glus_dir = build_reference(work, shape, layers, device, dtype_name)
    build_s = time.perf_counter() - t0
    vid, exprs = video(frames)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    reference.segment_video(ref, vid[:2], exprs[0])  # warm-up (kernels, allocator)
    sync(device)
    t = time.perf_counter()
    res = reference.segment_video(ref, vid, exprs[0])
    sync(device)
    loop_s = (time.perf_counter() - t) / len(vid)
    parts = component_times(ref, vid, exprs[0], device)
    n_layers = ref.model.cfg.raw["num_hidden_layers"]
    out = {
        "shape": shape,
        "llm_layers": n_layers,
        "dtype": dtype_name,
        "device": device,
        "weights": "random (make_tiny's config, tokenizer and CLIP; [SEG] row pointed)",
        "build_s": build_s,
        "frames": len(vid),
        "expression": exprs[0],
        "per_frame_s": loop_s,
        "components_s": parts,
        "seg_frames": int(sum(f.is_seg for f in res.frames)),
        "masks_nonempty": float(np.mean([m.any() for m in res.masks])),
        "params": int(sum(q.numel() for q in ref.model.parameters())),
    }
    if device.startswith("cuda"):
        out["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9
    if shape == "glus-7b":
        split = flop_split(glus_dir, n_layers)["depth"]
        total = sum(split.values())
        out["flops_per_frame"] = split
        out["flop_split"] = {k: v / total for k, v in split.items()}
        out["achieved_tflops"] = total / loop_s / 1e12
    del ref
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out


# ---- phase 2: the runtime on the CUDA provider --------------------------------------------------
def phase_runtime(work: Path, shape: str, layers: int, frames: int, device: str, save=lambda part: None) -> dict:
    """save(part) is called after each engine, so that a run cut off keeps what it measured."""
    from export.build import build, check_backend
    from reference.make_tiny import make_tiny
    from runtime import GlusEngine
    from runtime.stages import stacking_refused

    t0 = time.perf_counter()
    glus_dir, clip_dir = make_tiny(
        work / f"eng-{shape}", shape=shape, llm_layers=layers if shape == "glus-7b" else None
    )
    vid, exprs = video(frames)
    out = {
        "shape": shape,
        "llm_layers": layers if shape == "glus-7b" else None,
        "frames": len(vid),
        "expressions": exprs,
        "engines": {},
    }
    cpu_res, cpu_s = None, None
    for precision in ("fp32", "fp16", "int8"):
        row = {}
        out["engines"][precision] = row
        why = check_backend(precision, "onnxruntime")
        if why:
            row["skipped"] = why
            continue
        t = time.perf_counter()
        d = work / f"eng-{shape}-{precision}"
        manifest = build(glus_dir, clip_dir, precision=precision, out=d, force=True, progress=False)
        row["build_s"] = time.perf_counter() - t
        row["parity"] = manifest.get("parity")
        if cpu_res is None:  # the CPU fp32 engine is the yardstick
            cpu = GlusEngine.load(d, device="cpu")
            cpu.segment_video(vid[:2], exprs[:1])
            t = time.perf_counter()
            cpu_res = cpu.segment_video(vid, exprs)
            cpu_s = (time.perf_counter() - t) / (len(vid) * len(exprs))
            out["cpu_fp32_per_frame_s"] = cpu_s
            del cpu
        eng = GlusEngine.load(d, device=device)
        row["io_binding"] = eng.io_binding
        eng.segment_video(vid[:2], exprs[:1])  # warm-up: CUDA kernels, cuDNN autotune
        t = time.perf_counter()
        res = eng.segment_video(vid, exprs)
        row["per_frame_s"] = (time.perf_counter() - t) / (len(vid) * len(exprs))
        row["speedup_vs_cpu_fp32"] = cpu_s / row["per_frame_s"]
        ious = [mask_iou(a, b) for ra, rb in zip(cpu_res, res) for a, b in zip(ra.masks, rb.masks)]
        coss = [
            cosine(sa.seg_embedding, sb.seg_embedding)
            for ra, rb in zip(cpu_res, res)
            for sa, sb in zip(ra.steps, rb.steps)
        ]
        row.update(
            iou_min=min(ious),
            iou_mean=float(np.mean(ious)),
            seg_cosine_min=min(coss),
            masks_nonempty=float(np.mean([m.any() for r in cpu_res for m in r.masks])),
        )
        refused = stacking_refused(eng.manifest)  # dynamic int8: encode_frames would not stack
        row["stacked_image_encoder"] = {"skipped": refused} if refused else stacking_times(eng, vid, device)
        del eng
        save(out)
    out["wall_s"] = time.perf_counter() - t0
    return out


def stacking_times(eng, frames, device: str, counts=(1, 2, 4, 8)) -> list[dict]:
    """SAM2's image encoder on n frames as n calls of one frame and as one stacked call (what
    serving --batch-images does with n cameras): seconds, and how far a stacked row is from its
    frame encoded alone (a GPU may pick other kernels for another batch size)."""
    rows = []
    for n in counts:
        some = [frames[i % len(frames)] for i in range(n)]
        alone = [eng._stages.sam_features(f) for f in some]
        stacked = eng.encode_frames(some)
        rows.append(
            {
                "frames": n,
                "loop_s": timed(lambda s=some: [eng._stages.sam_features(f) for f in s], device),
                "stacked_s": timed(lambda s=some: eng.encode_frames(s), device),
                "rows_max_abs": max(float(np.abs(x - y).max()) for a, b in zip(alone, stacked) for x, y in zip(a, b)),
            }
        )
        rows[-1]["speedup"] = rows[-1]["loop_s"] / rows[-1]["stacked_s"]
    return rows


# ---- driver -------------------------------------------------------------------------------------
def write(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str))
    tmp.replace(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="benchmarks/results", help="where gpu-check-<machine>.json goes")
    p.add_argument("--work", default=None, help="scratch directory (default OUT/../gpu-check-work)")
    p.add_argument("--device", default="cuda", help="cuda (the check) or cpu (a smoke run of its code)")
    p.add_argument("--shape", default="glus-7b", choices=["glus-7b", "tiny"])
    p.add_argument("--llm-layers", type=int, default=None, help="reference depth (default: the shape's)")
    p.add_argument("--dtype", default=None, help="reference dtype (default bfloat16 on cuda, float32 on cpu)")
    p.add_argument("--engine-shape", default="glus-7b", choices=["glus-7b", "tiny"])
    p.add_argument("--engine-layers", type=int, default=2)
    p.add_argument("--frames", type=int, default=12, help="frames of the reference phase's video")
    p.add_argument(
        "--engine-frames",
        type=int,
        default=6,
        help="frames of the runtime phase's video (its CPU yardstick runs SAM2-L on the CPU)",
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=420.0,
        help="the runtime phase is skipped if less than --runtime-min-s is left",
    )
    p.add_argument("--runtime-min-s", type=float, default=180.0)
    p.add_argument("--skip", action="append", default=[], choices=["reference", "runtime"])
    a = p.parse_args(argv)
    if a.frames < 2 or a.engine_frames < 2:
        p.error("--frames and --engine-frames must be >= 2")
    if a.llm_layers is not None and a.llm_layers < 1:
        p.error("--llm-layers must be >= 1")
    t_start = time.perf_counter()
    status = cuda_status()
    why = skip_reason(a.device, status)
    if why:
        print(f"gpu_check: {why}")
        return 0
    info = machine_info()
    slug = machine_slug(info) + ("-" + status["gpu"]["name"].replace(" ", "-").lower() if status["gpu"] else "")
    path = Path(a.out) / f"gpu-check-{slug}.json"
    work = Path(a.work) if a.work else Path(a.out).resolve().parent / "gpu-check-work"
    work.mkdir(parents=True, exist_ok=True)
    doc = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": info,
        "cuda": status,
        "device": a.device,
        "argv": sys.argv[1:] if argv is None else list(argv),
        "phases": {},
    }
    write(path, doc)
    dtype = a.dtype or ("bfloat16" if a.device.startswith("cuda") else "float32")
    rc = 0
    phases = [
        ("reference", lambda: phase_reference(work, a.shape, a.llm_layers, a.frames, a.device, dtype)),
        (
            "runtime",
            lambda: phase_runtime(
                work,
                a.engine_shape,
                a.engine_layers,
                a.engine_frames,
                "cuda:0" if a.device.startswith("cuda") else a.device,
                save=lambda part: (doc["phases"].update(runtime=part), write(path, doc)),
            ),
        ),
    ]
    for name, fn in phases:
        left = a.budget_s - (time.perf_counter() - t_start)
        if name in a.skip:
            doc["phases"][name] = {"skipped": "--skip"}
        elif (
            name == "runtime" and a.device.startswith("cuda") and "CUDAExecutionProvider" not in status["ort_providers"]
        ):
            doc["phases"][name] = {
                "skipped": "ONNX Runtime has no CUDA provider here (onnxruntime-gpu"
                " not installed: see benchmarks/gpu_check.sh)"
            }
        elif name == "runtime" and left < a.runtime_min_s:
            doc["phases"][name] = {"skipped": f"{left:.0f} s of the {a.budget_s:.0f} s budget left"}
        else:
            print(f"gpu_check: {name} ...", flush=True)
            t = time.perf_counter()
            try:
                doc["phases"][name] = fn()
            except Exception as e:  # noqa: BLE001 -- recorded; the other phase may still measure
                doc["phases"][name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
                rc = 1
            doc["phases"][name]["phase_s"] = time.perf_counter() - t
        write(path, doc)
        print(f"gpu_check: {name}: {json.dumps(doc['phases'][name], default=str)[:600]}", flush=True)
    doc["wall_s"] = time.perf_counter() - t_start
    write(path, doc)
    print(f"gpu_check: wrote {path}")
    return rc


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
