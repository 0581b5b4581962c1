"""4-bit weight-only quantization (quantize_graph method "nbits4") on a tiny hand-built graph.

The graph: Y = X @ W (W a constant: the one quantizable MatMul) and Z = X @ A (two activations:
must stay a plain MatMul). Expectations are computed in numpy from the quantized file's own
bytes (packing decoded here, independently of export/ and of ONNX Runtime's kernels) and from a
rigorous error bound, never from ONNX Runtime's output.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from export.onnx_utils import ort_session
from export.quantize import ALL_METHODS, METHODS, NBITS_BLOCK_SIZES, quantize_graph

K, N, M = 96, 40, 7  # K = 96: block 128 pads K, block 32 does not


def tiny_graph(path, seed: int = 0, external: bool = False):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((K, N)).astype(np.float32)
    w[:, 3] += 2.0  # an all-positive-ish column: asymmetric ranges differ from symmetric ones
    w[5, 7] = 9.0  # an outlier weight in one block
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, "T", K])
    a = helper.make_tensor_value_info("A", TensorProto.FLOAT, [1, K, 5])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, "T", N])
    z = helper.make_tensor_value_info("Z", TensorProto.FLOAT, [1, "T", 5])
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["X", "W"], ["Y"], name="weight_mm"),
            helper.make_node("MatMul", ["X", "A"], ["Z"], name="act_mm"),
        ],
        "tiny",
        [x, a],
        [y, z],
        [numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    if external:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=path.name + ".data",
            size_threshold=0,
        )
    else:
        onnx.save_model(model, str(path))
    return w


def decode(path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
    """(dequantized W, quantization step |scale|, lowest and highest representable value — all
    [K, N], per weight —, node attributes) of the file's single MatMulNBits node:
    B [N, blocks, bs/2] uint8 (low nibble = even k), scales [N*blocks] (may be negative),
    zero points [N, ceil(blocks/2)] uint8 nibbles (absent: 8); value = (q - zp) * scale."""
    model = onnx.load(str(path))
    (node,) = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    attr = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    bs = attr["block_size"]
    blocks = -(-K // bs)
    packed = inits[node.input[1]].reshape(N, blocks, bs // 2)
    q = np.empty((N, blocks, bs), np.int64)
    q[..., 0::2], q[..., 1::2] = packed & 0x0F, packed >> 4
    scale = inits[node.input[2]].reshape(N, blocks).astype(np.float64)
    if len(node.input) > 3 and node.input[3]:
        zp_bytes = inits[node.input[3]].reshape(N, -1)
        zp = np.empty((N, zp_bytes.shape[1] * 2), np.int64)
        zp[:, 0::2], zp[:, 1::2] = zp_bytes & 0x0F, zp_bytes >> 4
        zp = zp[:, :blocks]
    else:
        zp = np.full((N, blocks), 8)
    w = ((q - zp[..., None]) * scale[..., None]).reshape(N, blocks * bs)[:, :K].T

    def per_weight(v):
        return np.repeat(v, bs, axis=1)[:, :K].T

    ends = np.stack([(0 - zp) * scale, (15 - zp) * scale])
    return w, per_weight(np.abs(scale)), per_weight(ends.min(0)), per_weight(ends.max(0)), attr


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    path = tmp_path_factory.mktemp("nbits4") / "tiny.onnx"
    return path, tiny_graph(path)


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(1)
    return {
        "X": rng.standard_normal((1, M, K)).astype(np.float32),
        "A": rng.standard_normal((1, K, 5)).astype(np.float32),
    }


CASES = [(bs, sym, acc) for bs in NBITS_BLOCK_SIZES for sym in (True, False) for acc in (0, 4)]


def test_nbits4_is_not_an_int8_method():
    assert "nbits4" in ALL_METHODS and "nbits4" not in METHODS


@pytest.mark.parametrize("block_size,symmetric,accuracy_level", CASES)
def test_nbits4_graph_report_and_output(src, inputs, tmp_path, block_size, symmetric, accuracy_level):
    path, w = src
    dst = tmp_path / "q4.onnx"
    report = quantize_graph(
        path, dst, "nbits4", block_size=block_size, symmetric=symmetric, accuracy_level=accuracy_level
    )
    assert report["method"] == "nbits4" and report["quantized_op"] == "MatMulNBits"
    assert report["bits"] == 4 and report["block_size"] == block_size
    assert report["symmetric"] is symmetric and report["accuracy_level"] == accuracy_level
    assert report["quantized_nodes"] == 1 and report["weight_matmuls"] == 1
    assert report["fp32_weight_matmuls_left"] == 0 and report["external_data"] is False
    assert report["bytes_after"] < report["bytes_before"]

    ops = sorted(n.op_type for n in onnx.load(str(dst)).graph.node)
    assert ops == ["MatMul", "MatMulNBits"]  # the activation x activation MatMul is untouched
    w_q, step, lo, hi, attr = decode(dst)
    assert (attr["bits"], attr["block_size"], attr["K"], attr["N"]) == (4, block_size, K, N)
    assert attr.get("accuracy_level", 0) == accuracy_level
    # Round to nearest on the stored grid: every weight, clipped to the grid's range, within half
    # a step (+ float slack); clipping (symmetric: the side opposite the block's largest
    # magnitude reaches 7 steps, not 8) costs at most one step.
    clip = np.abs(np.clip(w, lo, hi) - w)
    assert np.all(np.abs(w_q - np.clip(w, lo, hi)) <= step / 2 * (1 + 1e-5) + 1e-7)
    assert np.all(clip <= step * (1 + 1e-5))
    if not symmetric:  # asymmetric: an integer zero point (0 is on the grid) that misses the
        # block's min / max by at most half a step
        assert np.all(clip <= step / 2 * (1 + 1e-5) + 1e-7)
        assert np.all(lo <= 1e-7) and np.all(hi >= -1e-7)
    assert np.linalg.norm(w_q - w) / np.linalg.norm(w) < 0.2
    err_w = step / 2 * (1 + 1e-5) + clip  # per-weight bound on |w_q - w|

    y, z = ort_session(dst).run(None, inputs)
    x = inputs["X"][0].astype(np.float64)
    np.testing.assert_allclose(z[0], x @ inputs["A"][0], rtol=1e-5, atol=1e-5)
    want_q = x @ w_q  # the exact product with the stored weights
    if accuracy_level == 0:  # fp32 compute: only float rounding
        np.testing.assert_allclose(y[0], want_q, rtol=1e-4, atol=1e-4)
    else:  # int8 activations per block along K: |dx| <= absmax(block) / 254 per element
        blk = min(block_size, K)  # block 128 > K = 96: one (padded) block per row
        amax = np.abs(x).reshape(M, K // blk, blk).max(-1)
        dx = np.repeat(amax, blk, axis=1) / 254
        bound = dx @ np.abs(w_q) * 1.01 + 1e-4
        assert np.all(np.abs(y[0] - want_q) <= bound)
    # Against the fp32 weights: the weight-rounding bound sum_k |x_k| step_k / 2 (+ the above).
    want = x @ w
    bound = np.abs(x) @ err_w * 1.01 + (0 if accuracy_level == 0 else bound) + 1e-4
    assert np.all(np.abs(y[0] - want) <= bound)
    cos = float((y[0].ravel() @ want.ravel()) / np.linalg.norm(y[0]) / np.linalg.norm(want))
    assert cos > 0.98


def test_symmetric_stores_no_zero_points(src, tmp_path):
    path, _ = src
    n_inputs = {}
    for symmetric in (True, False):
        dst = tmp_path / f"q-{symmetric}.onnx"
        quantize_graph(path, dst, "nbits4", symmetric=symmetric)
        (node,) = [n for n in onnx.load(str(dst)).graph.node if n.op_type == "MatMulNBits"]
        n_inputs[symmetric] = len([i for i in node.input if i])
    assert n_inputs == {True: 3, False: 4}  # A, B, scales (+ zero points)


def test_nbits4_external_data(tmp_path, inputs):
    src = tmp_path / "ext" / "tiny.onnx"
    src.parent.mkdir()
    tiny_graph(src, external=True)
    dst = tmp_path / "q" / "tiny.q4.onnx"
    report = quantize_graph(src, dst, "nbits4")
    assert report["external_data"] and (dst.parent / (dst.name + ".data")).is_file()
    ref = tmp_path / "plain.onnx"
    tiny_graph(ref)
    quantize_graph(ref, tmp_path / "plain.q4.onnx", "nbits4")
    for a, b in zip(ort_session(dst).run(None, inputs), ort_session(tmp_path / "plain.q4.onnx").run(None, inputs)):
        np.testing.assert_array_equal(a, b)


def test_existing_methods_keep_their_report(src, tmp_path):
    path, _ = src
    r8 = quantize_graph(path, tmp_path / "q8.onnx", "nbits8")
    assert (r8["bits"], r8["block_size"], r8["accuracy_level"], r8["symmetric"]) == (8, 32, 4, True)
    rd = quantize_graph(path, tmp_path / "qd.onnx", "dynamic-int8")
    assert rd["bits"] == 8 and rd["weight_type"] == "QInt8" and rd["accuracy_level"] is None
    assert rd["per_channel"] is False


# ---- input validation (checked before any file is touched) -----------------------------------------
@settings(max_examples=40, deadline=None)
@given(
    st.one_of(
        st.integers(-1024, 1024).filter(lambda b: b not in NBITS_BLOCK_SIZES),
        st.booleans(),
        st.floats(allow_nan=True),
        st.text(max_size=3),
        st.none(),
    )
)
def test_rejects_bad_block_size(block_size):
    with pytest.raises(ValueError, match="block_size"):
        quantize_graph("missing.onnx", "out.onnx", "nbits4", block_size=block_size)


@settings(max_examples=40, deadline=None)
@given(st.one_of(st.integers().filter(lambda a: a not in range(5)), st.booleans(), st.floats(), st.none()))
def test_rejects_bad_accuracy_level(level):
    with pytest.raises(ValueError, match="accuracy_level"):
        quantize_graph("missing.onnx", "out.onnx", "nbits4", accuracy_level=level)


@settings(max_examples=30, deadline=None)
@given(st.one_of(st.integers(), st.text(max_size=5), st.none(), st.floats()))
def test_rejects_non_bool_symmetric(value):
    with pytest.raises(ValueError, match="symmetric"):
        quantize_graph("missing.onnx", "out.onnx", "nbits4", symmetric=value)


@pytest.mark.parametrize("method", ["nbits2", "int4", "NBITS4", ""])
def test_rejects_unknown_methods(method):
    with pytest.raises(ValueError, match="unknown quantization method"):
        quantize_graph("missing.onnx", "out.onnx", method)


def test_valid_parameters_reach_the_file_check(tmp_path):
    with pytest.raises(FileNotFoundError):
        quantize_graph(
            tmp_path / "missing.onnx",
            tmp_path / "out.onnx",
            "nbits4",
            block_size=128,
            accuracy_level=0,
            symmetric=False,
        )
