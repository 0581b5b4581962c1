"""Per-camera state behind the Triton model: one runtime Stream per correlation ID.

Triton's sequence batcher routes every request of a sequence (one camera) to the one model
instance that holds its Stream, in order, and hands `execute` the requests of several cameras
at once. This module is what `execute` does with them, without Triton (so it is tested and
benchmarked on its own): open a camera on START, push its frame, close it on END, free a camera
that stopped sending, refuse cameras beyond the configured number, and turn every bad input into
an error for that one request while the camera's stream goes on.

With batch_images=True the frames of one `handle` call (the cameras of one Triton `execute`) go
through SAM2's image encoder as one stacked call (GlusEngine.encode_frames), then each camera's
stream goes on with its row. A row equals the frame encoded alone (bit for bit on a CPU), so the
masks are those of in-process streams; an engine whose image encoder cannot promise that (built
before the graph had a frame axis, or dynamic int8: activation scales over the whole call) is
refused. Off (the default), the requests of one call run one after the other, or, with
workers > 1, their streams run in threads at the same time (ONNX Runtime releases the GIL): the
same masks either way. The LLM is batched within a camera only (batch_llm): the engine's batched
graph reads one shared prefix, and every camera has its own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from runtime.checks import check_frame
from runtime.errors import InputError
from runtime.stages import stacking_refused


class CameraError(Exception):
    """Why one request was not served; `kind` is "input", "unknown" or "refused"."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass
class Request:
    """One frame of one camera: what the Triton request carried, decoded."""

    corrid: int | str
    start: bool
    end: bool
    frame: object  # RGB uint8 H x W x 3 (checked here)
    expressions: list[str] | None  # None: the camera's set stays as it is


@dataclass
class Reply:
    expressions: list[str]
    masks: np.ndarray  # bool N x H x W, in the order of `expressions`
    scores: np.ndarray  # float32 N: iou x sigmoid(object score) of each mask
    frame_index: int  # the position of this frame in the camera's stream (0 after START); -1: END without a frame


class Camera:
    def __init__(self, stream, expressions: list[str], now: float):
        self.stream = stream
        self.expressions = expressions
        self.last_seen = now
        self.busy = False


def _check_expression_list(expressions) -> list[str]:
    if isinstance(expressions, str):
        expressions = [expressions]
    out = []
    for e in expressions:
        if isinstance(e, bytes):
            try:
                e = e.decode("utf-8")
            except UnicodeDecodeError as err:
                raise InputError(f"an expression is not UTF-8: {err}") from None
        if not isinstance(e, str):
            raise InputError(f"an expression must be a string, got {type(e).__name__}")
        out.append(e)
    dup = sorted({e for e in out if out.count(e) > 1})
    if dup:
        raise InputError(f"expression given more than once: {dup[0]!r}")
    return out


