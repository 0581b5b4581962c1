"""batch_llm=True: the expressions of a frame through the LLM in one call of the "llm_batched"
graph (export.build --batched-llm) on the shared prefix. On an fp32 engine every mask equals the
one-call-per-expression loop's, bit for bit; without the graph the option says how to get it."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime import GlusEngine, InputError, rules
from runtime.llm_policy import AutoTrigger
from runtime.stages import Prefix, pad_windows

from .conftest import moving_square_video

# Three window lengths (the tokenizer gives each a different number of tokens: checked below).
EXPRESSIONS = ["a square", "the red square", "the red square moving to the right side of the frame"]


@pytest.fixture(scope="module")
def batched_engine_dir(tiny_dirs, tiny_engine_dir, tmp_path_factory):
    """The session's fp32 engine rebuilt with --batched-llm: every other graph is reused."""
    from export.build import build

    out = tmp_path_factory.mktemp("engine-fp32-batched")
    shutil.copytree(tiny_engine_dir, out, dirs_exist_ok=True)
    build(*tiny_dirs, precision="fp32", out=out, progress=False, batched_llm=True)
    return out


@pytest.fixture(scope="module")
def batched_engine(batched_engine_dir):
    return GlusEngine.load(batched_engine_dir)


def count_batched_calls(engine, monkeypatch) -> list[int]:
    """Batch sizes of every llm_batched call the engine makes from here on."""
    stages = engine._stages
    graph = stages.graph("llm_batched")
    sizes = []
    run = graph.run

    def counted(*arrays, **kw):
        sizes.append(arrays[0].shape[0])
        return run(*arrays, **kw)

    monkeypatch.setattr(graph, "run", counted)
    return sizes


def assert_same(a, b) -> None:
    for ra, rb in zip(a, b, strict=True):
        assert all(np.array_equal(x, y) for x, y in zip(ra.masks, rb.masks, strict=True)), ra.expression
        for sa, sb in zip(ra.steps, rb.steps, strict=True):
            assert (sa.llm_ran, sa.why, sa.next_token) == (sb.llm_ran, sb.why, sb.next_token)
            assert np.array_equal(sa.seg_embedding, sb.seg_embedding)


def test_windows_differ_in_length(batched_engine):
    stages = batched_engine._stages
    prefix = Prefix(stages.tokenizer.encode_prompt(rules.prefix_text()), None, 0)  # window_ids reads its ids
    lengths = {len(stages.window_ids(prefix, e, [])) for e in EXPRESSIONS}
    assert len(lengths) == len(EXPRESSIONS)


def test_manifest_records_the_graph_and_its_rows(batched_engine_dir, tiny_engine_dir):
    from runtime.manifest import read_manifest

    m = read_manifest(batched_engine_dir)
    entry = m.graphs["llm_batched"]
    assert entry["precision"] == "fp32" and entry["rows_bit_identical"] is True
    rows = m.data["parity"]["llm_batched_rows"]
    assert rows["bit_identical"] and rows["seg_rel_error_max"] == 0.0 and rows["next_token_agrees"]
    assert len(set(rows["window_tokens"])) == 3
    # the default build is unchanged: no batched graph
    assert "llm_batched" not in read_manifest(tiny_engine_dir).graphs


def test_batched_masks_equal_the_loop(batched_engine, monkeypatch):
    video = moving_square_video(5)
    want = batched_engine.segment_video(video, EXPRESSIONS)
    sizes = count_batched_calls(batched_engine, monkeypatch)
    got = batched_engine.segment_video(video, EXPRESSIONS, batch_llm=True)
    assert sizes == [3] * len(video)  # one call per frame, all three expressions in it
    assert_same(want, got)


def test_one_expression_uses_the_one_window_graph(batched_engine, monkeypatch):
    sizes = count_batched_calls(batched_engine, monkeypatch)
    batched_engine.segment_video(moving_square_video(2), EXPRESSIONS[:1], batch_llm=True)
    assert sizes == []


@pytest.mark.parametrize(
    "llm_every",
    [
        "auto",
        # the LLM on every second frame only: frames where no track asks
        AutoTrigger(min_score=0.0, max_drop=1.0, min_cosine=-1.0, max_gap=2),
        # every SAM2-alone mask rejected: the LLM answers after the verifying decode, batched
        AutoTrigger(min_score=1.0, max_drop=1.0, min_cosine=-1.0, max_gap=4),
    ],
    ids=["auto", "gap2", "verify"],
)
def test_batched_with_llm_every_auto(batched_engine, monkeypatch, llm_every):
    video = moving_square_video(5)
    want = batched_engine.segment_video(video, EXPRESSIONS, llm_every=llm_every)
    sizes = count_batched_calls(batched_engine, monkeypatch)
    got = batched_engine.segment_video(video, EXPRESSIONS, llm_every=llm_every, batch_llm=True)
    assert_same(want, got)
    asked = [sum(r.steps[i].llm_ran for r in want) for i in range(len(video))]
    assert sorted(sizes) == sorted(n for n in asked if n > 1)
    assert sizes  # some frame did batch


