"""fp16 conversion keeps norms, softmax and position encodings in fp32 (structure; numbers need a GPU)."""

import onnx
import pytest

from export.fp16 import FP32_OPS, convert_fp16


@pytest.mark.parametrize("graph", ["llm", "sam_image"])
def test_fp16_keeps_fragile_ops_in_fp32(tiny_engine_dir, tmp_path, graph):
    dst = tmp_path / f"{graph}.fp16.onnx"
    report = convert_fp16(tiny_engine_dir / f"{graph}.onnx", dst)
    model = onnx.load(str(dst))
    onnx.checker.check_model(model)
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {
        v.name: v.type.tensor_type.elem_type
        for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    }
    fp32, fp16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    blocked = [n for n in model.graph.node if n.op_type in FP32_OPS]
    assert blocked and report["fp32_ops"]
    for n in blocked:
        for out in n.output:
            assert types.get(out, fp32) != fp16, f"{n.op_type} output {out} became fp16"
    big = [t for t in model.graph.initializer if len(t.dims) >= 2 and min(t.dims) > 1]
    assert big and all(t.data_type == fp16 for t in big)  # the weights are halved
    assert all(v.type.tensor_type.elem_type in (fp32, onnx.TensorProto.INT64) for v in model.graph.input)
