"""A long run of several cameras through one Triton server: every frame answered, masks equal to
in-process streams, the server's memory flat; then a client that vanishes without END.

    python -m benchmarks.serving_soak [--cameras 4] [--frames 2500] [--engine default-int8]
        [--idle-timeout 5]

Soak: --cameras cameras send --frames frames each (closed loop, one thread per camera) through
one server (serving.server.Server, max_cameras = cameras, idle timeout --idle-timeout). The
frames are made on the fly: a textured background and a red square bouncing off the edges,
a different background, speed and start per camera, far longer than the memory bank. Each
answer must be the next frame index of its camera; each frame's masks are kept as a digest
(SHA-1 of shape + bits), and afterwards the same frames go through in-process Streams (the
same engine, threads) and every digest is compared. The server's RSS (server + python backend
stub) is sampled every second against frames answered: growth after warm-up = median RSS over
the last 5 % of the frames against the median over 10-15 % (the first 10 % are warm-up: the
graphs' working memory, the banks filling); the peak after warm-up is given too.

Client vanishes: a separate process opens a camera, sends 10 frames and is SIGKILLed (no END,
its gRPC stream torn down). The camera must close after the idle timeout: glus_open_cameras
back to 0, and the server's RSS back to what it was before the client came.
Writes results/serving-soak.{json,md,svg}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/threads.py

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parent.parent
EXPRESSION = "the red square"
SIZE = (48, 64)
WARMUP_SHARE, WARM_WINDOW, END_WINDOW = 0.10, (0.10, 0.15), 0.05
VANISH_FRAMES = 10


# ---- frames ---------------------------------------------------------------------------------------
class BouncingSquare:
    """Frame t of one camera's video: cheap, deterministic, as long as asked."""

    def __init__(self, seed: int, size: tuple[int, int] = SIZE, side: int = 16):
        rng = np.random.default_rng(seed)
        self.h, self.w = size
        self.side = side
        self.background = rng.integers(0, 120, (self.h, self.w, 3), dtype=np.uint8)
        self.start = rng.integers(0, [self.h - side, self.w - side])
        self.speed = rng.integers(1, 5, 2)

    def _bounce(self, x: int, span: int) -> int:
        x %= 2 * span
        return x if x < span else 2 * span - x

    def frame(self, t: int) -> np.ndarray:
        y = self._bounce(int(self.start[0] + self.speed[0] * t), self.h - self.side)
        x = self._bounce(int(self.start[1] + self.speed[1] * t), self.w - self.side)
        f = self.background.copy()
        f[y : y + self.side, x : x + self.side] = (220, 30, 30)
        return f


def digest(masks: np.ndarray) -> str:
    return hashlib.sha1(str(masks.shape).encode() + np.packbits(masks).tobytes()).hexdigest()


# ---- the soak -------------------------------------------------------------------------------------
@dataclass
class Soak:
    digests: list[list[str]]
    out_of_order: int
    seconds: float
    samples: list[dict] = field(default_factory=list)  # {"t_s", "frames", "rss_bytes"}


def soak_server(server, cameras: int, frames: int) -> Soak:
    """Every camera's frames through the server, RSS sampled once a second."""
    from serving.client import CameraClient

    digests: list[list[str]] = [[] for _ in range(cameras)]
    bad_index = [0] * cameras
    errors: list[Exception] = []
    stop = threading.Event()
    samples: list[dict] = []

    def camera(i: int) -> None:
        video = BouncingSquare(seed=100 + i)
        try:
            with CameraClient(server.grpc_url, [EXPRESSION]) as cam:
                for t in range(frames):
                    answer = cam.push(video.frame(t))
                    bad_index[i] += answer.frame_index != t
                    digests[i].append(digest(answer.masks))
        except Exception as e:  # noqa: BLE001 (raised below, in the main thread)
            errors.append(e)

    def sample(t0: float) -> None:
        while not stop.wait(1.0):
            samples.append(
                {"t_s": time.perf_counter() - t0, "frames": sum(map(len, digests)), "rss_bytes": server.rss_bytes()}
            )

    threads = [threading.Thread(target=camera, args=(i,), daemon=True) for i in range(cameras)]
    t0 = time.perf_counter()
    sampler = threading.Thread(target=sample, args=(t0,), daemon=True)
    sampler.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    stop.set()
    sampler.join()
    if errors:
        raise RuntimeError(f"a camera failed after {sum(map(len, digests))} frames: {errors[0]!r}") from errors[0]
    return Soak(digests, sum(bad_index), seconds, samples)


