"""End to end on one video: the reference loop against the runtime, interleaved.

Four ways to segment the same video for one expression: the PyTorch reference loop as GLUS
runs it, the runtime with the fp32 engine, with the int8 engine, and int8 with the incremental
KV window. Each engine runs in a process of its own (benchmarks/worker.py); the variants run
alternately, a warm-up round and then several timed rounds (benchmarks/timing.py); speed-ups
are ratios of median times. The same runs give each variant's drift against the reference's
answers, and each process's peak RSS.
"""

from __future__ import annotations

import numpy as np
import pytest

from . import drift, models
from .harness import MODELS, synth_video
from .timing import interleaved, speed_table
from .worker import Worker

# name -> (worker, kv_policy); the two int8 variants share one process (same engine)
VARIANTS = {
    "reference": ("reference", "reference"),
    "runtime fp32": ("fp32", "exact"),
    "runtime int8": ("int8", "exact"),
    "runtime int8 + incremental": ("int8", "incremental"),
}


def start_workers(mb, frames_path, expression, tmp) -> dict[str, Worker]:
    glus_dir, clip_dir = mb.dirs
    kinds = {
        "reference": ("reference", str(glus_dir), str(clip_dir)),
        "fp32": ("engine", str(mb.engine_dir("fp32"))),
        "int8": ("engine", str(mb.engine_dir("int8"))),
    }
    workers = {
        k: Worker(frames_path, expression, tmp / f"{k}.npz", *kind, cwd=models.REPO) for k, kind in kinds.items()
    }
    for w in workers.values():
        w.wait_ready()
    return workers


@pytest.mark.parametrize("model", MODELS)
def test_end_to_end(model, bench_models, settings, results, tmp_path):
    mb = bench_models[model]
    n = settings.e2e_frames
    frames, expression, gts = synth_video(n, settings.frame_size)
    frames_path = tmp_path / "frames.npy"
    np.save(frames_path, np.stack(frames))
    workers = start_workers(mb, frames_path, expression, tmp_path)
    try:
        times = interleaved(
            {name: (lambda w=workers[k], p=p: w.run(p)) for name, (k, p) in VARIANTS.items()}, settings.e2e_repeats
        )
        finished = {k: w.finish() for k, w in workers.items()}
    finally:
        for w in workers.values():
            w.kill()
    table = speed_table(times, n, "reference")

    outputs = {name: finished[k][1][p] for name, (k, p) in VARIANTS.items()}
    ref_masks, ref_segs = outputs["reference"]
    drifts, achieved, video_flops, rss = {}, {}, {}, {}
    for name, (masks, segs) in outputs.items():
        assert len(masks) == n and all(m.shape == frames[0].shape[:2] and m.dtype == bool for m in masks), name
        k, policy = VARIANTS[name]
        video_flops[name] = mb.flops.video(policy, n)
        achieved[name] = video_flops[name] / table[name]["median_s"] / 1e9
        rss[name] = finished[k][0]
        if name != "reference":
            drifts[name] = drift.compare(ref_masks, ref_segs, masks, segs, gts)
    results.put(
        "end_to_end",
        model,
        {
            "frames": n,
            "size": list(settings.frame_size),
            "repeats": settings.e2e_repeats,
            "expression": expression,
            "variants": table,
            "drift": drifts,
            "reference_vs_gt": drift.jf(gts, ref_masks),
            "reference_empty_frames": int(sum(not m.any() for m in ref_masks)),
            "flops_per_video": video_flops,
            "achieved_gflops": achieved,
            "processes": rss,
        },
    )
    results.put("models", model, mb.describe())

    for name, r in rss.items():
        assert r["imports_torch"] == (name == "reference"), f"{name}: the runtime must not import torch"
    assert any(m.any() for m in ref_masks), "the reference produced no mask at all: nothing was compared"
    fp32 = drifts["runtime fp32"]
    assert np.mean([v >= drift.FP32_IOU for v in fp32["iou"]]) >= drift.FP32_IOU_FRAC, fp32["iou"]
    assert drifts["runtime int8"]["seg_cosine_min"] >= drift.INT8_SEG_COSINE, drifts["runtime int8"]["seg_cosine"]
