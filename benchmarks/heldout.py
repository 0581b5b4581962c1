"""Held-out J&F of a trained GLUS: the reference, the runtime (fp32, int8, incremental window,
causal stream) and the ablations, on synthetic sets no training run draws from.

    python -m benchmarks.heldout [--model models/glus-tiny] [--ablation "no contrastive=DIR" ...]
                                 [--videos 24] [--frames 12] [--size 128x128] [--out DIR]

Variants: reference offline (GLUS's loop), reference without the memory bank (each frame
decoded from its own features and [SEG] alone), runtime fp32 / int8 / int8 + incremental window
(offline), runtime fp32 streaming (causal context policy), and "reference offline" of every
--ablation checkpoint (e.g. one trained with --no-contrastive). Each variant is scored overall and
split by what an expression needs (evalkit.heldout: "static" = colour/shape name the target,
"motion" = only the motion tells it from a look-alike). Writes heldout-<model>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/threads.py

RESULTS = Path(__file__).parent / "results"


def reference_segmenter(glus_dir: Path, clip_dir: Path, use_memory: bool = True):
    import reference

    ref = reference.load(glus_dir, clip_dir)

    def segment(frames, texts):
        return [reference.segment_video(ref, frames, t, use_memory=use_memory).masks for t in texts]

    return segment


def engine_dir_for(glus_dir: Path, clip_dir: Path, precision: str, root: Path) -> Path:
    from export.build import build

    out = root / f"{glus_dir.parent.name}-{precision}"
    build(glus_dir, clip_dir, precision=precision, out=out, progress=False)  # reuses what it can
    return out


def runtime_segmenter(engine_dir: Path, kv_policy: str = "exact", stream: bool = False):
    from runtime import GlusEngine

    engine = GlusEngine.load(engine_dir, threads=2)

    def offline(frames, texts):
        return [r.masks for r in engine.segment_video(frames, texts, kv_policy=kv_policy)]

    def causal(frames, texts):
        s = engine.stream(list(dict.fromkeys(texts)), kv_policy=kv_policy)  # a stream holds each text once
        per_frame = [s.push(f) for f in frames]
        return [[m[t] for m in per_frame] for t in texts]

    return causal if stream else offline


def table(results: dict) -> list[str]:
    lines = [
        "| variant | J&F | J | F | J&F static (colour/shape) | J&F motion-only | "
        "static: colour names it | static: shape needed | wall s (shared CPU) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        kinds = [f"{r[k]['JF']:.4f} (n={r[k]['n']})" if k in r else "–" for k in ("static", "motion")]
        needs = r.get("needs", {})  # results measured before this split existed lack it
        split = [f"{needs[k]['JF']:.4f} (n={needs[k]['n']})" if k in needs else "–" for k in ("colour", "shape")]
        lines.append(
            f"| {name} | **{r['JF']:.4f}** | {r['J']:.4f} | {r['F']:.4f} | "
            f"{kinds[0]} | {kinds[1]} | {split[0]} | {split[1]} | {r['seconds']:.0f} |"
        )
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.heldout", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="models/glus-tiny", help="directory with glus/ and clip/")
    p.add_argument(
        "--ablation",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="another checkpoint (glus/ + clip/) scored as 'reference offline'",
    )
    p.add_argument(
        "--ablation-no-memory",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="a checkpoint trained without the memory bank, scored the way it was trained"
        " (the reference loop without memory)",
    )
    p.add_argument("--videos", type=int, default=24)
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--size", default="128x128")
    p.add_argument("--data", default=None, help="where the held-out sets are written (default: cache)")
    p.add_argument("--engines", default=None, help="where engines are built (default: cache)")
    p.add_argument(
        "--only",
        action="append",
        default=None,
        metavar="VARIANT",
        help="run only this variant (repeatable; names as in the table)",
    )
    p.add_argument("--limit", type=int, default=None, help="first N expressions per split (smoke runs)")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument(
        "--merge",
        action="store_true",
        help="add these variants to the model's existing results instead of replacing them",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="score nothing: rewrite the model's .json/.md from its stored results",
    )
    a = p.parse_args(argv)
    if a.report_only:
        a.merge, a.only = True, []

    import torch

    torch.set_num_threads(2)
    from export.default_model import cache_dir
    from training.data import write_heldout

    cache = cache_dir()
    h, _, w = a.size.partition("x")
    data_dir = Path(a.data) if a.data else cache / f"heldout-{a.videos}x{a.frames}-{a.size}"
    data = write_heldout(data_dir, a.videos, a.frames, (int(h), int(w)))
    model = Path(a.model)
    glus, clip = model / "glus", model / "clip"
    engines = Path(a.engines) if a.engines else cache / "heldout-engines"

    variants = {
        "reference offline": lambda: reference_segmenter(glus, clip),
        "reference, no memory bank": lambda: reference_segmenter(glus, clip, use_memory=False),
        "runtime fp32": lambda: runtime_segmenter(engine_dir_for(glus, clip, "fp32", engines)),
        "runtime int8": lambda: runtime_segmenter(engine_dir_for(glus, clip, "int8", engines)),
        "runtime int8 + incremental window": lambda: runtime_segmenter(
            engine_dir_for(glus, clip, "int8", engines), kv_policy="incremental"
        ),
        "runtime fp32 streaming (causal)": lambda: runtime_segmenter(
            engine_dir_for(glus, clip, "fp32", engines), stream=True
        ),
    }
    for spec, memory in [(x, True) for x in a.ablation] + [(x, False) for x in a.ablation_no_memory]:
        name, _, d = spec.partition("=")
        if not d:
            p.error(f"--ablation wants NAME=DIR, got {spec!r}")
        label = f"reference offline, {name}" if memory else f"reference, no memory bank, {name}"
        variants[label] = lambda d=Path(d), m=memory: reference_segmenter(d / "glus", d / "clip", use_memory=m)
    if a.only is not None:
        unknown = [v for v in a.only if v not in variants]
        if unknown:
            p.error(f"unknown variant(s) {unknown}; known: {list(variants)}")
        variants = {k: v for k, v in variants.items() if k in a.only}

    from evalkit.heldout import score

    results = {}
    for name, make in variants.items():
        t = time.time()
        r = score(make(), data, limit=a.limit, progress=True, desc=name)
        r["seconds"] = time.time() - t
        results[name] = r
        print(
            f"{name}: J&F {r['JF']:.4f} (static {r.get('static', {}).get('JF', float('nan')):.4f},"
            f" motion {r.get('motion', {}).get('JF', float('nan')):.4f}) in {r['seconds']:.0f} s",
            flush=True,
        )

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"heldout-{model.name}"
    meta = {
        "model": str(model),
        "ablations": a.ablation + a.ablation_no_memory,
        "data": [list(d) for d in data],
        "videos": a.videos,
        "frames": a.frames,
        "size": a.size,
        "limit": a.limit,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    path = out / f"{stem}.json"
    if a.merge and path.is_file():
        old = json.loads(path.read_text())
        if old["meta"]["data"] != meta["data"] or old["meta"].get("limit") != a.limit:
            p.error(f"--merge: {path} was measured on other data")
        results = {**old["results"], **results}
        if a.report_only:  # nothing new was measured: keep the measurement date
            meta["date"] = old["meta"]["date"]
        meta["ablations"] = sorted(set(old["meta"]["ablations"]) | set(a.ablation) | set(a.ablation_no_memory))
    from evalkit.heldout import needs_from_per_expression

    for r in results.values():  # results stored before the colour / shape split
        if "needs" not in r and "per_expression" in r:
            r["needs"] = needs_from_per_expression(r, data)
    path.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    md = [
        f"## Held-out J&F: {model}",
        "",
        f"{a.videos} synthetic videos x {a.frames} frames at {a.size} "
        f"(evalkit.synth, splits {', '.join(s for _, s in data)}: seeds no training run draws), "
        "MeViS protocol, measured by `python -m benchmarks.heldout` on "
        f"{meta['date'][:10]}. Static: colour/shape alone name the target; motion-only: only "
        "the motion tells the target from a look-alike.",
        "",
        *table(results),
        "",
    ]
    (out / f"{stem}.md").write_text("\n".join(md))
    print("\n".join(table(results)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