def in_process_digests(engine, cameras: int, frames: int) -> tuple[list[list[str]], float]:
    """The same frames through in-process Streams (one thread per camera)."""
    digests: list[list[str]] = [[] for _ in range(cameras)]

    def camera(i: int) -> None:
        video = BouncingSquare(seed=100 + i)
        stream = engine.stream([EXPRESSION])
        for t in range(frames):
            digests[i].append(digest(stream.push(video.frame(t))[EXPRESSION][None]))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=camera, args=(i,)) for i in range(cameras)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return digests, time.perf_counter() - t0


def rss_growth(samples: list[dict], total_frames: int) -> dict:
    """RSS at the end of the run against just after warm-up (medians of windows of frames)."""

    def window(lo: float, hi: float) -> list[int]:
        return [s["rss_bytes"] for s in samples if lo * total_frames <= s["frames"] <= hi * total_frames]

    warm, end = window(*WARM_WINDOW), window(1 - END_WINDOW, 1.0)
    after = window(WARMUP_SHARE, 1.0)
    if not warm or not end:
        return {"error": f"too few RSS samples ({len(samples)}) for the windows"}
    base = statistics.median(warm)
    return {
        "rss_after_warmup_bytes": base,
        "rss_end_bytes": statistics.median(end),
        "growth_pct": 100 * (statistics.median(end) - base) / base,
        "peak_after_warmup_bytes": max(after),
        "peak_growth_pct": 100 * (max(after) - base) / base,
        "samples_after_warmup": len(after),
    }


# ---- the client that vanishes ---------------------------------------------------------------------
def vanishing_client(url: str, frames: int) -> None:
    """Run in a child process: open a camera, send frames, say so, then wait to be killed."""
    from serving.client import CameraClient

    cam = CameraClient(url, [EXPRESSION])
    video = BouncingSquare(seed=999)
    for t in range(frames):
        cam.push(video.frame(t))
    print("sent", flush=True)
    time.sleep(3600)


