"""Many cameras on one Triton server against the same streams in one process: throughput, latency,
memory per camera, and what batching across cameras gains: running a batch's cameras in threads
(workers), and stacking their frames into one SAM2 image-encoder call (batch_images).

    python -m benchmarks.serving_load [--cameras 1,2,4,8] [--frames 40] [--warmup 3]
        [--models default-int8,medium,default-fp32,medium-fp32] [--size 96x128]

For each model and camera count: k cameras send their own synthetic video (evalkit.synth, one
seed per camera, its first expression), closed loop (a camera sends its next frame when the last
one is answered), k threads in this process. Four variants, in a rotating order:
- in-process: k runtime Streams of one GlusEngine in k threads;
- server variants, each a fresh tritonserver (serving.server.Server, max_cameras=k) and k
  serving.client.CameraClients. w1 / w2: the model config's workers, the requests of different
  cameras that Triton's sequence batcher hands to one `execute` run one after the other (1) or
  in threads (2). gathered: w1 with a queue delay (QUEUE_DELAY_US), so that Triton waits for the
  other cameras' frames; stacked: gathered plus batch_images, the frames of one `execute` go
  through SAM2's image encoder as one call (serving/cameras.py), then each camera's stream goes
  on alone; stacked / gathered is what stacking itself gains. An engine gets w1 and w2, or, where
  its image encoder stacks frames exactly (fp32; not dynamic int8), w1, gathered and stacked:
  run the default models (int8) and their fp32 engines (--models default-fp32,medium-fp32).
Warm-up frames (per camera) are excluded: every camera finishes them, then all start the timed
frames together (a barrier) and the wall time runs until the last one is done. Latency: the
wall time of one push (send to answer for the server), p50/p99 over every timed frame of every
camera. RSS per open camera: the server's RSS (server + python backend stub) with the k cameras
open after their frames, minus its RSS after a warm-up camera came and went, over k. Every
frame's masks of every server run are compared with the in-process run's, bit for bit, and by
IoU.
Writes results/serving-load.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.stages import stacking_refused

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/threads.py

RESULTS = Path(__file__).parent / "results"
MODELS = ("default-int8", "medium", "default-fp32", "medium-fp32")
# server variants: name -> (workers, batch_images, queue delay in microseconds)
QUEUE_DELAY_US = 5000
VARIANTS = {
    "w1": (1, False, 0),
    "w2": (2, False, 0),
    "gathered": (1, False, QUEUE_DELAY_US),
    "stacked": (1, True, QUEUE_DELAY_US),
}
# what each ratio divides: (variant, by variant)
RATIOS = {
    "workers2_over_workers1": ("w2", "w1"),
    "gathered_over_workers1": ("gathered", "w1"),
    "stacked_over_gathered": ("stacked", "gathered"),
}


# ---- engines and frames -------------------------------------------------------------------------
def engine_dir(model: str) -> Path:
    """The engine directory of a benchmark model name: "default-int8" / "default-fp32" (the
    README's engine: python -m export.build --precision int8|fp32), "medium" / "medium-fp32"
    (benchmarks.models' medium shape, int8 / fp32), "tiny-fp32" (make_tiny's tiny shape, fp32:
    what tests/conftest.py's tiny_engine_dir builds)."""
    if model.startswith("default-"):
        from runtime.paths import default_engine_dir

        precision = model.split("-", 1)[1]
        path = default_engine_dir(precision)
        if not (path / "manifest.json").is_file():
            raise SystemExit(
                f"no default {precision} engine at {path}: build it with"
                f" `python -m export.build --precision {precision}` (README)"
            )
        return path
    from . import models

    shape, precision = model.split("-", 1) if model.endswith("-fp32") else (model, "int8")
    return models.engine_dir(shape, precision)


def snapshot(path: Path, tmp: Path) -> Path:
    """A private copy of an engine directory: another benchmark run may rebuild the bench cache's
    directory in place while this one reads it."""
    dest = tmp / f"engine-{path.name}"
    if not dest.is_dir():
        shutil.copytree(path, dest, ignore=shutil.ignore_patterns(".bench_key"))
    return dest


def load_engine(path: Path):
    from runtime import GlusEngine
    from runtime.errors import UnknownFilesWarning

    with warnings.catch_warnings():  # the bench cache's key file beside the manifest
        warnings.simplefilter("ignore", UnknownFilesWarning)
        return GlusEngine.load(path)


@dataclass
class Video:
    frames: list[np.ndarray]
    expression: str


def camera_videos(count: int, frames: int, size: tuple[int, int]) -> list[Video]:
    """One synthetic video per camera (seeds 1..count), with its first expression."""
    from .harness import synth_video

    out = []
    for seed in range(1, count + 1):
        video, expression, _ = synth_video(frames, size, seed=seed)
        out.append(Video(video, expression))
    return out


# ---- closed-loop cameras --------------------------------------------------------------------------
class InProcessCamera:
    def __init__(self, engine, expressions: list[str]):
        self.expressions = expressions
        self.stream = engine.stream(expressions)

    def push(self, frame: np.ndarray) -> np.ndarray:
        masks = self.stream.push(frame)
        return np.stack([masks[e] for e in self.expressions])

    def state_nbytes(self) -> int:
        return int(sum(self.stream.state_nbytes().values()))

    def close(self) -> None:
        self.stream = None


class ServerCamera:
    def __init__(self, url: str, expressions: list[str]):
        from serving.client import CameraClient

        self.client = CameraClient(url, expressions)

    def push(self, frame: np.ndarray) -> np.ndarray:
        return self.client.push(frame).masks

    def close(self) -> None:
        self.client.close()


@dataclass
class CameraRun:
    masks: list[np.ndarray] = field(default_factory=list)  # every frame's, warm-up included
    latencies_s: list[float] = field(default_factory=list)  # timed frames only
    state_nbytes: int = 0
    error: Exception | None = None


@dataclass
class LoadRun:
    cameras: list[CameraRun]
    seconds: float  # wall time of the timed frames, all cameras together
    timed_frames: int

    @property
    def latencies_s(self) -> list[float]:
        return [t for c in self.cameras for t in c.latencies_s]


def run_cameras(open_camera, videos: list[Video], warmup: int, while_open=None) -> LoadRun:
    """Each video through its own camera in its own thread. open_camera(video) -> a camera with
    push(frame) -> masks and close(). while_open() runs once every camera has sent every frame
    and before any closes (to sample the server's memory with them open)."""
    k = len(videos)
    warm, done, closing = (threading.Barrier(k + 1) for _ in range(3))
    runs = [CameraRun() for _ in videos]

    def camera(video: Video, run: CameraRun) -> None:
        cam = None
        try:
            cam = open_camera(video)
            for f in video.frames[:warmup]:
                run.masks.append(cam.push(f))
            warm.wait()
            for f in video.frames[warmup:]:
                t = time.perf_counter()
                run.masks.append(cam.push(f))
                run.latencies_s.append(time.perf_counter() - t)
            done.wait()
            run.state_nbytes = cam.state_nbytes() if hasattr(cam, "state_nbytes") else 0
            closing.wait()
        except Exception as e:  # noqa: BLE001 (raised by the caller; the barriers break for everyone)
            run.error = e
            for b in (warm, done, closing):
                b.abort()
        finally:
            if cam is not None:
                cam.close()

    threads = [threading.Thread(target=camera, args=(v, r), daemon=True) for v, r in zip(videos, runs)]
    for t in threads:
        t.start()
    try:
        warm.wait()
        t0 = time.perf_counter()
        done.wait()
        seconds = time.perf_counter() - t0
        if while_open is not None:
            while_open()
        closing.wait()
    except threading.BrokenBarrierError:
        seconds = float("nan")
    for t in threads:
        t.join()
    failed = [r.error for r in runs if r.error is not None]
    if failed:
        raise RuntimeError(f"a camera failed: {failed[0]!r}") from failed[0]
    return LoadRun(runs, seconds, sum(len(v.frames) - warmup for v in videos))


def figures(run: LoadRun) -> dict:
    lat = np.array(run.latencies_s) * 1000
    return {
        "frames_per_s": run.timed_frames / run.seconds,
        "seconds": run.seconds,
        "timed_frames": run.timed_frames,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
    }


def masks_equal(a: LoadRun, b: LoadRun) -> tuple[int, int]:
    """(frames whose masks are bit-identical, frames compared) over every camera."""
    same = total = 0
    for ca, cb in zip(a.cameras, b.cameras):
        for ma, mb in zip(ca.masks, cb.masks):
            total += 1
            same += int(ma.shape == mb.shape and np.array_equal(ma, mb))
    return same, total


def masks_iou(a: LoadRun, b: LoadRun) -> tuple[float, float]:
    """(mean, min) IoU of the masks of every expression of every frame of every camera (1 where
    both are empty)."""
    ious = []
    for ca, cb in zip(a.cameras, b.cameras):
        for ma, mb in zip(ca.masks, cb.masks):
            for x, y in zip(np.asarray(ma).reshape(-1, *ma.shape[-2:]), np.asarray(mb).reshape(-1, *mb.shape[-2:])):
                union = np.logical_or(x, y).sum()
                ious.append(1.0 if union == 0 else float(np.logical_and(x, y).sum() / union))
    return float(np.mean(ious)), float(np.min(ious))


# ---- the variants ---------------------------------------------------------------------------------
def measure_in_process(engine, videos: list[Video], warmup: int) -> tuple[dict, LoadRun]:
    run = run_cameras(lambda v: InProcessCamera(engine, [v.expression]), videos, warmup)
    out = figures(run)
    out["state_bytes_per_camera"] = statistics.mean(c.state_nbytes for c in run.cameras)
    return out, run


def server_metric_deltas(before: dict, after: dict) -> dict:
    """Requests and model executions between two metric reads: requests per execute is how many
    cameras' frames Triton handed to the model at once."""
    req = after.get("nv_inference_request_success", 0) - before.get("nv_inference_request_success", 0)
    execs = after.get("nv_inference_exec_count", 0) - before.get("nv_inference_exec_count", 0)
    return {"requests": req, "executions": execs, "requests_per_execute": req / execs if execs else float("nan")}


def measure_server(
    path: Path,
    videos: list[Video],
    warmup: int,
    workers: int,
    tmp: Path,
    batch_images: bool = False,
    queue_delay_us: int = 0,
) -> tuple[dict, LoadRun]:
    """A fresh server with room for exactly these cameras. Before the timed run, one camera and
    then all k come and go (a few frames each): the RSS baseline then holds the graphs' working
    memory for k at once, and what the k open cameras add over it is their state."""
    from serving.repository import write_repository
    from serving.server import Server

    k = len(videos)
    repo = tmp / f"repo-{k}-w{workers}{'-stacked' if batch_images else ''}-d{queue_delay_us}"
    write_repository(
        path,
        repo,
        max_cameras=k,
        idle_timeout_s=60,
        workers=workers,
        batch_images=batch_images,
        queue_delay_us=queue_delay_us,
    )
    t0 = time.perf_counter()
    with Server(repo, log=tmp / f"{repo.name}.log") as server:
        start_s = time.perf_counter() - t0

        def come_and_go(some: list[Video]) -> int:
            short = [Video(v.frames[: warmup + 2], v.expression) for v in some]
            run_cameras(lambda v: ServerCamera(server.grpc_url, [v.expression]), short, warmup)
            time.sleep(0.5)  # the END's malloc_trim
            return server.rss_bytes()

        rss_after_one = come_and_go(videos[:1])
        rss_after_all = come_and_go(videos)
        open_rss: list[int] = []
        before = server.metrics()
        run = run_cameras(
            lambda v: ServerCamera(server.grpc_url, [v.expression]),
            videos,
            warmup,
            while_open=lambda: open_rss.append(server.rss_bytes()),
        )
        after = server.metrics()
        out = figures(run)
        out.update(
            start_s=start_s,
            rss_after_one_camera_bytes=rss_after_one,
            rss_after_all_cameras_bytes=rss_after_all,
            rss_open_bytes=open_rss[0],
            rss_per_camera_bytes=(open_rss[0] - rss_after_all) / k,
            open_cameras_after_close=server.metrics().get("glus_open_cameras"),
            **server_metric_deltas(before, after),
        )
    return out, run


def measure_model(model: str, counts: list[int], frames: int, warmup: int, size, tmp: Path) -> dict:
    source = engine_dir(model)
    path = snapshot(source, tmp)
    engine = load_engine(path)
    rows = []
    for r, k in enumerate(counts):
        videos = camera_videos(k, warmup + frames, size)
        variants = ["in-process", *(f"server {v}" for v in variants_for(engine))]
        order = variants[r % len(variants) :] + variants[: r % len(variants)]  # load noise spreads
        got: dict[str, tuple[dict, LoadRun]] = {}
        for name in order:
            if name == "in-process":
                got[name] = measure_in_process(engine, videos, warmup)
            else:
                workers, batch_images, delay = VARIANTS[name.split()[1]]
                got[name] = measure_server(path, videos, warmup, workers, tmp, batch_images, delay)
            f = got[name][0]
            print(
                f"{model} cameras {k} {name}: {f['frames_per_s']:.1f} frames/s,"
                f" p50 {f['p50_ms']:.1f} ms, p99 {f['p99_ms']:.1f} ms",
                flush=True,
            )
        base, base_run = got["in-process"]
        row = {"cameras": k, "in_process": base, "order": order}
        for v in variants_for(engine):
            f, run = got[f"server {v}"]
            same, total = masks_equal(run, base_run)
            iou_mean, iou_min = masks_iou(run, base_run)
            f.update(
                masks_equal_frames=same,
                masks_compared_frames=total,
                masks_iou_mean=iou_mean,
                masks_iou_min=iou_min,
                throughput_ratio=f["frames_per_s"] / base["frames_per_s"],
                p50_ratio=f["p50_ms"] / base["p50_ms"],
            )
            row[f"server_{v}"] = f
        for name, (a, b) in RATIOS.items():
            if f"server_{a}" in row and f"server_{b}" in row:
                row[name] = row[f"server_{a}"]["frames_per_s"] / row[f"server_{b}"]["frames_per_s"]
        rows.append(row)
    return {
        "engine_dir": str(source),
        "precision": engine.precision,
        "variants": list(variants_for(engine)),
        "stacking_refused": stacking_refused(engine.manifest),
        "rows": rows,
    }


def variants_for(engine) -> list[str]:
    """w1 and w2 on every engine; gathered and stacked where its image encoder stacks frames
    exactly (fp32: a dynamic-int8 one is refused, its scales would span the cameras)."""
    return ["w1", "w2"] if stacking_refused(engine.manifest) else ["w1", "gathered", "stacked"]


# ---- report ---------------------------------------------------------------------------------------
def mib(f: dict, after: str) -> float:
    return f[f"rss_after_{after}_camera{'s' if after == 'all' else ''}_bytes"] / 2**20


def camera_memory_fit(rows: list[dict], variant: str) -> tuple[float, float]:
    """(fixed, per camera) MiB of the line through (k, RSS open - RSS after k came and went): the
    per-camera column divides a fixed part (the banks' longer working set, allocator pools) by k."""
    ks = [r["cameras"] for r in rows]
    added = [
        (r[f"server_{variant}"]["rss_open_bytes"] - r[f"server_{variant}"]["rss_after_all_cameras_bytes"]) / 2**20
        for r in rows
    ]
    if len(ks) < 2:
        return added[0], float("nan")
    slope, fixed = np.polyfit(ks, added, 1)
    return float(fixed), float(slope)


VARIANT_WORDS = {
    "w1": "workers 1",
    "w2": "workers 2",
    "gathered": f"workers 1, {QUEUE_DELAY_US / 1000:g} ms queue delay",
    "stacked": "gathered + --batch-images",
}


def to_markdown(out: dict) -> str:
    m, s = out["machine"], out["settings"]
    lines = [
        f"## Many cameras on one Triton server (machine {m['slug']})",
        "",
        f"{m['cpu']}, {m['cores']} cores, {out['date']}; load average at start {out['load_average_start']}, at end"
        f" {out['load_average_end']}. {s['frames']} timed frames per camera after {s['warmup']} warm-up frames,"
        f" {s['size'][0]}x{s['size'][1]} synthetic videos (one seed per camera), closed loop, one thread per camera;"
        f" tritonserver {out['tritonserver']} (nvidia-pytriton wheel) with its python backend on the CPU,"
        " ONNX Runtime's default threads on both sides. Throughput: timed frames of all cameras / wall time."
        " Latency: one push, p50 / p99 over all timed frames. Ratio: server / in-process (same frames, same run)."
        f" Total run {out['run_seconds'] / 60:.1f} min (benchmarks/serving_load.py).",
        "",
    ]
    for model, res in out["models"].items():
        variants = res.get("variants", ["w1", "w2"])
        lines += [
            f"### {model} ({res['precision']})",
            "",
            "| cameras | variant | frames/s | p50 / p99 ms | ratio to in-process | requests per execute"
            " | RSS per camera | working memory for k at once | masks equal to in-process | mask IoU, mean / min |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in res["rows"]:
            b = r["in_process"]
            lines.append(
                f"| {r['cameras']} | in-process | {b['frames_per_s']:.1f} | {b['p50_ms']:.0f} / {b['p99_ms']:.0f}"
                f" | | | stream state {b['state_bytes_per_camera'] / 2**20:.2f} MiB | | | |"
            )
            for v in variants:
                f = r[f"server_{v}"]
                lines.append(
                    f"| {r['cameras']} | {v} | {f['frames_per_s']:.1f} | {f['p50_ms']:.0f} / {f['p99_ms']:.0f}"
                    f" | {f['throughput_ratio']:.2f} | {f['requests_per_execute']:.2f}"
                    f" | {f['rss_per_camera_bytes'] / 2**20:.1f} MiB | {mib(f, 'all') - mib(f, 'one'):.1f} MiB"
                    f" | {f['masks_equal_frames']}/{f['masks_compared_frames']}"
                    f" | {f['masks_iou_mean']:.4f} / {f['masks_iou_min']:.4f} |"
                )
        starts = [r[f"server_{v}"]["start_s"] for r in res["rows"] for v in variants]
        fits = {v: camera_memory_fit(res["rows"], v) for v in variants}
        ratio_text = []
        for name, (a, b_) in RATIOS.items():
            vals = [r[name] for r in res["rows"] if name in r and r["cameras"] > 1]
            if vals:
                ratio_text.append(f"{a} / {b_} {min(vals):.2f}-{max(vals):.2f}x")
        lines += [
            "",
            f"Variants: {'; '.join(f'{v}: {VARIANT_WORDS[v]}' for v in variants)}."
            + (f" Not stacked: {res['stacking_refused']}." if res.get("stacking_refused") else "")
            + (f" From 2 cameras on: {', '.join(ratio_text)}." if ratio_text else ""),
            "",
            "What the open cameras add to the server's RSS, as a line over k: "
            + "; ".join(f"{v} {f:.1f} MiB + {c:.2f} MiB per camera" for v, (f, c) in fits.items())
            + f". Server start to ready: {min(starts):.1f}-{max(starts):.1f} s.",
            "",
        ]
    lines += [
        "w1 / w2: the model config's `workers`: the cameras whose requests Triton hands to one `execute` run one"
        " after the other (1) or in 2 threads. gathered: w1 with a queue delay, so that Triton waits for the other"
        " cameras' frames before it calls `execute`; stacked: gathered, and the frames of one `execute` go through"
        " SAM2's image encoder as one call (`--batch-images`; offered where the image encoder stacks frames"
        " exactly, i.e. not on dynamic int8, whose activation scales would span the cameras). stacked / gathered"
        " is what stacking itself gains. Requests per execute: nv_inference_request_success /"
        " nv_inference_exec_count over the timed run, i.e. how many cameras' frames arrived together (the most"
        " one stacked call holds)."
        " RSS per camera: (server RSS with the cameras open after their frames - RSS after the same number of"
        " cameras came and went for a few frames) / cameras, i.e. the cameras' state without the graphs' working"
        " memory for running them at once (that is the next column: RSS after k cameras came and went - after"
        " one); stream state: Stream.state_nbytes of the in-process streams at the same point. RSS is the"
        " allocator's view: a camera's arrays can reuse heap pages that cameras before it freed (malloc_trim"
        " returns only whole free pages), so the RSS added per camera can be below its state bytes."
        " Masks equal: frames (warm-up included) whose server masks equal the in-process masks bit for bit.",
        "",
    ]
    return "\n".join(lines)


def tritonserver_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"nvidia-pytriton {version('nvidia-pytriton')}"
    except PackageNotFoundError:
        return "unknown"


def run_stamp() -> dict:
    """Where and with what a serving benchmark ran: machine, date, server, code."""
    from .machine import machine_info, machine_slug

    info = machine_info()
    info["slug"] = machine_slug(info)
    return {
        "machine": info,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "tritonserver": tritonserver_version(),
        "code": code_version(),
    }


def code_version() -> dict:
    """The commit measured, and what in the tree differs from it."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        r = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
        return r.stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "changed": git("status", "--porcelain").splitlines()}


def parse_size(text: str) -> tuple[int, int]:
    h, w = text.lower().split("x")
    return int(h), int(w)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serving_load", description=__doc__.split("\n")[0])
    p.add_argument("--cameras", default="1,2,4,8")
    p.add_argument("--frames", type=int, default=40, help="timed frames per camera")
    p.add_argument("--warmup", type=int, default=3, help="warm-up frames per camera, not timed")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--size", default="96x128", help="frame size HxW")
    p.add_argument("--out", default=str(RESULTS))
    a = p.parse_args(argv)
    from .machine import load_average

    t0 = time.perf_counter()
    load_start = load_average()
    counts = [int(c) for c in a.cameras.split(",")]
    size = parse_size(a.size)
    results = {}
    with tempfile.TemporaryDirectory(prefix="serving-load-") as tmp:
        for model in a.models.split(","):
            results[model] = measure_model(model, counts, a.frames, a.warmup, size, Path(tmp))
    out = {
        **run_stamp(),
        "settings": {"cameras": counts, "frames": a.frames, "warmup": a.warmup, "size": list(size)},
        "load_average_start": load_start,
        "load_average_end": load_average(),
        "run_seconds": time.perf_counter() - t0,
        "models": results,
    }
    dest = Path(a.out)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "serving-load.json").write_text(json.dumps(out, indent=1) + "\n")
    (dest / "serving-load.md").write_text(to_markdown(out))
    print(to_markdown(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
