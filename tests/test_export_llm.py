"""Vision and LLM graphs exported to ONNX, and the int8 LLM, against the PyTorch reference.

Every graph is exported once per module (exports take seconds) into a temporary directory.
Inputs are fresh random draws (seed printed), never the export examples.
"""

from __future__ import annotations

import secrets
import time

import numpy as np
import onnx
import pytest
import torch

from export.llm import LlmGraph, embedding_table, llm_dims, llm_spec
from export.onnx_utils import cosine, export_graph, ort_session, rel_error, run_ort
from export.quantize import METHODS, quantize_graph
from export.vision import vision_spec
from runtime import rules

EXPR = "the red square moving right"


@pytest.fixture(scope="module")
def rng():
    seed = secrets.randbits(32)
    print(f"\n[test_export_llm] random seed {seed}")
    return np.random.default_rng(seed)


@pytest.fixture(scope="module")
def graphs(tiny_ref, tmp_path_factory):
    out = tmp_path_factory.mktemp("export_llm")
    paths = {
        "vision": export_graph(vision_spec(tiny_ref.model), out / "vision.onnx"),
        "llm": export_graph(llm_spec(tiny_ref.model), out / "llm.onnx"),
    }
    reports = {}
    for method in METHODS:
        paths[method] = out / f"llm.{method}.onnx"
        reports[method] = quantize_graph(paths["llm"], paths[method], method)
    return {"paths": paths, "reports": reports, "dir": out}


@pytest.fixture(scope="module")
def sessions(graphs):
    return {name: ort_session(p) for name, p in graphs["paths"].items()}


# ---- helpers -------------------------------------------------------------------------------
def prompt_ids(ref, step: int, past_answers=None) -> list[int]:
    """Ids of query step `step` (1-based); past answers default to all [SEG]."""
    n_past = min(step, rules.NUM_QUERY) - 1
    past = [rules.ANSWER_SEG] * n_past if past_answers is None else past_answers
    return ref.tokenizer.encode_prompt(rules.prompt_text(EXPR, past))


def random_image_tokens(ref, ids, rng) -> torch.Tensor:
    n = ids.count(rules.IMAGE_TOKEN_INDEX)
    h = ref.model.cfg.hidden_size
    return torch.from_numpy(rng.standard_normal((n, rules.TOKENS_PER_IMAGE, h)).astype(np.float32) * 0.5)


def empty_past(model) -> np.ndarray:
    d = llm_dims(model)
    return np.zeros((d["layers"], 2, 1, d["kv_heads"], 0, d["head_dim"]), np.float32)


def llm_feeds(embeds, start: int, past) -> dict:
    t = embeds.shape[1]
    return {
        "inputs_embeds": embeds,
        "position_ids": np.arange(start, start + t, dtype=np.int64)[None],
        "past_kv": past,
    }


def expanded_length(ids) -> int:
    """Sequence length once every image placeholder is 64 embeddings."""
    return len(ids) + (rules.TOKENS_PER_IMAGE - 1) * ids.count(rules.IMAGE_TOKEN_INDEX)


# ---- vision ----------------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [1, 3])
def test_vision_graph_matches_encode_clip(tiny_ref, sessions, rng, batch):
    m = tiny_ref.model
    s = m.clip_image_size
    px = rng.standard_normal((batch, 3, s, s)).astype(np.float32)
    with torch.no_grad():
        want = m.encode_clip(torch.from_numpy(px)).numpy()
    (got,) = run_ort(sessions["vision"], {"pixel_values": px})
    assert got.shape == (batch, rules.TOKENS_PER_IMAGE, m.cfg.hidden_size)
    err = rel_error(got, want)
    print(f"vision B={batch}: rel error {err:.2e}")
    assert err <= 1e-4


# ---- LLM fp32 --------------------------------------------------------------------------------
def test_llm_prefill_matches_reference(tiny_ref, sessions, rng):
    m = tiny_ref.model
    ids = prompt_ids(tiny_ref, 3, [rules.ANSWER_SEG, rules.ANSWER_NO_SEG])
    images = random_image_tokens(tiny_ref, ids, rng)
    with torch.no_grad():
        embeds = m.embed_prompt(ids, images).numpy()
        want = m.seg_embedding(ids, images)
    seg, logits, present = run_ort(sessions["llm"], llm_feeds(embeds, 0, empty_past(m)))
    d = llm_dims(m)
    assert seg.shape == (1, d["out_dim"]) and logits.shape == (1, d["vocab"])
    assert present.shape == (d["layers"], 2, 1, d["kv_heads"], embeds.shape[1], d["head_dim"])
    e_seg = rel_error(seg[0], want.seg_embedding.numpy())
    e_log = rel_error(logits[0], want.logits.numpy())
    print(f"llm prefill T={embeds.shape[1]}: seg rel {e_seg:.2e}, logits rel {e_log:.2e}")
    assert e_seg <= 1e-4 and e_log <= 1e-4
    assert int(np.argmax(logits[0])) == want.next_token


