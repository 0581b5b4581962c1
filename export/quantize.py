"""int8 weight quantization of exported graphs (onnxruntime.quantization): the "llm" graph,
and with dynamic-int8 the SAM2 image encoder ("sam_image", Hiera: its linear layers).

Two methods, both touching only MatMul nodes whose weight (input B) is a constant — the
attention MatMuls between activations, the Gemm of text_hidden_fcs and everything else stay fp32:
- "dynamic-int8": quantize_dynamic, QInt8 weights → MatMulInteger (activations quantized per
  call). 2.7x faster than fp32 on a 2-core VM's CPU (a 90-token continuation, hidden 1024, 8 layers).
- "nbits8": MatMulNBitsQuantizer at 8 bits, blockwise. Needs accuracy_level=4 (int8 compute)
  on CPU, or it runs 2.5x slower than fp32 (with it ~1.5x faster; the same VM).
- "nbits4": the same quantizer at 4 bits (weight-only; what a 4-bit build uses so that a 7B LLM
  fits an 8-16 GB board). Symmetric by default; symmetric=False stores a zero point per block.
Graphs saved with external data (real 7B models) are read and written with external data.
"""

from __future__ import annotations

import numbers
from collections import Counter
from pathlib import Path

import onnx

from .onnx_utils import EXTERNAL_DATA_BYTES

# The int8 methods (what `--precision int8` chooses from) and every method quantize_graph takes.
METHODS = ("dynamic-int8", "nbits8")
INT4_METHODS = ("nbits4",)
ALL_METHODS = METHODS + INT4_METHODS
QUANTIZED_OP = {"dynamic-int8": "MatMulInteger", "nbits8": "MatMulNBits", "nbits4": "MatMulNBits"}
# Weight bits of each method.
METHOD_BITS = {"dynamic-int8": 8, "nbits8": 8, "nbits4": 4}
NBITS_BLOCK_SIZES = (32, 128)
ACCURACY_LEVELS = (0, 1, 2, 3, 4)


def external_data_files(path: Path) -> list[Path]:
    """Side files holding the weights of an ONNX file saved with external data (may be [])."""
    model = onnx.load(str(path), load_external_data=False)
    names = set()
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            for entry in init.external_data:
                if entry.key == "location":
                    names.add(entry.value)
    return [path.parent / n for n in sorted(names)]


def model_bytes(path: Path) -> int:
    """The ONNX file plus its external data files."""
    return path.stat().st_size + sum(f.stat().st_size for f in external_data_files(path))


def weight_matmuls(model: onnx.ModelProto) -> list[str]:
    """Names of MatMul nodes whose second input is an initializer: the quantizable ones."""
    inits = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits]


def _clear_destination(dst: Path) -> None:
    # onnx appends to an existing external data file, so a stale one would grow and mismatch.
    for f in (dst, dst.with_name(dst.name + ".data")):
        if f.exists():
            f.unlink()


def _quantize_dynamic(src: Path, dst: Path, nodes: list[str], external: bool, per_channel: bool) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        src,
        dst,
        op_types_to_quantize=["MatMul"],
        # Named explicitly: MatMulConstBOnly alone follows B back to *any* initializer, so it
        # also quantizes the attention MatMuls (Q @ K^T, P @ V) between activations.
        nodes_to_quantize=nodes,
        per_channel=per_channel,
        weight_type=QuantType.QInt8,
        use_external_data_format=external,
        extra_options={"MatMulConstBOnly": True},
    )


def _quantize_nbits(
    src: Path, dst: Path, external: bool, bits: int, block_size: int, accuracy_level: int, symmetric: bool
) -> None:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    # A str path makes the quantizer onnx.load it, external data included.
    quant = MatMulNBitsQuantizer(
        str(src),
        bits=bits,
        block_size=block_size,
        is_symmetric=symmetric,
        accuracy_level=accuracy_level,
        op_types_to_quantize=("MatMul",),
    )
    quant.process()
    quant.model.save_model_to_file(str(dst), use_external_data_format=external)


def _is_int(value) -> bool:
    """An integer (numpy's included), not a bool and not a float that happens to be whole."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def quantize_graph(
    src: str | Path,
    dst: str | Path,
    method: str,
    *,
    accuracy_level: int = 4,
    block_size: int = 32,
    per_channel: bool = False,
    symmetric: bool = True,
) -> dict:
    """Quantize the graph at `src` into `dst`; returns the report the manifest records.

    accuracy_level / block_size / symmetric apply to "nbits8" and "nbits4" (accuracy_level 4 =
    int8 activations: the fast CPU path; symmetric=False: a zero point per block); per_channel
    to "dynamic-int8".
    """
    if method not in ALL_METHODS:
        raise ValueError(f"unknown quantization method {method!r}: choose from {', '.join(ALL_METHODS)}")
    if method in ("nbits8", "nbits4"):
        if not _is_int(block_size) or block_size not in NBITS_BLOCK_SIZES:
            raise ValueError(f"{method} block_size must be one of {NBITS_BLOCK_SIZES}, got {block_size!r}")
        if not _is_int(accuracy_level) or accuracy_level not in ACCURACY_LEVELS:
            raise ValueError(f"accuracy_level must be 0..4, got {accuracy_level!r}")
        if not isinstance(symmetric, bool):
            raise ValueError(f"symmetric must be a bool, got {symmetric!r}")
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise FileNotFoundError(f"no ONNX graph at {src}")
    if src.resolve() == dst.resolve():
        raise ValueError("quantize_graph: dst must differ from src")

    src_model = onnx.load(str(src), load_external_data=False)
    candidates = weight_matmuls(src_model)
    before = model_bytes(src)
    # Keep a big graph's weights beside it (protobuf's 2 GB limit); a tiny one stays one file.
    external = bool(external_data_files(src)) or before > EXTERNAL_DATA_BYTES
    dst.parent.mkdir(parents=True, exist_ok=True)
    _clear_destination(dst)
    if method == "dynamic-int8":
        _quantize_dynamic(src, dst, candidates, external, per_channel)
    else:
        block_size, accuracy_level = int(block_size), int(accuracy_level)
        _quantize_nbits(src, dst, external, METHOD_BITS[method], block_size, accuracy_level, symmetric)

    out = onnx.load(str(dst), load_external_data=False)
    ops = Counter(n.op_type for n in out.graph.node)
    quantized = ops[QUANTIZED_OP[method]]
    if quantized == 0:
        raise RuntimeError(f"{method}: no MatMul of {src} was quantized ({len(candidates)} candidates)")
    report = {
        "method": method,
        "quantized_op": QUANTIZED_OP[method],
        "quantized_nodes": quantized,
        "weight_matmuls": len(candidates),
        # MatMuls with a constant weight still fp32 (dynamic-int8: the seg head, whose Gemms
        # ORT's pre-processing rewrites as MatMul + Add and which we leave out).
        "fp32_weight_matmuls_left": len(weight_matmuls(out)),
        "bytes_before": before,
        "bytes_after": model_bytes(dst),
        "external_data": external,
    }
    if method in ("nbits8", "nbits4"):
        report.update(
            bits=METHOD_BITS[method], block_size=block_size, accuracy_level=accuracy_level, symmetric=symmetric
        )
    else:
        report.update(bits=8, weight_type="QInt8", per_channel=per_channel, accuracy_level=None)
    return report
