"""How far asking the LLM less goes: J&F, LLM rate and time per frame of the default model's int8
engine for llm_every = 1, 2, 4, ..., "auto" (with and without sticky [SEG], exact or incremental
window), each against the first variant in the same run.

    python -m benchmarks.llm_every [--variants 1,2,4,8,auto,auto+sticky] [--split heldout]
                                   [--videos 24] [--frames 12] [--size 128x128]

A variant is SETTING[+sticky][+incremental]; SETTING is an integer k, "auto" (the default
AutoTrigger) or auto(min_score=..,max_drop=..,min_cosine=..,max_gap=..). --split validation
scores the validation sets (seeds 616161 and 727272: what llm_trigger tunes on); heldout (default)
benchmarks/heldout.py's sets, which nothing is tuned on. Writes llm-every-glus-tiny[-SPLIT].{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/threads.py

RESULTS = Path(__file__).parent / "results"
VALIDATION_SEEDS = (616161, 727272)  # models/glus-tiny/TRAINING.md chose its runs on these
_VARIANT = re.compile(r"^(\d+|auto(?:\(([^)]*)\))?)((?:\+(?:sticky|incremental))*)$")


def parse_variant(text: str) -> dict:
    """'auto(max_gap=4)+sticky' -> segment_video keywords (llm_every, sticky_seg, kv_policy)."""
    from runtime.llm_policy import AutoTrigger

    m = _VARIANT.match(text.strip())
    if not m:
        raise ValueError(f"bad variant {text!r}: SETTING[+sticky][+incremental], SETTING = k, auto or auto(a=x,...)")
    setting, args, flags = m.group(1), m.group(2), m.group(3)
    if setting.isdigit():
        every = int(setting)
    elif args:
        kw = {}
        for part in filter(None, args.split(",")):
            key, _, value = part.partition("=")
            kw[key.strip()] = int(value) if key.strip() == "max_gap" else float(value)
        every = AutoTrigger(**kw)
    else:
        every = "auto"
    return {
        "llm_every": every,
        "sticky_seg": "+sticky" in flags,
        "kv_policy": "incremental" if "+incremental" in flags else "exact",
    }


def data_sets(split: str, videos: int, frames: int, size: str):
    from runtime.paths import cache_dir
    from training.data import write_heldout

    h, _, w = size.partition("x")
    if split == "validation":
        return write_heldout(
            cache_dir() / f"validation-{videos}x{frames}-{size}", videos, frames, (int(h), int(w)), VALIDATION_SEEDS
        )
    return write_heldout(cache_dir() / f"heldout-{videos}x{frames}-{size}", videos, frames, (int(h), int(w)))


def absent_targets(data) -> set[tuple[str, str, str]]:
    """(split, video, exp_id) of the expressions whose target is out of sight (no visible pixel:
    it left the frame or is hidden) in at least one frame: where sticky [SEG] matters."""
    out = set()
    for root, split in data:
        meta = json.loads((Path(root) / split / "synth_meta.json").read_text())
        for video, v in meta["videos"].items():
            pixels = {o["obj_id"]: o["visible_pixels"] for o in v["objects"]}
            for exp_id, e in v["expressions"].items():
                per_frame = [sum(pixels[o][t] for o in e["obj_ids"]) for t in range(len(pixels[e["obj_ids"][0]]))]
                if min(per_frame) == 0:
                    out.add((split, video, exp_id))
    return out


def run_variants(engine, data, variants: list[str], progress: bool = True) -> dict:
    """{variant: J&F (overall, per need, on absent targets), LLM rate, seconds, ms per frame-expression}."""
    from evalkit.heldout import score

    absent = absent_targets(data)
    rows = {}
    for text in variants:
        kw = parse_variant(text)
        count = {"frames": 0, "llm": 0}

        def segment(frames, texts, kw=kw, count=count):
            results = engine.segment_video(frames, texts, **kw)
            count["frames"] += sum(len(r.steps) for r in results)
            count["llm"] += sum(s.llm_ran for r in results for s in r.steps)
            return [r.masks for r in results]

        t = time.perf_counter()
        r = score(segment, data, progress=progress, desc=text)
        seconds = time.perf_counter() - t
        mine = [(j, f) for sp, v, e, _, j, f in r["per_expression"] if (sp, v, e) in absent]
        rows[text] = {
            "JF": r["JF"],
            "J": r["J"],
            "F": r["F"],
            "needs": r["needs"],
            "absent": {"JF": sum(j + f for j, f in mine) / (2 * len(mine)) if mine else None, "n": len(mine)},
            "llm_rate": count["llm"] / count["frames"],
            "seconds": seconds,
            "ms_per_frame_expression": 1000 * seconds / count["frames"],
        }
    return rows


def table(rows: dict) -> list[str]:
    base = next(iter(rows.values()))
    lines = [
        "| variant | J&F | ΔJ&F | colour | shape | motion | target out of sight (n) | LLM on | ms / frame-expr |"
        " speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        n, a = r["needs"], r["absent"]
        absent = f"{a['JF']:.3f} ({a['n']})" if a["JF"] is not None else "–"
        lines.append(
            f"| {name} | {r['JF']:.4f} | {r['JF'] - base['JF']:+.4f} | {n['colour']['JF']:.3f} |"
            f" {n['shape']['JF']:.3f} | {n['motion']['JF']:.3f} | {absent} | {100 * r['llm_rate']:.0f}% |"
            f" {r['ms_per_frame_expression']:.1f} |"
            f" {base['ms_per_frame_expression'] / r['ms_per_frame_expression']:.2f}x |"
        )
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.llm_every", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="models/glus-tiny")
    p.add_argument("--variants", default="1,2,4,8,16,auto,auto+sticky,1+sticky,1+incremental,auto+incremental")
    p.add_argument("--split", default="heldout", choices=["heldout", "validation"])
    p.add_argument("--videos", type=int, default=24)
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--size", default="128x128")
    p.add_argument("--precision", default="int8", choices=["fp32", "int8"])
    p.add_argument("--out", default=str(RESULTS))
    a = p.parse_args(argv)
    variants = [v for v in a.variants.split(",") if v]
    for v in variants:
        try:
            parse_variant(v)
        except (ValueError, TypeError) as e:
            p.error(str(e))
    from runtime import GlusEngine
    from runtime.paths import cache_dir

    from .heldout import engine_dir_for
    from .machine import machine_info, machine_slug

    model = Path(a.model)
    data = data_sets(a.split, a.videos, a.frames, a.size)
    engine = GlusEngine.load(
        engine_dir_for(model / "glus", model / "clip", a.precision, cache_dir() / "heldout-engines"), threads=2
    )
    rows = run_variants(engine, data, variants)
    info = machine_info()
    info["slug"] = machine_slug(info)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "llm-every-glus-tiny" + ("" if a.split == "heldout" else f"-{a.split}")
    data_out = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": info,
        "precision": a.precision,
        "split": a.split,
        "videos": a.videos,
        "frames": a.frames,
        "size": a.size,
        "rows": rows,
    }
    (out / f"{stem}.json").write_text(json.dumps(data_out, indent=1))
    lines = [
        f"## Asking the LLM less: default model, {a.precision} engine, {a.split} set (machine {info['slug']})",
        "",
        f"{info['cpu']}, {info['cores']} cores; {data_out['date']}; {a.videos} videos x {a.frames} frames at"
        f" {a.size}, offline. LLM on: the share of frame-expressions the LLM answered. Time: the whole"
        " scoring pass (decode, segment, write) per frame and expression; speed-up against the first"
        " row in the same run. Target out of sight: the expressions whose target has no visible pixel"
        " in some frame.",
        "",
        *table(rows),
    ]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
