"""GPU paths: CUDA execution provider with I/O binding, fp16 engines, TensorRT.

Each test skips cleanly where ONNX Runtime has no CUDA (or TensorRT) provider, as on the CPU
CI. On a machine with an NVIDIA GPU and onnxruntime-gpu (`pip install '.[gpu]'`) they check
the GPU engine against the CPU one on the tiny checkpoint:

    python -m pytest -q tests/test_gpu.py -rs
"""

from __future__ import annotations

import numpy as np
import pytest

from .conftest import mask_iou, moving_square_video

EXPRS = ["The red square.", "the thing moving right"]


def _providers() -> list[str]:
    import onnxruntime as ort

    return ort.get_available_providers()


needs_cuda = pytest.mark.skipif(
    "CUDAExecutionProvider" not in _providers(), reason="no CUDA provider in ONNX Runtime (CPU machine)"
)
needs_trt = pytest.mark.skipif(
    "TensorrtExecutionProvider" not in _providers(), reason="no TensorRT provider in ONNX Runtime"
)


def _agree(a, b, iou_min: float, frac: float = 0.99, cos_min: float = 0.999) -> None:
    for ra, rb in zip(a, b):
        ious = [mask_iou(x, y) for x, y in zip(ra.masks, rb.masks)]
        assert np.mean(np.array(ious) >= iou_min) >= frac, ious
        for sa, sb in zip(ra.steps, rb.steps):
            cos = (
                sa.seg_embedding
                @ sb.seg_embedding
                / (np.linalg.norm(sa.seg_embedding) * np.linalg.norm(sb.seg_embedding))
            )
            assert cos >= cos_min


@needs_cuda
def test_cuda_engine_matches_cpu_and_keeps_the_prefix_on_the_gpu(tiny_engine_dir, tiny_engine):
    import onnxruntime as ort

    from runtime import GlusEngine
    from runtime.stages import Stages

    frames = moving_square_video(9)
    gpu = GlusEngine.load(tiny_engine_dir, device="cuda:0")
    assert gpu.io_binding  # the CUDA default
    stages = Stages.load(tiny_engine_dir, device="cuda:0")
    prefix = stages.prefix(stages.clip_tokens(frames[:4]))
    assert isinstance(prefix.kv, ort.OrtValue) and prefix.kv.device_name().lower() == "cuda"
    for policy in ("exact", "incremental"):
        _agree(
            tiny_engine.segment_video(frames, EXPRS, kv_policy=policy),
            gpu.segment_video(frames, EXPRS, kv_policy=policy),
            iou_min=0.999,
        )
    stream = gpu.stream(EXPRS)
    for f in frames:
        masks = stream.push(f)
    assert set(masks) == set(EXPRS) and stream.state_nbytes()["prefix_kv"] > 0


@needs_cuda
def test_fp16_engine_on_cuda_stays_close_to_fp32(tiny_dirs, tiny_engine, tmp_path):
    from export.build import build
    from runtime import GlusEngine

    out = tmp_path / "fp16"
    build(*tiny_dirs, precision="fp16", out=out, progress=False)
    frames = moving_square_video(9)
    gpu = GlusEngine.load(out, device="cuda:0")
    _agree(
        tiny_engine.segment_video(frames, EXPRS), gpu.segment_video(frames, EXPRS), iou_min=0.95, frac=0.9, cos_min=0.99
    )


@needs_trt
def test_tensorrt_engine_builds_and_matches_cpu(tiny_dirs, tiny_engine, tmp_path):
    from export.build import build
    from runtime import GlusEngine

    out = tmp_path / "trt"
    build(*tiny_dirs, precision="fp32", backend="tensorrt", out=out, progress=False)
    frames = moving_square_video(9)
    trt = GlusEngine.load(out, backend="tensorrt", device="cuda:0")
    assert trt.backend == "tensorrt" and (out / "trt_cache").is_dir()
    _agree(
        tiny_engine.segment_video(frames, EXPRS),
        trt.segment_video(frames, EXPRS),
        iou_min=0.99,
        frac=0.95,
        cos_min=0.999,
    )