def wait_for(predicate, timeout_s: float, period_s: float = 0.25) -> float | None:
    """Seconds until predicate() held, or None if it did not within timeout_s."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        if predicate():
            return time.perf_counter() - t0
        time.sleep(period_s)
    return None


def client_vanishes(server, idle_timeout_s: float) -> dict:
    def open_cameras() -> float:
        return server.metrics().get("glus_open_cameras", -1)

    time.sleep(1.0)
    rss_before = server.rss_bytes()
    freed_before = server.metrics().get("glus_cameras_idled_out_total", 0)
    code = f"from benchmarks.serving_soak import vanishing_client as v; v({server.grpc_url!r}, {VANISH_FRAMES})"
    child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline().strip()
        if line != "sent":
            raise RuntimeError(f"the vanishing client did not send its frames (said {line!r})")
        open_with_client = open_cameras()
        rss_with_client = server.rss_bytes()
    finally:
        child.send_signal(signal.SIGKILL)  # no END, no clean stream shutdown
        child.wait()
    killed = time.perf_counter()
    freed_after_s = wait_for(lambda: open_cameras() == 0, idle_timeout_s + 30)
    time.sleep(1.0)  # the reaper's malloc_trim
    rss_after = server.rss_bytes()
    return {
        "frames_sent": VANISH_FRAMES,
        "open_cameras_with_client": open_with_client,
        "open_cameras_after": open_cameras(),
        "freed_after_kill_s": freed_after_s,
        "idle_timeout_s": idle_timeout_s,
        "cameras_idled_out": server.metrics().get("glus_cameras_idled_out_total", 0) - freed_before,
        "rss_before_bytes": rss_before,
        "rss_with_client_bytes": rss_with_client,
        "rss_after_bytes": rss_after,
        "rss_back_within_bytes": rss_after - rss_before,
        "seconds": time.perf_counter() - killed,
    }


# ---- report ---------------------------------------------------------------------------------------
def render_rss(samples: list[dict], total_frames: int, title: str) -> str:
    """Server RSS (MiB) against frames answered, the warm-up shaded."""
    W, H, L, R, T, B = 720, 300, 64, 20, 34, 48
    xs = [s["frames"] for s in samples]
    ys = [s["rss_bytes"] / 2**20 for s in samples]
    lo, hi = min(ys), max(ys)
    pad = max(1.0, 0.1 * (hi - lo))
    lo, hi = lo - pad, hi + pad

    def x(v):
        return L + (W - L - R) * v / max(total_frames, 1)

    def y(v):
        return T + (H - T - B) * (hi - v) / (hi - lo)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
        f'<rect width="{W}" height="{H}" fill="white"/>',
        f'<text x="{(W + L - R) / 2}" y="20" text-anchor="middle" font-size="14">{escape(title)}</text>',
        f'<rect x="{L}" y="{T}" width="{x(WARMUP_SHARE * total_frames) - L:.1f}" height="{H - T - B}"'
        ' fill="#999" fill-opacity="0.15"/>',
        f'<text x="{L + 4}" y="{T + 14}" fill="#666">warm-up</text>',
    ]
    for k in range(6):
        v = total_frames * k / 5
        out.append(f'<line x1="{x(v):.1f}" x2="{x(v):.1f}" y1="{T}" y2="{H - B}" stroke="#eee"/>')
        out.append(f'<text x="{x(v):.1f}" y="{H - B + 16}" text-anchor="middle">{v:.0f}</text>')
    for k in range(5):
        v = lo + (hi - lo) * k / 4
        out.append(f'<line x1="{L}" x2="{W - R}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{L - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.0f}</text>')
    path = " ".join(f"{x(a):.1f},{y(b):.1f}" for a, b in zip(xs, ys))
    out.append(f'<polyline points="{path}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>')
    out.append(f'<text x="{(W + L - R) / 2}" y="{H - 10}" text-anchor="middle">frames answered (all cameras)</text>')
    out.append(
        f'<text x="16" y="{(H - B + T) / 2}" text-anchor="middle" transform="rotate(-90 16 {(H - B + T) / 2})">'
        "server RSS, MiB</text>"
    )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def to_markdown(out: dict) -> str:
    m, s, g, v = out["machine"], out["settings"], out["rss"], out["client_vanishes"]
    mib = 2**20
    if "error" in g:
        g = {"rss_after_warmup_bytes": 0, "rss_end_bytes": 0, "growth_pct": float("nan"), "peak_growth_pct": 0}
    freed = (
        f"back to {v['open_cameras_after']:.0f} {v['freed_after_kill_s']:.1f} s after the kill"
        if v["freed_after_kill_s"] is not None
        else f"NOT closed {v['idle_timeout_s'] + 30:g} s after the kill (still {v['open_cameras_after']:.0f})"
    )
    total = s["cameras"] * s["frames"]
    lines = [
        f"## Soak: {s['cameras']} cameras x {s['frames']} frames through one Triton server (machine {m['slug']})",
        "",
        f"{m['cpu']}, {m['cores']} cores, {out['date']}; load average at start {out['load_average_start']}, at end"
        f" {out['load_average_end']}. Engine: {out['engine']} ({out['engine_dir']}), {s['size'][0]}x{s['size'][1]}"
        f" frames of a bouncing red square (one background, speed and start per camera), expression"
        f" {EXPRESSION!r}; server: max_cameras {s['cameras']}, idle timeout {s['idle_timeout_s']:g} s, workers 1;"
        f" closed loop, one thread per camera. Total run {out['run_seconds'] / 60:.1f} min"
        " (benchmarks/serving_soak.py).",
        "",
        "| | |",
        "|---|---|",
        f"| frames answered | {out['frames_answered']} of {total} |",
        f"| answers out of order (frame index not the next) | {out['out_of_order']} |",
        f"| masks equal to in-process streams (digest of every frame) | {out['masks_equal']} of {total} |",
        f"| server throughput | {out['frames_per_s']:.1f} frames/s ({out['soak_seconds']:.0f} s) |",
        f"| in-process, same frames, same threads | {out['in_process_frames_per_s']:.1f} frames/s |",
        f"| server RSS after warm-up (10-15 % of frames, median) | {g['rss_after_warmup_bytes'] / mib:.1f} MiB |",
        f"| server RSS at the end (last 5 %, median) | {g['rss_end_bytes'] / mib:.1f} MiB |",
        f"| **growth after warm-up** | **{g['growth_pct']:+.2f} %** (peak {g['peak_growth_pct']:+.2f} %;"
        f" {'under' if abs(g['growth_pct']) < 1 else 'NOT under'} 1 %) |",
        f"| server RSS after the cameras ended | {out['rss_after_end_bytes'] / mib:.1f} MiB |",
        "",
        f"Client vanishes: a process sent {v['frames_sent']} frames on a new camera and was SIGKILLed (no END)."
        f" Open cameras with it: {v['open_cameras_with_client']:.0f}; {freed} (idle timeout"
        f" {v['idle_timeout_s']:g} s; glus_cameras_idled_out_total +{v['cameras_idled_out']:.0f}). Server RSS"
        f" before the client {v['rss_before_bytes'] / mib:.1f} MiB, with it {v['rss_with_client_bytes'] / mib:.1f}"
        f" MiB, after it was freed {v['rss_after_bytes'] / mib:.1f} MiB"
        f" ({v['rss_back_within_bytes'] / mib:+.1f} MiB).",
        "",
        "The in-process figure is the comparison run after the soak (the same frames, one thread per camera):"
        " its streams overlap on the cores, while the server with workers 1 runs the cameras of an `execute`"
        " one after the other (serving-load.md has the two side by side, interleaved, with workers 1 and 2).",
        "",
        "![server RSS over the soak](serving-soak.svg)",
        "",
    ]
    return "\n".join(lines)


# ---- the run --------------------------------------------------------------------------------------
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serving_soak", description=__doc__.split("\n")[0])
    p.add_argument("--cameras", type=int, default=4)
    p.add_argument("--frames", type=int, default=2500, help="frames per camera")
    p.add_argument("--engine", default="default-int8", help="default-int8, tiny-fp32 or medium")
    p.add_argument("--idle-timeout", type=float, default=5.0, help="seconds")
    p.add_argument("--out", default=str(RESULTS))
    a = p.parse_args(argv)
    from serving.repository import write_repository
    from serving.server import Server

    from .machine import load_average
    from .serving_load import engine_dir, load_engine, run_stamp, snapshot

    t0 = time.perf_counter()
    load_start = load_average()
    total = a.cameras * a.frames
    with tempfile.TemporaryDirectory(prefix="serving-soak-") as tmp:
        tmp = Path(tmp)
        source = engine_dir(a.engine)
        path = snapshot(source, tmp)
        write_repository(path, tmp / "repo", max_cameras=a.cameras, idle_timeout_s=a.idle_timeout)
        with Server(tmp / "repo", log=tmp / "server.log") as server:
            soak = soak_server(server, a.cameras, a.frames)
            print(f"soak: {total} frames in {soak.seconds:.0f} s", flush=True)
            time.sleep(1.0)  # the ENDs' malloc_trim
            rss_after_end = server.rss_bytes()
            open_after_end = server.metrics().get("glus_open_cameras")
            vanished = client_vanishes(server, a.idle_timeout)
            print(f"client vanishes: {vanished}", flush=True)
        engine = load_engine(path)
        reference, in_process_s = in_process_digests(engine, a.cameras, a.frames)
    equal = sum(x == y for got, ref in zip(soak.digests, reference) for x, y in zip(got, ref))
    out = {
        **run_stamp(),
        "engine": a.engine,
        "engine_dir": str(source),
        "settings": {
            "cameras": a.cameras,
            "frames": a.frames,
            "size": list(SIZE),
            "idle_timeout_s": a.idle_timeout,
            "warmup_share": WARMUP_SHARE,
        },
        "load_average_start": load_start,
        "load_average_end": load_average(),
        "frames_answered": sum(map(len, soak.digests)),
        "out_of_order": soak.out_of_order,
        "masks_equal": equal,
        "soak_seconds": soak.seconds,
        "frames_per_s": total / soak.seconds,
        "in_process_seconds": in_process_s,
        "in_process_frames_per_s": total / in_process_s,
        "rss": rss_growth(soak.samples, total),
        "rss_after_end_bytes": rss_after_end,
        "open_cameras_after_end": open_after_end,
        "client_vanishes": vanished,
        "rss_samples": soak.samples,
        "run_seconds": time.perf_counter() - t0,
    }
    dest = Path(a.out)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "serving-soak.json").write_text(json.dumps(out, indent=1) + "\n")
    title = f"Server RSS, {a.cameras} cameras x {a.frames} frames ({a.engine})"
    (dest / "serving-soak.svg").write_text(render_rss(soak.samples, total, title))
    (dest / "serving-soak.md").write_text(to_markdown(out))
    print(to_markdown(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
