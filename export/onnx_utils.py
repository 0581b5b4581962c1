"""Exporting one wrapper module to ONNX and checking it against PyTorch: shared by every graph."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

OPSET = 20
# Graphs bigger than this keep their weights in a side file (protobuf's 2 GB limit).
EXTERNAL_DATA_BYTES = 1 << 30


@dataclass
class GraphSpec:
    """What export needs for one graph; `dynamic` maps input name → {axis: Dim name}."""

    name: str
    module: torch.nn.Module
    inputs: dict[str, torch.Tensor]  # example inputs, by graph input name, in forward order
    outputs: list[str]
    dynamic: dict[str, dict[int, str]]
    dim_min: dict[str, int] | None = None  # lower bounds of the named Dims (default 1)


def export_graph(spec: GraphSpec, path: str | Path) -> Path:
    """torch.onnx.export with the dynamo exporter (the one that handles antialias resize and
    transformers' caches). Example sizes of dynamic axes must be >= 2, or they get baked in."""
    from torch.export import Dim

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dims: dict[str, Dim] = {}
    mins = spec.dim_min or {}
    shapes = {}
    for name in spec.inputs:
        axes = spec.dynamic.get(name, {})
        for axis, dim_name in axes.items():
            if spec.inputs[name].shape[axis] < 2:
                raise ValueError(f"{spec.name}: example size of dynamic axis {name}[{axis}] must be >= 2")
            if dim_name not in dims:
                dims[dim_name] = Dim(dim_name, min=mins.get(dim_name, 1))
        shapes[name] = {axis: dims[d] for axis, d in axes.items()} or None
    spec.module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            spec.module,
            tuple(spec.inputs.values()),
            dynamo=True,
            opset_version=OPSET,
            input_names=list(spec.inputs),
            output_names=spec.outputs,
            dynamic_shapes=tuple(shapes.values()),
            verbose=False,
            optimize=True,
        )
    big = sum(t.numel() * t.element_size() for t in spec.module.state_dict().values()) > EXTERNAL_DATA_BYTES
    program.save(str(path), external_data=big)
    return path


def fresh_inputs(example: dict, seed: int) -> dict:
    """Example inputs perturbed with fresh noise (never zeros); integer inputs are kept."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, x in example.items():
        if x.is_floating_point() and x.numel():
            scale = float(x.float().std()) if x.numel() > 1 else 1.0
            noise = torch.randn(x.shape, generator=g) * (0.1 * scale + 1e-3)
            out[name] = (x + noise.to(x.dtype)).contiguous()
        else:
            out[name] = x
    return out


def ort_session(path: str | Path, threads: int | None = None, providers=None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=providers or ["CPUExecutionProvider"])


def run_ort(session, inputs: dict[str, np.ndarray | torch.Tensor]) -> list[np.ndarray]:
    feeds = {k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}
    return session.run(None, feeds)


def rel_error(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| / max(|want|, tiny): the "relative error" every parity figure quotes."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        raise ValueError(f"shape mismatch: {got.shape} vs {want.shape}")
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))
