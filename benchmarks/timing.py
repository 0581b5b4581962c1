"""Interleaved timing: alternate the variants, repeat, take medians.

Other work on a shared machine comes and goes; timing variant A for a minute and then B for a
minute would charge B for whatever ran meanwhile. Alternating A, B, C, A, B, C... (rotating who
goes first) spreads that noise over all of them, and the per-repeat ratios show how much there was.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved(
    variants: dict[str, Callable[[], float]], repeats: int, warmup: int = 1, pause_s: float = 0.2
) -> dict[str, list[float]]:
    """Call every variant (each returns the seconds it took) `warmup` + `repeats` times,
    alternating and rotating who goes first; the warm-up rounds are dropped. A short pause
    between calls lets the last one's spinning threads go idle."""
    names = list(variants)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + repeats):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            time.sleep(pause_s)
            t = variants[n]()
            if r >= warmup:
                times[n].append(t)
    return times


def speed_table(times: dict[str, list[float]], n_frames: int, baseline: str) -> dict:
    """Per variant: median seconds per video, per-frame latency, FPS, and speed-up over the
    baseline as the ratio of medians plus the range of the per-repeat ratios."""
    base = times[baseline]
    out = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        ratios = [b / t for b, t in zip(base, ts)]
        out[name] = {
            "seconds": ts,
            "median_s": med,
            "per_frame_ms": 1000.0 * med / n_frames,
            "fps": n_frames / med,
            "speedup": statistics.median(base) / med,
            "speedup_per_repeat": [min(ratios), max(ratios)],
        }
    return out
