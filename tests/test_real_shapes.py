"""GLUS-7B's real shapes: make_tiny's --shape glus-7b / --llm-layers, and graphs kept in
external data (the path every >2 GB graph of a real 7B takes), forced onto the tiny model."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reference.make_tiny import (
    LLAMA_7B_VOCAB,
    SHAPES,
    glus_config,
    main,
    make_tiny,
    shape_spec,
)
from runtime import GlusEngine
from runtime.manifest import read_manifest, sha256_file

from .conftest import mask_iou, moving_square_video


def test_glus_7b_has_llama_7b_widths_at_any_depth():
    for n in (None, 2, 3):
        s = shape_spec("glus-7b", n)
        ll = s["llama"]
        assert (ll["hidden_size"], ll["intermediate_size"], ll["num_attention_heads"]) == (4096, 11008, 32)
        assert ll["num_key_value_heads"] == 32
        assert ll["num_hidden_layers"] == (32 if n is None else n)
        assert (s["clip"]["hidden_size"], s["clip"]["num_hidden_layers"]) == (1024, 24)
        assert s["sam2"] is None  # the sam2 package's own hiera-L config, as GLUS
    assert LLAMA_7B_VOCAB == 32000 + 3
    # The table itself is never changed by a cut.
    assert SHAPES["glus-7b"]["llama"]["num_hidden_layers"] == 32


@given(st.one_of(st.integers(max_value=0), st.booleans(), st.floats(), st.text(max_size=3)))
def test_llm_layers_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match="llm_layers"):
        shape_spec("glus-7b", bad)


def test_unknown_shape_is_named():
    with pytest.raises(ValueError, match="unknown shape 'glus-13b'"):
        shape_spec("glus-13b")


def test_glus_7b_config_reads_as_glus_a(tmp_path):
    """The config.json make_tiny writes for glus-7b is read as GLUS-A's: widths, vocab, and
    SAM2 from the package's sam2_hiera_l.yaml at 1024 with 7 memories."""
    from omegaconf import OmegaConf

    from reference.config import read_config
    from reference.tokenizer import load_tokenizer, train_tiny_tokenizer

    train_tiny_tokenizer(tmp_path)
    tok = load_tokenizer(tmp_path)
    spec = shape_spec("glus-7b", 2)
    cfg = glus_config(tok, spec, "clip", "bfloat16", vocab_size=LLAMA_7B_VOCAB, sam2_config=None)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    c = read_config(tmp_path)
    assert (c.hidden_size, c.raw["num_hidden_layers"], c.vocab_size) == (4096, 2, 32003)
    assert c.llama_config().intermediate_size == 11008
    sam = OmegaConf.load(str(c.sam2_config_path())).model
    assert c.sam2_config_path().name == "sam2_hiera_l.yaml"
    assert sam.image_size == 1024 and sam.num_maskmem == 7
    assert sam.image_encoder.trunk.embed_dim == 144  # hiera-L