def test_prefix_reuse_is_exact(tiny_ref, sessions, rng):
    """Prefix (P = 0) then the rest on its cache == one prefill of the whole prompt: this is
    what transformers' default mask (no attention_mask) must give, in ORT and in PyTorch."""
    m = tiny_ref.model
    text = rules.prompt_text(EXPR, [rules.ANSWER_SEG] * 2)
    prefix, _ = rules.split_prefix(text)
    ids = tiny_ref.tokenizer.encode_prompt(text)
    prefix_ids = tiny_ref.tokenizer.encode_prompt(prefix)
    assert ids[: len(prefix_ids)] == prefix_ids
    p = expanded_length(prefix_ids)
    with torch.no_grad():
        embeds = m.embed_prompt(ids, random_image_tokens(tiny_ref, ids, rng)).numpy()
    sess = sessions["llm"]
    seg_full, logits_full, kv_full = run_ort(sess, llm_feeds(embeds, 0, empty_past(m)))
    _, _, kv_prefix = run_ort(sess, llm_feeds(embeds[:, :p], 0, empty_past(m)))
    seg, logits, kv = run_ort(sess, llm_feeds(embeds[:, p:], p, kv_prefix))
    diff = float(np.abs(seg - seg_full).max())
    print(f"prefix reuse P={p} T={embeds.shape[1] - p}: max |seg diff| {diff:.2e}")
    assert rel_error(seg, seg_full) <= 1e-5 and rel_error(logits, logits_full) <= 1e-5
    assert rel_error(kv_prefix, kv_full[..., :p, :]) <= 1e-5
    assert rel_error(kv, kv_full) <= 1e-5

    # The same in PyTorch on the wrapper itself, so the claim is about transformers, not ORT.
    graph = LlmGraph(m).eval()
    t = {k: torch.from_numpy(v) for k, v in llm_feeds(embeds[:, :p], 0, empty_past(m)).items()}
    with torch.no_grad():
        _, _, kv_t = graph(*t.values())
        rest = llm_feeds(embeds[:, p:], p, kv_t.numpy())
        seg_t, _, _ = graph(*(torch.from_numpy(v) for v in rest.values()))
    assert rel_error(seg_t.numpy(), seg_full) <= 1e-5


def test_single_token_step_on_cache(tiny_ref, sessions, rng):
    """T = 1 (the dim minimum) on a cache of the rest of the prompt == full prefill."""
    m = tiny_ref.model
    ids = prompt_ids(tiny_ref, 2)
    images = random_image_tokens(tiny_ref, ids, rng)
    with torch.no_grad():
        embeds = m.embed_prompt(ids, images).numpy()
        want = m.seg_embedding(ids, images)
    n = embeds.shape[1]
    _, _, kv = run_ort(sessions["llm"], llm_feeds(embeds[:, : n - 1], 0, empty_past(m)))
    seg, logits, present = run_ort(sessions["llm"], llm_feeds(embeds[:, n - 1 :], n - 1, kv))
    assert present.shape[4] == n
    assert rel_error(seg[0], want.seg_embedding.numpy()) <= 1e-4
    assert rel_error(logits[0], want.logits.numpy()) <= 1e-4


def test_embedding_table_holds_added_rows(tiny_ref):
    m, tok = tiny_ref.model, tiny_ref.tokenizer
    table = embedding_table(m)
    assert table.dtype == np.float32 and table.shape == (tok.vocab_size, m.cfg.hidden_size)
    ids = [tok.bos_id, tok.seg_id, tok.im_start_id, tok.im_end_id]
    with torch.no_grad():
        want = m.llm.get_input_embeddings()(torch.tensor(ids)).numpy()
    np.testing.assert_array_equal(table[ids], want)


# ---- graph structure -------------------------------------------------------------------------
def _initializer_shapes(model: onnx.ModelProto) -> dict[str, tuple]:
    return {i.name: tuple(i.dims) for i in model.graph.initializer}


