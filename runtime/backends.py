"""Running one graph of the engine: ONNX Runtime (CPU or CUDA), or a TensorRT engine.

Each backend exposes `run(*arrays) -> list[np.ndarray]` with inputs in the graph's order, so the
engine does not care which one it drives.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import BackendError


def parse_device(device: str) -> tuple[str, int]:
    if device == "cpu":
        return "cpu", 0
    if device.startswith("cuda"):
        _, _, idx = device.partition(":")
        if idx and not idx.isdigit():
            raise BackendError(f"bad device {device!r}: use 'cpu' or 'cuda:N'")
        return "cuda", int(idx or 0)
    raise BackendError(f"unknown device {device!r}: use 'cpu' or 'cuda:N'")


def tensorrt_available() -> bool:
    """TensorRT runs through ONNX Runtime's TensorRT execution provider (onnxruntime-gpu)."""
    import onnxruntime as ort

    return "TensorrtExecutionProvider" in ort.get_available_providers()


def nbytes(x) -> int:
    """Size of a numpy array or of an ONNX Runtime OrtValue (which may live on the GPU)."""
    if isinstance(x, np.ndarray):
        return int(x.nbytes)
    kind = x.data_type()  # "tensor(float)", "tensor(float16)", ...
    item = {"tensor(float)": 4, "tensor(float16)": 2, "tensor(int64)": 8}.get(kind, 4)
    return int(np.prod(x.shape())) * item


def to_host(x) -> np.ndarray:
    return x if isinstance(x, np.ndarray) else x.numpy()


class OrtGraph:
    """One ONNX Runtime session.

    With I/O binding (the default on CUDA, `io_binding=True` forces it elsewhere) inputs may be
    OrtValues that already live on the device, and outputs named in `device_outputs` stay there
    as OrtValues: the engine keeps the prefix KV cache on the GPU instead of copying it both
    ways on every LLM call (for GLUS-7B that is ~0.2 GB per frame and expression).
    """

    def __init__(
        self,
        path: Path,
        device: str = "cpu",
        threads: int | None = None,
        tensorrt: dict | None = None,
        spin: bool = False,
        io_binding: bool | None = None,
    ):
        import onnxruntime as ort

        kind, index = parse_device(device)
        self.device_kind, self.device_index = kind, index
        self.io_binding = (kind == "cuda") if io_binding is None else bool(io_binding)
        providers = ["CPUExecutionProvider"]
        if tensorrt is not None:
            # TensorRT builds (and caches in the engine directory) an engine per graph; nodes
            # it cannot take fall back to CUDA, then CPU.
            providers = [
                ("TensorrtExecutionProvider", {"device_id": index, **tensorrt}),
                ("CUDAExecutionProvider", {"device_id": index}),
                "CPUExecutionProvider",
            ]
        elif kind == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendError(
                    f"device {device} requested but ONNX Runtime has no CUDA provider here"
                    " (install onnxruntime-gpu on a machine with an NVIDIA GPU, or use device='cpu')"
                )
            providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        # Spinning threads win a little on an idle dedicated CPU but lose ~4x as soon as another
        # process competes for the cores (measured in benchmarks/): off unless asked for.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "1" if spin else "0")
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=providers)
        except Exception as e:  # noqa: BLE001 (a graph ONNX Runtime rejects, however it says so)
            raise BackendError(f"ONNX Runtime cannot load {path}: {e}") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, *arrays, device_outputs: tuple[int, ...] = ()) -> list:
        """Outputs as numpy arrays, except those whose index is in `device_outputs`, which stay
        OrtValues on the device when I/O binding is on (numpy otherwise)."""
        if len(arrays) != len(self.input_names):
            raise ValueError(f"graph takes {len(self.input_names)} inputs, got {len(arrays)}")
        if not self.io_binding:
            return self.session.run(None, {n: to_host(a) for n, a in zip(self.input_names, arrays)})
        b = self.session.io_binding()
        for name, a in zip(self.input_names, arrays):
            if isinstance(a, np.ndarray):
                b.bind_cpu_input(name, np.ascontiguousarray(a))
            else:
                b.bind_ortvalue_input(name, a)
        for i, name in enumerate(self.output_names):
            if i in device_outputs:
                b.bind_output(name, self.device_kind, self.device_index)
            else:
                b.bind_output(name, "cpu")
        self.session.run_with_iobinding(b)
        return [v if i in device_outputs else v.numpy() for i, v in enumerate(b.get_outputs())]


def tensorrt_options(engine_dir: Path, fp16: bool) -> dict:
    cache = engine_dir / "trt_cache"
    return {
        "trt_fp16_enable": fp16,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache),
    }


def open_graph(
    path: Path,
    backend: str,
    device: str,
    threads: int | None,
    fp16: bool = False,
    spin: bool = False,
    io_binding: bool | None = None,
):
    if backend == "onnxruntime":
        return OrtGraph(path, device, threads, spin=spin, io_binding=io_binding)
    if backend == "tensorrt":
        return OrtGraph(
            path, device, threads, tensorrt=tensorrt_options(path.parent, fp16), spin=spin, io_binding=io_binding
        )
    raise BackendError(f"unknown backend {backend!r}: use 'auto', 'onnxruntime' or 'tensorrt'")


def resolve_backend(backend: str, device: str, has_trt_engines: bool) -> str:
    kind, _ = parse_device(device)
    if backend == "auto":
        if kind == "cuda" and has_trt_engines and tensorrt_available():
            return "tensorrt"
        return "onnxruntime"
    if backend == "tensorrt":
        if kind != "cuda":
            raise BackendError("the TensorRT backend needs device='cuda:N'")
        if not tensorrt_available():
            raise BackendError(
                "ONNX Runtime's TensorRT provider is not available here"
                " (pip install '.[gpu]' on a machine with an NVIDIA GPU)"
            )
        return "tensorrt"
    if backend != "onnxruntime":
        raise BackendError(f"unknown backend {backend!r}: use 'auto', 'onnxruntime' or 'tensorrt'")
    return backend
