"""Memory: engine size on disk and RSS over a long stream (peak RSS per variant: end to end).

Each end-to-end variant runs in a process of its own (benchmarks/worker.py), whose peak RSS
test_end_to_end records: what that variant alone needs. The long stream pushes many
frames through one Stream and samples this process's RSS: everything a stream holds is of fixed
size (runtime/stream.py), so the RSS should stay flat: the slope is reported, not asserted
(allocators make it noisy); the stream's own state is asserted bounded.
"""

from __future__ import annotations

import numpy as np
import pytest

from . import models
from .harness import MODELS, synth_video
from .machine import peak_rss_bytes, rss_bytes


def dir_bytes(path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.name.startswith("."))


@pytest.mark.parametrize("model", MODELS)
def test_engine_size(model, bench_models, results):
    mb = bench_models[model]
    glus_dir, clip_dir = mb.dirs
    sizes = {p: models.engine_bytes(mb.engine_dir(p)) for p in ("fp32", "int8")}
    results.entry("memory", model).update(
        engine_bytes=sizes,
        checkpoint_bytes=dir_bytes(glus_dir) + dir_bytes(clip_dir),
        benchmark_process_peak_rss_bytes=peak_rss_bytes(),
    )
    assert all(b > 0 for b in sizes.values())


def test_long_stream_rss(bench_models, settings, results):
    """RSS over a long stream of the tiny model's int8 engine: flat is the goal."""
    engine = bench_models["tiny"].engine("int8")
    frames, text, _ = synth_video(12, settings.frame_size)
    loop = frames + frames[-2:0:-1]  # ping-pong: motion stays smooth
    stream = engine.stream([text])
    n, every = settings.stream_frames, 10
    samples, states = [], []
    for i in range(n):
        masks = stream.push(loop[i % len(loop)])
        assert masks[text].shape == frames[0].shape[:2]
        if i % every == 0 or i == n - 1:
            samples.append((i, rss_bytes()))
            states.append(sum(stream.state_nbytes().values()))
    fit_from = max(n // 6, 50)  # after the context pool and allocator pools have filled
    x = np.array([i for i, _ in samples if i >= fit_from], float)
    y = np.array([b for i, b in samples if i >= fit_from], float)
    slope = float(np.polyfit(x, y, 1)[0]) if len(x) > 1 else 0.0
    results.entry("memory", "tiny")["stream"] = {
        "engine": "int8",
        "frames": n,
        "fit_from": fit_from,
        "rss_samples": samples,
        "rss_slope_kib_per_frame": slope / 1024,
        "rss_growth_mib": slope * (n - fit_from) / 2**20,
        "state_bytes": states,
        "state_bytes_max": max(states),
    }
    # The stream's own state is bounded: no larger late than it ever was early on.
    half = len(states) // 2
    assert max(states[half:]) <= max(states[:half])