class Cameras:
    """The open cameras of one model instance.

    engine: a runtime GlusEngine. max_cameras: cameras open at once; a START beyond it is
    refused (CameraError "refused") until a camera ends or idles out. idle_timeout_s: a camera
    that sent nothing for that long is closed and its state freed (Triton's
    max_sequence_idle_microseconds, so that both forget a camera at the same time).
    stream_options: GlusEngine.stream's keyword options (kv_policy, llm_every, ...).
    workers: streams run at once within one `handle` call (1: one after the other).
    batch_images: the frames of one `handle` call share one image-encoder call (an engine whose
    image encoder stacks frames exactly: runtime.stages.stacking_refused).
    """

    def __init__(
        self,
        engine,
        *,
        max_cameras: int = 8,
        idle_timeout_s: float = 60.0,
        stream_options: dict | None = None,
        workers: int = 1,
        batch_images: bool = False,
        clock: Callable[[], float] = time.monotonic,
        on_free: Callable[[], None] | None = None,
    ):
        if max_cameras < 1:
            raise ValueError(f"max_cameras must be >= 1, got {max_cameras}")
        if not idle_timeout_s > 0:
            raise ValueError(f"idle_timeout_s must be > 0, got {idle_timeout_s}")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.engine = engine
        self.max_cameras = max_cameras
        self.idle_timeout_s = idle_timeout_s
        self.stream_options = dict(stream_options or {})
        engine.stream([], **self.stream_options)  # bad options fail at load, not at the first camera
        self.workers = workers
        if not isinstance(batch_images, bool):
            raise ValueError(f"batch_images must be True or False, got {batch_images!r}")
        why = stacking_refused(engine.manifest) if batch_images else None
        if why:
            raise ValueError(f"batch_images needs an image encoder that stacks frames exactly: {why}")
        self.batch_images = batch_images
        self.stacked_calls = 0  # image-encoder calls that served more than one camera
        self.clock = clock
        self.on_free = on_free
        self.cameras: dict = {}
        self.frames_served = 0
        self.freed_idle = 0
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="glus-camera") if workers > 1 else None

    # ---- state ---------------------------------------------------------------------------
    @property
    def open(self) -> int:
        return len(self.cameras)

    def reap(self) -> int:
        """Close the cameras idle for longer than idle_timeout_s; the number closed."""
        now = self.clock()
        with self._lock:
            idle = [k for k, c in self.cameras.items() if not c.busy and now - c.last_seen > self.idle_timeout_s]
            for k in idle:
                del self.cameras[k]
            self.freed_idle += len(idle)
        if idle and self.on_free is not None:
            self.on_free()
        return len(idle)

    def close(self) -> None:
        with self._lock:
            self.cameras.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    # ---- requests ------------------------------------------------------------------------
    def handle(self, requests: Sequence[Request]) -> list[Reply | CameraError]:
        """One reply or CameraError per request, in order. Requests of one camera in the same
        call are served in their order (Triton's sequence batcher sends one at a time)."""
        self.reap()
        results: list = [None] * len(requests)
        jobs: list[tuple[int, Camera, np.ndarray, Request]] = []
        with self._lock:
            claimed: set = set()
            for i, r in enumerate(requests):
                if r.corrid in claimed:  # a second frame of a camera already in this call
                    continue
                try:
                    cam, frame = self._prepare(r)
                except CameraError as e:
                    results[i] = e
                    continue
                cam.busy = True
                claimed.add(r.corrid)
                jobs.append((i, cam, frame, r))
        try:
            feats = self._encode([frame for _, _, frame, _ in jobs])
            if self._pool is not None and len(jobs) > 1:
                done = list(self._pool.map(lambda j, f: self._push(j[1], j[2], f), jobs, feats))
            else:
                done = [self._push(cam, frame, f) for (_, cam, frame, _), f in zip(jobs, feats)]
        except BaseException:
            with self._lock:  # never leave a camera marked busy: it could then never idle out
                for _, cam, _, _ in jobs:
                    cam.busy = False
            raise
        freed = False
        with self._lock:
            now = self.clock()
            for (i, cam, _, r), out in zip(jobs, done):
                cam.busy = False
                cam.last_seen = now
                results[i] = out
                if isinstance(out, Reply) and out.frame_index >= 0:
                    self.frames_served += 1
                if r.end and self.cameras.get(r.corrid) is cam:
                    del self.cameras[r.corrid]
                    freed = True
        if freed and self.on_free is not None:
            self.on_free()
        rest = [i for i, out in enumerate(results) if out is None]
        if rest:  # later frames of a camera that had one in this call
            for i, out in zip(rest, self.handle([requests[i] for i in rest])):
                results[i] = out
        return results

    def _prepare(self, r: Request) -> tuple[Camera, np.ndarray | None]:
        """Open or find the camera and check the whole request before anything changes: a bad
        request leaves the camera's stream exactly as it was. An END with an empty frame (0 x 0
        x 3) closes the camera without segmenting: a client that has sent its last frame
        already ends its sequence that way (frame None)."""
        if r.end and not r.start and _is_empty_frame(r.frame):
            cam = self.cameras.get(r.corrid)
            if cam is None:
                raise CameraError("unknown", f"unknown camera {r.corrid}: nothing to end")
            return cam, None
        try:
            frame = check_frame(r.frame)
            exprs = None if r.expressions is None else _check_expression_list(r.expressions)
        except InputError as e:
            raise CameraError("input", str(e)) from None
        if r.start:
            if exprs is None:
                raise CameraError("input", "EXPRESSIONS is required on the START request of a camera")
            if r.corrid not in self.cameras and len(self.cameras) >= self.max_cameras:
                raise CameraError(
                    "refused",
                    f"refused camera {r.corrid}: {len(self.cameras)} cameras are open, the server's limit"
                    f" (max_cameras); retry when one ends or has been idle for {self.idle_timeout_s:g} s",
                )
            try:
                stream = self.engine.stream(exprs, **self.stream_options)
            except InputError as e:
                raise CameraError("input", str(e)) from None
            cam = Camera(stream, exprs, self.clock())
            self.cameras[r.corrid] = cam  # a START on an open ID starts that camera afresh
            return cam, frame
        cam = self.cameras.get(r.corrid)
        if cam is None:
            raise CameraError(
                "unknown",
                f"unknown camera {r.corrid}: a camera's first request must carry START (or this one"
                f" ended, or was idle for more than {self.idle_timeout_s:g} s and was closed)",
            )
        hw = cam.stream.hw
        if hw is not None and frame.shape[:2] != hw:
            raise CameraError("input", f"frame size changed mid-stream from {hw} to {frame.shape[:2]}")
        if exprs is not None and exprs != cam.expressions:
            self._change_expressions(cam, exprs)
        return cam, frame

    def _change_expressions(self, cam: Camera, exprs: list[str]) -> None:
        for e in exprs:  # all checked before the stream changes
            if e not in cam.expressions:
                try:
                    self.engine.check_expression(e)
                except InputError as err:
                    raise CameraError("input", str(err)) from None
        for e in cam.expressions:
            if e not in exprs:
                cam.stream.remove(e)
        for e in exprs:
            if e not in cam.expressions:
                cam.stream.add(e)  # followed from this frame on, with a fresh memory
        cam.expressions = exprs

    def _encode(self, frames: list[np.ndarray | None]) -> list[list[np.ndarray] | None]:
        """With batch_images, the SAM2 features of the call's frames in one stacked call (None
        where a request has no frame); else None each: every stream encodes its own."""
        rows = [i for i, f in enumerate(frames) if f is not None]
        feats: list = [None] * len(frames)
        if self.batch_images and len(rows) > 1:
            for i, f in zip(rows, self.engine.encode_frames([frames[i] for i in rows])):
                feats[i] = f
            self.stacked_calls += 1
        return feats

    def _push(self, cam: Camera, frame: np.ndarray | None, feats=None) -> Reply | CameraError:
        stream = cam.stream
        if frame is None:  # END without a frame
            n = len(cam.expressions)
            return Reply(list(cam.expressions), np.zeros((n, 0, 0), bool), np.zeros(n, np.float32), -1)
        try:
            masks = stream.push(frame, sam_features=feats)
        except InputError as e:  # checked in _prepare; kept so that nothing can pass silently
            return CameraError("input", str(e))
        h, w = frame.shape[:2]
        exprs = list(cam.expressions)
        out = np.zeros((len(exprs), h, w), dtype=bool)
        scores = np.zeros(len(exprs), dtype=np.float32)
        for j, e in enumerate(exprs):
            out[j] = masks[e]
            scores[j] = stream.last_steps[e].score
        return Reply(exprs, out, scores, stream.frames_seen - 1)


def _is_empty_frame(frame) -> bool:
    shape = getattr(frame, "shape", None)
    return shape is not None and len(shape) == 3 and shape[0] * shape[1] == 0


def stream_nbytes(cameras: Cameras) -> int:
    """Bytes of Stream state held by the open cameras (Stream.state_nbytes)."""
    with cameras._lock:
        return int(sum(sum(c.stream.state_nbytes().values()) for c in cameras.cameras.values()))
