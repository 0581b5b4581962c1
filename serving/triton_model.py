"""The Triton Python-backend model over GlusEngine (the repository's glus/1/model.py imports it).

Runs inside Triton's python backend stub, which provides `triton_python_backend_utils`. The
config's parameters name the engine directory and the stream options (serving/repository.py
writes them); serving/cameras.py does the work.
"""

from __future__ import annotations

import ctypes
import json
import threading

import numpy as np
import triton_python_backend_utils as pb_utils

from serving.cameras import CameraError, Cameras, Request


def _param(config: dict, key: str, default=None):
    p = config.get("parameters", {}).get(key)
    return default if p is None else p["string_value"]


def _llm_every(text: str) -> int | str:
    return text if text == "auto" else int(text)


def _trim_heap() -> None:
    """Give freed stream state back to the OS (glibc keeps freed heap pages otherwise, and the
    RSS of a server whose cameras all left would stay at its peak)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: RSS is the allocator's business
        pass


class _Metrics:
    """glus_open_cameras, glus_frames_total, glus_cameras_idled_out_total and
    glus_stacked_image_calls_total on Triton's metrics endpoint, where the python backend
    supports custom metrics."""

    def __init__(self):
        self.ok = hasattr(pb_utils, "MetricFamily")
        if not self.ok:
            return
        self._open_family = pb_utils.MetricFamily(
            name="glus_open_cameras", description="cameras with state on the server", kind=pb_utils.MetricFamily.GAUGE
        )
        self._frames_family = pb_utils.MetricFamily(
            name="glus_frames_total", description="frames answered", kind=pb_utils.MetricFamily.COUNTER
        )
        self._freed_family = pb_utils.MetricFamily(
            name="glus_cameras_idled_out_total",
            description="cameras closed after max_sequence_idle_microseconds without a request",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        self._stacked_family = pb_utils.MetricFamily(
            name="glus_stacked_image_calls_total",
            description="image-encoder calls that encoded the frames of several cameras (--batch-images)",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        self.open = self._open_family.Metric(labels={"model": "glus"})
        self.frames = self._frames_family.Metric(labels={"model": "glus"})
        self.freed = self._freed_family.Metric(labels={"model": "glus"})
        self.stacked = self._stacked_family.Metric(labels={"model": "glus"})
        self._frames_seen = 0
        self._freed_seen = 0
        self._stacked_seen = 0

    def update(self, cameras: Cameras) -> None:
        if not self.ok:
            return
        self.open.set(cameras.open)
        self.frames.increment(cameras.frames_served - self._frames_seen)
        self._frames_seen = cameras.frames_served
        self.freed.increment(cameras.freed_idle - self._freed_seen)
        self._freed_seen = cameras.freed_idle
        self.stacked.increment(cameras.stacked_calls - self._stacked_seen)
        self._stacked_seen = cameras.stacked_calls


class TritonPythonModel:
    def initialize(self, args):
        from runtime import GlusEngine

        config = json.loads(args["model_config"])
        engine_dir = _param(config, "engine_dir")
        if not engine_dir:
            raise pb_utils.TritonModelException("config parameter engine_dir is missing")
        threads = _param(config, "threads", "")
        self.engine = GlusEngine.load(
            engine_dir,
            backend=_param(config, "backend", "auto"),
            device=_param(config, "device", "cpu"),
            threads=int(threads) if threads else None,
        )
        idle_us = int(config["sequence_batching"]["max_sequence_idle_microseconds"])
        self.cameras = Cameras(
            self.engine,
            max_cameras=int(_param(config, "max_cameras", "8")),
            idle_timeout_s=idle_us / 1e6,
            stream_options={
                "kv_policy": _param(config, "kv_policy", "exact"),
                "llm_every": _llm_every(_param(config, "llm_every", "1")),
                "batch_llm": _param(config, "batch_llm", "0") == "1",
            },
            workers=int(_param(config, "workers", "1")),
            batch_images=_param(config, "batch_images", "0") == "1",
            on_free=_trim_heap,
        )
        self.metrics = _Metrics()
        # Triton forgets an idle sequence without telling the model: a timer frees its state too,
        # also when no other camera sends anything.
        self._stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap_loop, name="glus-reaper", daemon=True)
        self._reaper.start()
        pb_utils.Logger.log_info(
            f"glus: engine {engine_dir} ({self.engine.precision}, {self.engine.device}); up to"
            f" {self.cameras.max_cameras} cameras, idle timeout {self.cameras.idle_timeout_s:g} s,"
            f" {self.cameras.workers} worker(s)"
            + (", the frames of one execute in one image-encoder call" if self.cameras.batch_images else "")
        )

    def _reap_loop(self):
        period = min(1.0, self.cameras.idle_timeout_s / 4)
        while not self._stop.wait(period):
            if self.cameras.reap():
                self.metrics.update(self.cameras)

    def execute(self, requests):
        decoded, errors = [], {}
        for i, request in enumerate(requests):
            try:
                decoded.append((i, _decode(request)))
            except CameraError as e:
                errors[i] = e
        replies = self.cameras.handle([r for _, r in decoded])
        results = dict(errors)
        results.update({i: out for (i, _), out in zip(decoded, replies)})
        self.metrics.update(self.cameras)
        responses = []
        for i in range(len(requests)):
            out = results[i]
            if isinstance(out, CameraError):
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(out))))
                continue
            tensors = [_tensor("FRAME_INDEX", np.array([[out.frame_index]], dtype=np.int64))]
            if out.frame_index >= 0:  # an END without a frame has no masks (and the stub takes no empty tensor)
                tensors += [_tensor("MASKS", out.masks[None]), _tensor("SCORES", out.scores[None])]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses

    def finalize(self):
        self._stop.set()
        self.cameras.close()


# Arrays cross the stub by DLPack, never by pb_utils.Tensor(name, array) or Tensor.as_numpy():
# the wheel's stub converts through pybind11's NumPy 1 layout of array descriptors, and under
# NumPy 2 as_numpy() returns the first byte repeated and Tensor(name, array) an empty tensor.
# DLPack carries pointer, dtype and shape without NumPy's C structures (the stub prints
# "PyCapsule_GetPointer called with incorrect name" for each input it exports; the data is
# whole: tests/test_serving.py compares the server's masks with in-process streams).


def _tensor(name: str, array: np.ndarray):
    return pb_utils.Tensor.from_dlpack(name, np.ascontiguousarray(array))


def _array(tensor) -> np.ndarray:
    """A copy of an input tensor (the original lives in shared memory the stub reuses)."""
    return np.array(np.from_dlpack(tensor))


def decode_expressions(tensor: np.ndarray) -> list[str]:
    """EXPRESSIONS: the UTF-8 bytes of a JSON array of strings (serving/repository.py says why)."""
    try:
        value = json.loads(np.ascontiguousarray(tensor, dtype=np.uint8).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CameraError("input", f"EXPRESSIONS is not a UTF-8 JSON array of strings: {e}") from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CameraError("input", "EXPRESSIONS must be a JSON array of strings")
    return value


def _decode(request) -> Request:
    """A Triton request as a Request; the batch dimension (1 per request) removed."""

    def get(name):
        t = pb_utils.get_input_tensor_by_name(request, name)
        return None if t is None else _array(t)

    corrid = get("CORRID")
    start, end, frame = get("START"), get("END"), get("FRAME")
    if corrid is None or start is None or end is None:  # Triton always sets them for a sequence model
        raise CameraError("input", "the request has no sequence controls (START, END, CORRID)")
    if frame is None:
        raise CameraError("input", "FRAME is missing")
    if frame.ndim != 4 or frame.shape[0] != 1:
        raise CameraError("input", f"FRAME must be 1 x H x W x 3 (one frame per request), got {list(frame.shape)}")
    exprs = get("EXPRESSIONS")
    cid = corrid.reshape(-1)[0]
    cid = cid.decode("utf-8", "replace") if isinstance(cid, bytes) else int(cid)
    return Request(
        corrid=cid,
        start=bool(start.reshape(-1)[0]),
        end=bool(end.reshape(-1)[0]),
        frame=frame[0],
        expressions=None if exprs is None else decode_expressions(exprs),
    )
