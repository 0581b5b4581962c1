"""Several frames in one SAM2 image-encoder call (GlusEngine.encode_frames): each row against the
frame encoded alone by the engine (the independent expectation), and a stream fed those rows
against a stream that encodes its own frames."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime import GlusEngine
from runtime.errors import InputError
from runtime.stages import stacking_refused

from .conftest import moving_square_video


def frame(rng, h, w):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_the_image_graph_has_a_frame_axis(tiny_engine):
    shape = tiny_engine.manifest.graphs["sam_image"]["inputs"][0]["shape"]
    assert shape[0] == "F" and stacking_refused(tiny_engine.manifest) is None


@settings(max_examples=8, deadline=None)
@given(st.lists(st.tuples(st.integers(8, 80), st.integers(8, 80)), min_size=1, max_size=5), st.integers(0, 2**31))
def test_each_stacked_row_equals_its_frame_encoded_alone_fp32(tiny_engine, sizes, seed):
    rng = np.random.default_rng(seed)
    frames = [frame(rng, h, w) for h, w in sizes]  # cameras of different sizes stack too
    rows = tiny_engine.encode_frames(frames)
    assert len(rows) == len(frames)
    for f, row in zip(frames, rows):
        alone = tiny_engine._stages.sam_features(f)
        assert [a.shape for a in alone] == [r.shape for r in row]
        for a, r in zip(alone, row):
            assert np.array_equal(a, r)  # bit for bit: served masks equal in-process ones


def test_a_dynamic_int8_image_encoder_is_not_stacked(tiny_int8_engine_dir):
    """Its activation scales span the whole call, so stacked rows would depend on the other
    frames: encode_frames then runs one call per frame, and serving refuses batch_images."""
    from serving.cameras import Cameras

    engine = GlusEngine.load(tiny_int8_engine_dir)
    assert "dynamic int8" in stacking_refused(engine.manifest)
    rng = np.random.default_rng(5)
    frames = [frame(rng, 48, 64) for _ in range(4)]
    graph = engine._stages.graphs["sam_image"]
    calls = []
    real = graph.run
    graph.run = lambda *a, **k: calls.append(a[0].shape[0]) or real(*a, **k)
    try:
        rows = engine.encode_frames(frames)
    finally:
        del graph.run
    assert calls == [1, 1, 1, 1]
    for f, row in zip(frames, rows):
        for a, r in zip(engine._stages.sam_features(f), row):
            assert np.array_equal(a, r)
    with pytest.raises(ValueError, match="dynamic int8"):
        Cameras(engine, batch_images=True)


def test_the_int8_graph_coupling_is_real(tiny_int8_engine_dir):
    """Why the refusal: the same int8 graph run on a stack gives other features for a frame."""
    engine = GlusEngine.load(tiny_int8_engine_dir)
    st = engine._stages
    rng = np.random.default_rng(6)
    frames = [frame(rng, 48, 64) for _ in range(4)]
    frames[0][:] = 0  # a dark frame beside bright ones: another activation range
    stacked = st.sam_features_one_call(frames)[0]
    alone = st.sam_features(frames[0])
    assert any(not np.array_equal(s, a) for s, a in zip(stacked, alone))


def test_a_stream_fed_stacked_rows_gives_its_own_masks(tiny_engine):
    exprs = ["the red square", "the background"]
    va, vb = moving_square_video(6, seed=11), moving_square_video(6, seed=12, h=40, w=56)
    own, fed_a, fed_b = tiny_engine.stream(exprs), tiny_engine.stream(exprs), tiny_engine.stream(exprs)
    own_b = tiny_engine.stream(exprs)
    for fa, fb in zip(va, vb):
        ra, rb = tiny_engine.encode_frames([fa, fb])
        ma, mb = fed_a.push(fa, sam_features=ra), fed_b.push(fb, sam_features=rb)
        wa, wb = own.push(fa), own_b.push(fb)
        for e in exprs:
            assert np.array_equal(ma[e], wa[e]) and np.array_equal(mb[e], wb[e])
        assert [fed_a.last_steps[e].score for e in exprs] == [own.last_steps[e].score for e in exprs]


@pytest.mark.parametrize(
    "feats",
    [
        [],
        "abc",
        lambda row: row[:2],
        lambda row: [np.concatenate([row[0], row[0]]), row[1], row[2]],  # two frames' worth
        lambda row: [row[0][0], row[1], row[2]],  # no batch axis
        lambda row: [row[1], row[0], row[2]],  # levels out of order
        lambda row: [r.astype(np.float64) for r in row],  # another type
    ],
)
def test_wrong_features_are_refused_and_the_stream_is_unchanged(tiny_engine, feats):
    f = moving_square_video(1)[0]
    (row,) = tiny_engine.encode_frames([f])
    feats = feats(row) if callable(feats) else feats
    stream = tiny_engine.stream(["the red square"])
    with pytest.raises(InputError, match="sam_features"):
        stream.push(f, sam_features=feats)
    assert stream.frames_seen == 0 and stream.hw is None


def test_an_engine_without_the_frame_axis_says_to_rebuild(tiny_engine, monkeypatch):
    from serving.cameras import Cameras

    sig = tiny_engine.manifest.graphs["sam_image"]["inputs"][0]
    monkeypatch.setitem(sig, "shape", [1, *sig["shape"][1:]])  # as engines built before the axis
    assert "rebuild" in stacking_refused(tiny_engine.manifest)
    frames = moving_square_video(2)
    rows = tiny_engine.encode_frames(frames)  # one call per frame, as the graph takes
    for f, row in zip(frames, rows):
        assert all(np.array_equal(a, r) for a, r in zip(tiny_engine._stages.sam_features(f), row))
    with pytest.raises(ValueError, match="rebuild"):
        Cameras(tiny_engine, batch_images=True)
    Cameras(tiny_engine)  # without stacking it serves as before


def test_bad_frames_are_refused_before_the_call(tiny_engine):
    with pytest.raises(InputError):
        tiny_engine.encode_frames([np.zeros((8, 8, 4), np.uint8)])
    assert tiny_engine.encode_frames([]) == []
