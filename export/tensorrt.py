"""TensorRT engines for an engine directory, through ONNX Runtime's TensorRT provider.

The runtime opens each graph with the TensorRT execution provider (runtime/backends.py), which
builds a TensorRT engine per graph and caches it (with a timing cache) in `trt_cache/`. This
stage builds those caches ahead of time on the GPU machine, with optimization profiles covering
the prefix length, the per-frame token count, the memory count, the expression batch and
the frames of one image-encoder call (several cameras).
Not yet run on a GPU: see the README's "what is verified".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# dim name -> (min, opt, max) for the optimization profiles
DIM_RANGES = {"B": (1, 1, 8), "F": (1, 1, 8), "T": (1, 400, 2048), "P": (0, 400, 2048), "M": (1, 7, 7)}


def _shape(dims, pick: int, ranges) -> list[int]:
    return [ranges[d][pick] if isinstance(d, str) else d for d in dims]


def profile_options(signature: dict, ranges=DIM_RANGES) -> dict:
    def fmt(pick):
        return ",".join(
            f"{i['name']}:" + "x".join(map(str, _shape(i["shape"], pick, ranges)))
            for i in signature["inputs"]
            if any(isinstance(d, str) for d in i["shape"])
        )

    opts = {"trt_profile_min_shapes": fmt(0), "trt_profile_opt_shapes": fmt(1), "trt_profile_max_shapes": fmt(2)}
    return {k: v for k, v in opts.items() if v}


def build_engines(out: Path, graphs: dict, precision: str, device: str = "cuda:0") -> dict:
    from runtime.backends import OrtGraph, tensorrt_options

    built = {}
    for name, g in graphs.items():
        opts = {**tensorrt_options(out, fp16=precision == "fp16"), **profile_options(g)}
        session = OrtGraph(out / g["file"], device, tensorrt=opts)
        feeds = []
        for i in g["inputs"]:  # one run at the optimal shapes builds and caches the engine
            shape = _shape(i["shape"], 1, DIM_RANGES)
            dtype = np.dtype(i["dtype"])
            feeds.append(
                np.zeros(shape, dtype)
                if dtype.kind == "i"
                else np.random.default_rng(0).standard_normal(shape).astype(dtype)
            )
        if name in ("llm", "llm_batched"):  # positions are consecutive integers
            feeds[1] = np.broadcast_to(np.arange(feeds[1].shape[1], dtype=np.int64), feeds[1].shape).copy()
        session.run(*feeds)
        built[name] = opts
    return {"built": True, "cache": "trt_cache", "precision": precision, "profiles": built}