def test_llm_layers_cuts_depth_only(tmp_path):
    from reference.checkpoint import read_state_dict

    glus, _ = make_tiny(tmp_path / "t3", shape="tiny", llm_layers=3)
    cfg = json.loads((glus / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 3
    assert cfg["hidden_size"] == SHAPES["tiny"]["llama"]["hidden_size"]
    layers = {k.split(".")[2] for k in read_state_dict(glus) if k.startswith("model.layers.")}
    assert layers == {"0", "1", "2"}


def test_cli_rejects_bad_depth_and_shards(tmp_path, capsys):
    for args in (["--llm-layers", "0"], ["--shards", "0"]):
        with pytest.raises(SystemExit) as e:
            main([str(tmp_path / "x"), *args])
        assert e.value.code == 2
    assert "--llm-layers must be >= 1" in capsys.readouterr().err


@pytest.fixture(scope="module")
def external_engine_dir(tiny_dirs, tmp_path_factory):
    """The tiny int8 engine with every graph forced into external data, as a 7B's are."""
    import export.onnx_utils
    import export.quantize
    from export.build import build

    mp = pytest.MonkeyPatch()
    mp.setattr(export.onnx_utils, "EXTERNAL_DATA_BYTES", 0)
    mp.setattr(export.quantize, "EXTERNAL_DATA_BYTES", 0)
    try:
        out = tmp_path_factory.mktemp("engine-external")
        build(*tiny_dirs, precision="int8", out=out, progress=False)
    finally:
        mp.undo()
    return out


def test_external_data_engine_records_and_checks_side_files(external_engine_dir):
    m = read_manifest(external_engine_dir)
    for name, g in m.graphs.items():
        assert g["external_data"], f"{name} was not written with external data"
        for side in g["external_data"]:
            assert sha256_file(external_engine_dir / side["file"]) == side["sha256"]
    assert m.graphs["llm"]["quantization"]["external_data"] is True
    assert m.graphs["sam_image"]["quantization"]["external_data"] is True


def test_external_data_engine_gives_the_same_masks(external_engine_dir, tiny_int8_engine_dir):
    frames = moving_square_video(6)
    exprs = ["the red square", "the thing moving right"]
    a = GlusEngine.load(external_engine_dir).segment_video(frames, exprs)
    b = GlusEngine.load(tiny_int8_engine_dir).segment_video(frames, exprs)
    for ra, rb in zip(a, b):
        assert all(mask_iou(x, y) == 1.0 for x, y in zip(ra.masks, rb.masks))
        for sa, sb in zip(ra.steps, rb.steps):
            np.testing.assert_allclose(sa.seg_embedding, sb.seg_embedding, rtol=0, atol=1e-5)


def test_corrupt_side_file_is_refused(external_engine_dir, tmp_path):
    import shutil

    from runtime import EngineDirError

    d = tmp_path / "engine"
    shutil.copytree(external_engine_dir, d)
    side = d / read_manifest(d).graphs["mask_decoder"]["external_data"][0]["file"]
    data = bytearray(side.read_bytes())
    data[len(data) // 2] ^= 0xFF
    side.write_bytes(bytes(data))
    with pytest.raises(EngineDirError, match="external_data"):
        GlusEngine.load(d)


# ---- the real-shapes benchmarks' own arithmetic (hand-computed cases) ---------------------------
def test_fit_line_recovers_a_line():
    from benchmarks.export_memory import fit_line

    a, b = fit_line([1, 2, 3, 4], [5.0 + 2 * x for x in (1, 2, 3, 4)])
    assert (round(a, 9), round(b, 9)) == (5.0, 2.0)


def test_extrapolation_scales_only_the_llm_share():
    from benchmarks.real_shapes import extrapolate

    # 10 s measured; the LLM is 60% of the FLOPs at this depth and 8x more at 32 layers:
    # 4 s (rest) + 6 s x 8 = 52 s.
    e = extrapolate(10.0, {"llm": 6.0, "clip": 1.0, "sam2": 3.0}, {"llm": 48.0, "clip": 1.0, "sam2": 3.0})
    assert e["extrapolated_s"] == pytest.approx(52.0)
    assert e["llm_flop_ratio"] == pytest.approx(8.0) and "52.0 s" in e["arithmetic"]


def test_compare_counts_iou_and_cosine():
    from benchmarks.real_shapes import compare

    m = np.zeros((2, 4, 4), bool)
    m[0, :2, :2] = True
    got = m.copy()
    got[1, 0, 0] = True  # frame 1: reference empty, runtime one pixel → IoU 0
    seg = np.array([[1.0, 0.0], [1.0, 1.0]])
    c = compare(
        {"masks0": m, "seg0": seg, "is_seg0": np.array([True, True])},
        {"masks0": got, "seg0": np.array([[1.0, 0.0], [1.0, 0.0]]), "is_seg0": np.array([True, False])},
        1,
    )
    assert c["iou_min"] == 0.0 and c["iou_mean"] == 0.5 and c["frames_iou_ge_0999"] == 0.5
    assert c["seg_cosine_min"] == pytest.approx(2**-0.5) and c["seg_token_agreement"] == 0.5


def test_llm_weight_bytes_by_hand():
    from benchmarks.export_memory import llm_fp32_weight_bytes

    layer = 4 * 4096 * 4096 + 3 * 4096 * 11008  # q, k, v, o + gate, up, down
    head = 32003 * 4096  # lm_head
    norms = (2 * 2 + 1) * 4096
    seg = 4096 * 4096 + 4096 + 4096 * 256 + 256  # text_hidden_fcs
    assert llm_fp32_weight_bytes(2) == 4 * (2 * layer + head + norms + seg) == 2_214_740_992


def test_phase_sampler_keeps_the_peak_of_each_phase():
    import mmap

    from benchmarks.export_memory import PhaseSampler

    size = 64 * 2**20
    with PhaseSampler(period_s=0.005) as s:
        with s.during("big"):
            # an anonymous mapping, not a heap array: malloc may serve a heap array from memory
            # already resident after earlier tests, and then the resident set does not move
            base = s.rss()
            m = mmap.mmap(-1, size)
            for off in range(0, size, mmap.PAGESIZE):
                m[off] = 1  # touched: resident
            # alive until the sampling thread has seen it (a sample walks /proc for children;
            # on a loaded machine the thread may wait long for a core), at most 10 s
            deadline = time.monotonic() + 10
            while s.peaks.get("big", 0) - base <= 48 * 2**20 and time.monotonic() < deadline:
                time.sleep(0.01)
            m.close()  # unmapped: the resident set falls back
        with s.during("small"):
            pass
    assert s.peaks["big"] - s.peaks["small"] > 48 * 2**20


def test_timed_extrapolation_uses_the_measured_llm_time():
    from benchmarks.real_shapes import extrapolate_timed, runtime_llm_seconds

    stages = {"llm_window_exact|fp32": {"median_ms": 2000.0}, "llm_prefix|fp32": {"median_ms": 1200.0}}
    llm = runtime_llm_seconds(stages, "fp32", "exact", frames=12)  # 2.0 s + 1.2 s / 12
    assert llm == pytest.approx(2.1)
    e = extrapolate_timed(10.0, llm, 16.0)  # 7.9 s + 2.1 s x 16 = 41.5 s
    assert e["extrapolated_s"] == pytest.approx(41.5) and "41.5 s" in e["arithmetic"]


def test_llm_parity_frees_the_pytorch_llm_between_its_two_runs(tiny_dirs, tmp_path):
    """The build checks llm.onnx against PyTorch, then drops the model's PyTorch LLM weights
    before ONNX Runtime loads the graph (at 7B the two copies would be 2 x 27 GB; whether the
    memory comes back is measured by benchmarks/export_memory, not here). PyTorch must have run
    first (on meta weights it could not), and what the rest of the build reads must survive."""
    import torch

    import reference
    from export.build import graph_parity, release_llm_weights
    from export.llm import llm_spec
    from export.onnx_utils import export_graph
    from runtime import rules

    ref = reference.load(*tiny_dirs)
    m = ref.model
    want_freed = sum(
        p.numel() * 4
        for mod in (m.llm.model.layers, m.llm.model.norm, m.llm.lm_head, m.text_hidden_fcs)
        for p in mod.parameters()
    )
    spec = llm_spec(m)
    export_graph(spec, tmp_path / "llm.onnx")
    freed = []
    check = graph_parity(spec, tmp_path / "llm.onnx", seed=3, release=lambda: freed.append(release_llm_weights(m)))
    assert check["max_rel_error"] < 1e-4 and freed == [want_freed]
    assert all(p.is_meta for p in m.llm.model.layers.parameters()) and m.llm.lm_head.weight.is_meta
    assert not m.llm.model.embed_tokens.weight.is_meta  # the embedding array and the int8 check's prompts
    ids = ref.tokenizer.encode_prompt(rules.prompt_text("the red circle", []))
    n_img = ids.count(rules.IMAGE_TOKEN_INDEX)
    assert m.embed_prompt(ids, torch.zeros(n_img, 64, m.cfg.hidden_size)).shape[-1] == m.cfg.hidden_size
    assert release_llm_weights(m) == 0  # idempotent