def test_stream_batched_equals_loop(batched_engine):
    video = moving_square_video(4)
    a = batched_engine.stream(EXPRESSIONS)
    b = batched_engine.stream(EXPRESSIONS, batch_llm=True)
    for f in video:
        ma, mb = a.push(f), b.push(f)
        assert all(np.array_equal(ma[e], mb[e]) for e in EXPRESSIONS)


def test_missing_graph_and_bad_options_say_why(tiny_engine, batched_engine):
    video = moving_square_video(2)
    with pytest.raises(InputError, match="--batched-llm"):
        tiny_engine.segment_video(video, EXPRESSIONS, batch_llm=True)
    with pytest.raises(InputError, match="--batched-llm"):
        tiny_engine.stream(EXPRESSIONS, batch_llm=True)
    with pytest.raises(InputError, match="kv_policy='exact'"):
        batched_engine.segment_video(video, EXPRESSIONS, batch_llm=True, kv_policy="incremental")
    with pytest.raises(InputError, match="True or False"):
        batched_engine.segment_video(video, EXPRESSIONS, batch_llm="yes")
    assert "llm_batched" not in tiny_engine._stages.graphs  # optional graphs open on first use


def test_int8_batched_graph_is_quantized_as_the_llm_and_checked(tiny_dirs, tiny_int8_engine_dir, tmp_path):
    """int8: quantized with the LLM's method; the manifest says whether rows are bit-identical to
    one-window calls and holds each row against fp32 at the int8 LLM's bar."""
    from export.build import LLM_INT8_COSINE_MIN, build

    out = tmp_path / "engine-int8-batched"
    shutil.copytree(tiny_int8_engine_dir, out)
    m = build(*tiny_dirs, precision="int8", out=out, progress=False, batched_llm=True)
    entry, llm = m["graphs"]["llm_batched"], m["graphs"]["llm"]
    assert entry["precision"] == llm["precision"] == "int8"
    assert entry["quantization"]["method"] == llm["quantization"]["method"]
    rows = m["parity"]["llm_batched_rows"]
    assert entry["rows_bit_identical"] is rows["bit_identical"]
    assert rows["seg_cosine_to_fp32_min"] >= LLM_INT8_COSINE_MIN and rows["next_token_agrees"]
    assert not (out / ".build").exists() and "llm_batched.onnx" not in {f.name for f in out.iterdir()}
    engine = GlusEngine.load(out)
    video = moving_square_video(3)
    got = engine.segment_video(video, EXPRESSIONS, batch_llm=True)
    want = engine.segment_video(video, EXPRESSIONS)
    for ra, rb in zip(want, got):
        for sa, sb in zip(ra.steps, rb.steps):
            cos = float(sa.seg_embedding @ sb.seg_embedding)
            cos /= float(np.linalg.norm(sa.seg_embedding) * np.linalg.norm(sb.seg_embedding))
            assert cos > 0.99


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 12), min_size=1, max_size=6),
    start=st.integers(0, 500),
    hidden=st.integers(1, 4),
)
def test_pad_windows(lengths, start, hidden):
    rng = np.random.default_rng(len(lengths) * 7 + start)
    embeds = [rng.standard_normal((1, n, hidden)).astype(np.float32) for n in lengths]
    x, pos, mask, last = pad_windows(embeds, start)
    t = max(lengths)
    assert x.shape == (len(lengths), t, hidden) and x.dtype == np.float32
    assert pos.shape == mask.shape == (len(lengths), t) and pos.dtype == mask.dtype == np.int64
    for i, n in enumerate(lengths):
        assert np.array_equal(x[i, :n], embeds[i][0])  # real tokens where a one-window call has them
        assert not x[i, n:].any()
        assert mask[i].tolist() == [1] * n + [0] * (t - n)
        assert pos[i].tolist() == list(range(start, start + t))
        assert last[i] == n - 1 and mask[i, last[i]] == 1


def test_pad_windows_refuses_nothing():
    with pytest.raises(ValueError):
        pad_windows([], 0)


def test_the_cli_batch_llm_gives_the_engines_masks(batched_engine, batched_engine_dir, tmp_path, capsys):
    import cv2

    from runtime.segment import main

    frames = moving_square_video(4, seed=41)
    src = tmp_path / "clip"
    src.mkdir()
    for t, f in enumerate(frames):
        cv2.imwrite(str(src / f"{t:05d}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    args = [str(src), "--engine", str(batched_engine_dir), "--out", str(tmp_path / "out"), "--batch-llm"]
    assert main([*args, *(x for e in EXPRESSIONS[:2] for x in ("-e", e))]) == 0, capsys.readouterr().err
    want = batched_engine.segment_video(frames, EXPRESSIONS[:2], batch_llm=True)
    for j, res in enumerate(want):
        for t in range(len(frames)):
            png = cv2.imread(str(tmp_path / "out" / "clip" / str(j) / f"{t:05d}.png"), cv2.IMREAD_GRAYSCALE)
            np.testing.assert_array_equal(png > 0, res.masks[t])
