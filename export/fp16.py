"""fp16 graphs for GPUs, with the numerically fragile ops kept in fp32.

LayerNorm and the decomposed RMSNorm (Pow, ReduceMean, Sqrt, Reciprocal), softmax, and the
position-encoding ops (Cos, Sin, Range) stay fp32; casts are inserted around them. Graph inputs
and outputs stay fp32 so the runtime feeds the same arrays at every precision.
"""

from __future__ import annotations

from pathlib import Path

FP32_OPS = (
    "LayerNormalization",
    "SimplifiedLayerNormalization",
    "RMSNormalization",
    "Pow",
    "ReduceMean",
    "Sqrt",
    "Reciprocal",  # RMSNorm as the exporter decomposes it
    "Softmax",
    "Cos",
    "Sin",
    "Range",  # rotary / sine position encodings
    "Resize",  # mask upsampling: bilinear weights in fp32
)


def convert_fp16(src: str | Path, dst: str | Path) -> dict:
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(src))
    half = convert_float_to_float16(
        model, keep_io_types=True, op_block_list=list(DEFAULT_OP_BLOCK_LIST) + list(FP32_OPS)
    )
    _toposort(half.graph)  # the converter appends its input casts at the end of the node list
    del half.graph.value_info[:]  # stale types from before the conversion; ORT re-infers them
    onnx.save(half, str(dst))
    kept = sorted({n.op_type for n in model.graph.node if n.op_type in FP32_OPS})
    return {"method": "onnxruntime.transformers.float16", "fp32_ops": kept, "io": "float32"}


def _toposort(graph) -> None:
    """Reorder graph.node so that every node comes after the producers of its inputs."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise ValueError("graph has a cycle or an input nobody produces")
        for n in ready:
            available.update(n.output)
        ordered.extend(ready)
        pending = [n for n in pending if n not in ready]
    del graph.node[:]
    graph.node.extend(ordered)