def test_lm_head_is_matmul_and_dims_dynamic(tiny_ref, graphs):
    d = llm_dims(tiny_ref.model)
    model = onnx.load(str(graphs["paths"]["llm"]))
    shapes = _initializer_shapes(model)

    def vocab_weight(node):
        return any(shapes.get(x) in ((d["hidden"], d["vocab"]), (d["vocab"], d["hidden"])) for x in node.input)

    lm_head = [n.op_type for n in model.graph.node if vocab_weight(n)]
    assert lm_head == ["MatMul"], lm_head
    dims = {i.name: [x.dim_param or x.dim_value for x in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert isinstance(dims["inputs_embeds"][1], str) and isinstance(dims["position_ids"][1], str)
    assert isinstance(dims["past_kv"][4], str)


@pytest.mark.parametrize("method", METHODS)
def test_quantized_graph_has_int8_matmuls(tiny_ref, graphs, method):
    report = graphs["reports"][method]
    print(f"{method}: {report}")
    d = llm_dims(tiny_ref.model)
    model = onnx.load(str(graphs["paths"][method]))
    op = {"dynamic-int8": "MatMulInteger", "nbits8": "MatMulNBits"}[method]
    nodes = [n for n in model.graph.node if n.op_type == op]
    # 7 projections per layer + lm_head; the attention MatMuls and the seg head stay fp32.
    assert len(nodes) == 7 * d["layers"] + 1 == report["quantized_nodes"]
    assert report["bytes_after"] < report["bytes_before"]
    if method == "nbits8":
        n_out = [next(a.i for a in n.attribute if a.name == "N") for n in nodes]
        assert d["vocab"] in n_out  # lm_head is among them
        assert report["accuracy_level"] == 4


# ---- int8 accuracy and speed -------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_int8_seg_embedding_close_to_fp32(tiny_ref, sessions, rng, method):
    m = tiny_ref.model
    cosines, fp32_s, q_s = [], 0.0, 0.0
    warm = llm_feeds(np.zeros((1, 2, m.cfg.hidden_size), np.float32), 0, empty_past(m))
    run_ort(sessions["llm"], warm), run_ort(sessions[method], warm)  # first-call setup off the clock
    for step in range(1, 6):
        ids = prompt_ids(tiny_ref, step)
        with torch.no_grad():
            embeds = m.embed_prompt(ids, random_image_tokens(tiny_ref, ids, rng)).numpy()
        feeds = llm_feeds(embeds, 0, empty_past(m))
        t0 = time.perf_counter()
        seg, logits, _ = run_ort(sessions["llm"], feeds)
        t1 = time.perf_counter()
        seg_q, logits_q, _ = run_ort(sessions[method], feeds)
        t2 = time.perf_counter()
        fp32_s, q_s = fp32_s + t1 - t0, q_s + t2 - t1
        cosines.append(cosine(seg_q, seg))
        assert int(np.argmax(logits_q)) == int(np.argmax(logits)), f"step {step}: top token changed"
    print(
        f"{method}: [SEG] cosines to fp32 {[round(c, 6) for c in cosines]}; "
        f"speed fp32/int8 {fp32_s / q_s:.2f}x (tiny model, 5 prefills)"
    )
    assert min(cosines) >= 0.99


# ---- quantize_graph inputs ----------------------------------------------------------------------
def test_quantize_rejects_unknown_method(graphs, tmp_path):
    with pytest.raises(ValueError, match="unknown quantization method"):
        quantize_graph(graphs["paths"]["llm"], tmp_path / "q.onnx", "int4-magic")
    with pytest.raises(ValueError, match="block_size"):
        quantize_graph(graphs["paths"]["llm"], tmp_path / "q.onnx", "nbits8", block_size=64)


@pytest.mark.parametrize("method", METHODS)
def test_quantize_external_data_graph(tiny_ref, graphs, sessions, tmp_path, rng, method):
    """A graph saved with its weights beside it (as big models are) quantizes to the same graph,
    written with external data too."""
    src = tmp_path / "ext" / "llm.onnx"
    src.parent.mkdir()
    onnx.save_model(
        onnx.load(str(graphs["paths"]["llm"])),
        str(src),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="llm.onnx.data",
        size_threshold=0,
    )
    dst = tmp_path / "q" / "llm.int8.onnx"
    report = quantize_graph(src, dst, method)
    assert report["external_data"] and (dst.parent / (dst.name + ".data")).is_file()
    assert report["quantized_nodes"] == graphs["reports"][method]["quantized_nodes"]
    d = llm_dims(tiny_ref.model)
    embeds = rng.standard_normal((1, 6, d["hidden"])).astype(np.float32) * 0.3
    past = rng.standard_normal((d["layers"], 2, 1, d["kv_heads"], 4, d["head_dim"])).astype(np.float32)
    feeds = llm_feeds(embeds, 4, past)
    got = run_ort(ort_session(dst), feeds)
    want = run_ort(sessions[method], feeds)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
