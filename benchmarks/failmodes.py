"""What kind of mistake a trained GLUS makes on targets with a look-alike twin (held-out set):
per frame, the mask on the target, on both ("merge"), on the twin ("swap"), elsewhere or empty;
and whether the [SEG] embedding knows where the target is (a ridge read-out of the target's
centre, cross-fitted across the two held-out splits: nearer the target than the twin?).

    python -m benchmarks.failmodes [--model models/glus-tiny] [--videos 24] [--frames 12]
                                   [--size 128x128] [--out benchmarks/results]

Reference offline (GLUS's loop). Writes failmodes-<model>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/threads.py

RESULTS = Path(__file__).parent / "results"


def collect(ref, data, progress: bool = True):
    """Per TwinCase: (outcomes per frame, [SEG] embeddings [T, D]) of reference.segment_video."""
    from itertools import groupby

    from tqdm import tqdm

    import reference
    from evalkit.failmodes import frame_outcome, twin_cases
    from evalkit.formats import load_dataset
    from evalkit.heldout import _frames

    cases, outcomes, segs = [], [], []
    bar = tqdm(desc="twin cases", disable=not progress)
    for root, split in data:
        ds = load_dataset("mevis", root, split)
        for video, mine in groupby(twin_cases(root, split), key=lambda c: c.video):  # video by video
            frames = _frames(ds, video)
            exprs = {e.exp_id: e for e in ds.expressions_of(video)}
            for c in mine:
                res = reference.segment_video(ref, frames, exprs[c.exp_id].text)
                outcomes.append(
                    [
                        frame_outcome(m, ds.gt_mask(exprs[c.exp_id], f), ds.gt_mask(exprs[c.twin_exp_id], f))
                        for f, m in enumerate(res.masks)
                    ]
                )
                segs.append(np.stack([np.asarray(fr.seg_embedding, np.float32) for fr in res.frames]))
                cases.append(c)
                bar.update()
    bar.close()
    return cases, outcomes, segs


def probe_by_outcome(cases, outcomes, segs, alpha: float = 100.0) -> dict:
    """Share of frames whose [SEG] read-out points nearer the target than the twin, per outcome."""
    from evalkit.failmodes import OUTCOMES, pick_by_probe

    rows = [
        (c.split, o, s, c.target_xy[f], c.twin_xy[f])
        for c, outs, seg in zip(cases, outcomes, segs)
        for f, (o, s) in enumerate(zip(outs, seg))
        if o != "absent"
    ]
    if len({r[0] for r in rows}) < 2:
        return {}
    groups, outs, x, txy, oxy = (np.array(v) for v in zip(*rows))
    near = pick_by_probe(x, txy, oxy, groups, alpha)
    out = {"all": float(near.mean())}
    for k in OUTCOMES:
        if (outs == k).any():
            out[k] = float(near[outs == k].mean())
    return out


def table(summary: dict, probe: dict, n_cases: int) -> list[str]:
    from evalkit.failmodes import OUTCOMES

    lines = [
        f"{n_cases} expressions whose target has a twin, {summary['frames']} frames "
        "(frames where either is out of view left out)",
        "",
        "| outcome | share of frames | [SEG] read-out nearer the target than the twin |",
        "|---|---|---|",
    ]
    for k in OUTCOMES:
        lines.append(
            f"| {k} | {summary[k]:.3f} | {probe[k]:.2f} |" if k in probe else f"| {k} | {summary[k]:.3f} | - |"
        )
    if probe:
        lines.append(f"| all | 1.000 | {probe['all']:.2f} |")
    by = summary["by_frame"]
    lines += [
        "",
        "| frame | " + " | ".join(str(f) for f in range(len(by["right"]))) + " |",
        "|---" * (len(by["right"]) + 1) + "|",
    ]
    for k in ("right", "merge", "swap"):
        lines.append(f"| {k} | " + " | ".join(f"{v:.2f}" for v in by[k]) + " |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.failmodes", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="models/glus-tiny", help="directory with glus/ and clip/")
    p.add_argument("--videos", type=int, default=24)
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--size", default="128x128")
    p.add_argument("--data", default=None, help="where the held-out sets are written (default: cache)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS))
    a = p.parse_args(argv)

    import torch

    import reference
    from evalkit.failmodes import summarize
    from export.default_model import cache_dir
    from training.data import write_heldout

    torch.set_num_threads(a.threads)
    h, _, w = a.size.partition("x")
    data_dir = Path(a.data) if a.data else cache_dir() / f"heldout-{a.videos}x{a.frames}-{a.size}"
    data = write_heldout(data_dir, a.videos, a.frames, (int(h), int(w)))
    model = Path(a.model)
    ref = reference.load(model / "glus", model / "clip")
    t0 = time.time()
    cases, outcomes, segs = collect(ref, data)
    summary, probe = summarize(outcomes), probe_by_outcome(cases, outcomes, segs)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"failmodes-{model.name}"
    meta = {
        "model": str(model),
        "data": data,
        "seconds": round(time.time() - t0, 1),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    per_case = [
        {"split": c.split, "video": c.video, "exp_id": c.exp_id, "outcomes": o} for c, o in zip(cases, outcomes)
    ]
    (out / f"{stem}.json").write_text(
        json.dumps({"meta": meta, "summary": summary, "probe": probe, "cases": per_case}, indent=1)
    )
    lines = table(summary, probe, len(cases))
    md = [
        f"## Failure modes on look-alike twins: {model}",
        "",
        f"Held-out sets {', '.join(s for _, s in data)}; reference offline; measured by "
        f"`python -m benchmarks.failmodes` on {meta['date'][:10]}. merge (tested first): the mask "
        "covers at least half of both the target and its twin; right: IoU with the target >= 0.5; "
        "swap: IoU with the twin >= 0.5. The read-out is a ridge regression from the [SEG] embedding to the target's "
        "centre, fitted on one split and scored on the other.",
        "",
        *lines,
        "",
    ]
    (out / f"{stem}.md").write_text("\n".join(md))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
