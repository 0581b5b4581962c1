"""serving/cameras.py without Triton: what the model does with each request, checked against
in-process runtime streams (the independent expectation) on the tiny engine."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from serving.cameras import CameraError, Cameras, Reply, Request, _check_expression_list, stream_nbytes

from .conftest import moving_square_video

EXPRS_A = ["the red square", "the background"]
EXPRS_B = ["the moving thing"]


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def req(corrid, frame, *, start=False, end=False, exprs=None):
    return Request(corrid=corrid, start=start, end=end, frame=frame, expressions=exprs)


def stacked(stream, frame, exprs):
    m = stream.push(frame)
    return np.stack([m[e] for e in exprs])


def test_interleaved_cameras_give_each_its_own_stream(tiny_engine):
    va, vb = moving_square_video(8, seed=1), moving_square_video(8, seed=2)
    cams = Cameras(tiny_engine, max_cameras=2)
    sa, sb = tiny_engine.stream(EXPRS_A), tiny_engine.stream(EXPRS_B)
    for t, (fa, fb) in enumerate(zip(va, vb)):
        ra, rb = cams.handle(
            [req(7, fa, start=t == 0, exprs=EXPRS_A if t == 0 else None), req(9, fb, start=t == 0, exprs=EXPRS_B)]
        )
        assert isinstance(ra, Reply) and isinstance(rb, Reply)
        assert ra.frame_index == rb.frame_index == t
        assert np.array_equal(ra.masks, stacked(sa, fa, EXPRS_A))
        assert np.array_equal(rb.masks, stacked(sb, fb, EXPRS_B))
        assert ra.scores.shape == (2,) and np.all((ra.scores >= 0) & (ra.scores <= 1))
    assert cams.open == 2 and cams.frames_served == 16


def test_threads_give_the_same_masks(tiny_engine):
    va, vb = moving_square_video(5, seed=3), moving_square_video(5, seed=4)
    one, two = Cameras(tiny_engine, workers=1), Cameras(tiny_engine, workers=2)
    try:
        for t, (fa, fb) in enumerate(zip(va, vb)):
            batch = [req("a", fa, start=t == 0, exprs=EXPRS_A), req("b", fb, start=t == 0, exprs=EXPRS_B)]
            for x, y in zip(one.handle(batch), two.handle(batch)):
                assert np.array_equal(x.masks, y.masks)
    finally:
        two.close()


def test_two_frames_of_one_camera_in_one_call_are_served_in_order(tiny_engine):
    v = moving_square_video(3, seed=5)
    cams = Cameras(tiny_engine)
    s = tiny_engine.stream(EXPRS_B)
    replies = cams.handle([req(1, v[0], start=True, exprs=EXPRS_B), req(1, v[1]), req(1, v[2])])
    assert [r.frame_index for r in replies] == [0, 1, 2]
    for r, f in zip(replies, v):
        assert np.array_equal(r.masks, stacked(s, f, EXPRS_B))


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((48, 64, 4), np.uint8),  # four channels
        np.zeros((48, 64, 3), np.float32),  # not uint8
        np.zeros((40, 64, 3), np.uint8),  # another size mid-stream
        np.zeros((48, 64), np.uint8),  # grey
    ],
    ids=["rgba", "float", "resized", "grey"],
)
def test_a_bad_frame_is_an_error_for_that_request_and_the_camera_goes_on(tiny_engine, bad):
    v = moving_square_video(6, seed=6)
    cams = Cameras(tiny_engine)
    s = tiny_engine.stream(EXPRS_A)  # never sees the bad frame
    for t, f in enumerate(v):
        if t == 3:
            (err,) = cams.handle([req(5, bad)])
            assert isinstance(err, CameraError) and err.kind == "input"
        (r,) = cams.handle([req(5, f, start=t == 0, exprs=EXPRS_A if t == 0 else None)])
        assert r.frame_index == t
        assert np.array_equal(r.masks, stacked(s, f, EXPRS_A))


def test_a_bad_expression_change_leaves_the_camera_as_it_was(tiny_engine):
    v = moving_square_video(4, seed=7)
    cams = Cameras(tiny_engine)
    s = tiny_engine.stream(EXPRS_A)
    cams.handle([req(3, v[0], start=True, exprs=EXPRS_A)])
    s.push(v[0])
    for bad in (["the red square", ""], ["x " * 5000], ["a", "a"]):
        (err,) = cams.handle([req(3, v[1], exprs=bad)])
        assert isinstance(err, CameraError) and err.kind == "input", bad
    (r,) = cams.handle([req(3, v[1])])
    assert r.expressions == EXPRS_A and r.frame_index == 1
    assert np.array_equal(r.masks, stacked(s, v[1], EXPRS_A))


def test_a_new_expression_leaves_the_others_untouched(tiny_engine):
    v = moving_square_video(5, seed=8)
    cams = Cameras(tiny_engine)
    s = tiny_engine.stream(EXPRS_A)
    for t, f in enumerate(v):
        exprs = EXPRS_A if t < 2 else [*EXPRS_A, "the blue circle"]
        (r,) = cams.handle([req(4, f, start=t == 0, exprs=exprs)])
        assert r.expressions == exprs and r.masks.shape[0] == len(exprs)
        assert np.array_equal(r.masks[:2], stacked(s, f, EXPRS_A))


def test_start_is_required_and_end_forgets(tiny_engine):
    v = moving_square_video(3, seed=9)
    cams = Cameras(tiny_engine)
    (err,) = cams.handle([req(11, v[0])])
    assert err.kind == "unknown" and "START" in str(err)
    (err,) = cams.handle([req(11, v[0], start=True)])  # START without expressions
    assert err.kind == "input" and "EXPRESSIONS" in str(err)
    (r,) = cams.handle([req(11, v[0], start=True, exprs=EXPRS_B)])
    (r,) = cams.handle([req(11, v[1], end=True)])
    assert r.frame_index == 1 and cams.open == 0
    (err,) = cams.handle([req(11, v[2])])
    assert err.kind == "unknown"


def test_end_with_an_empty_frame_closes_without_segmenting(tiny_engine):
    v = moving_square_video(2, seed=10)
    freed = []
    cams = Cameras(tiny_engine, on_free=lambda: freed.append(1))
    cams.handle([req(12, v[0], start=True, exprs=EXPRS_B)])
    (r,) = cams.handle([req(12, np.zeros((0, 0, 3), np.uint8), end=True)])
    assert r.frame_index == -1 and r.masks.shape == (1, 0, 0)
    assert cams.open == 0 and cams.frames_served == 1 and freed == [1]
    (err,) = cams.handle([req(12, np.zeros((0, 0, 3), np.uint8), end=True)])
    assert err.kind == "unknown"
    (err,) = cams.handle([req(13, np.zeros((0, 0, 3), np.uint8), start=True, exprs=EXPRS_B)])
    assert err.kind == "input"  # an empty frame is only an END


def test_more_cameras_than_configured_are_refused_until_one_leaves(tiny_engine):
    f = moving_square_video(1, seed=11)[0]
    cams = Cameras(tiny_engine, max_cameras=2)
    replies = cams.handle([req(i, f, start=True, exprs=EXPRS_B) for i in range(3)])
    assert [type(r).__name__ for r in replies] == ["Reply", "Reply", "CameraError"]
    assert replies[2].kind == "refused" and "max_cameras" in str(replies[2])
    assert cams.open == 2
    cams.handle([req(0, f, end=True)])
    (r,) = cams.handle([req(2, f, start=True, exprs=EXPRS_B)])
    assert isinstance(r, Reply) and cams.open == 2
    (r,) = cams.handle([req(1, f, start=True, exprs=EXPRS_A)])  # a START on an open ID restarts it
    assert isinstance(r, Reply) and r.frame_index == 0 and r.expressions == EXPRS_A


def test_an_idle_camera_is_freed(tiny_engine):
    v = moving_square_video(2, seed=12)
    clock, freed = Clock(), []
    cams = Cameras(tiny_engine, idle_timeout_s=5.0, clock=clock, on_free=lambda: freed.append(1))
    cams.handle([req(1, v[0], start=True, exprs=EXPRS_B), req(2, v[0], start=True, exprs=EXPRS_B)])
    held = stream_nbytes(cams)
    assert held > 0
    clock.t = 4.0
    cams.handle([req(2, v[1])])  # camera 2 stays alive
    clock.t = 6.0
    assert cams.reap() == 1 and cams.open == 1 and freed == [1] and cams.freed_idle == 1
    assert 0 < stream_nbytes(cams) < held
    (err,) = cams.handle([req(1, v[1])])
    assert err.kind == "unknown" and "idle" in str(err)


def test_bad_options_fail_at_load(tiny_engine):
    with pytest.raises(ValueError):
        Cameras(tiny_engine, max_cameras=0)
    with pytest.raises(ValueError):
        Cameras(tiny_engine, idle_timeout_s=0)
    with pytest.raises(Exception, match="kv_policy"):
        Cameras(tiny_engine, stream_options={"kv_policy": "sometimes"})


@given(st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=5))
def test_expression_lists_keep_order_and_refuse_repeats(exprs):
    from runtime.errors import InputError

    if len(set(exprs)) < len(exprs):
        with pytest.raises(InputError, match="more than once"):
            _check_expression_list(exprs)
    else:
        assert _check_expression_list(exprs) == exprs
        assert _check_expression_list([e.encode() for e in exprs]) == exprs


@pytest.mark.parametrize("workers", [1, 2])
def test_stacked_image_calls_give_in_process_masks(tiny_engine, workers):
    """batch_images: the frames of one call share one image-encoder call; in fp32 every camera's
    masks stay those of its own in-process stream, bit for bit."""
    videos = [moving_square_video(5, seed=20), moving_square_video(5, seed=21, h=40, w=56), moving_square_video(5)]
    exprs = [EXPRS_A, EXPRS_B, EXPRS_A]
    cams = Cameras(tiny_engine, batch_images=True, workers=workers)
    own = [tiny_engine.stream(e) for e in exprs]
    calls = []
    real = tiny_engine._stages.sam_features_stacked
    tiny_engine._stages.sam_features_stacked = lambda frames: calls.append(len(frames)) or real(frames)
    try:
        for t in range(5):
            batch = [req(k, v[t], start=t == 0, exprs=e) for k, (v, e) in enumerate(zip(videos, exprs))]
            if t == 3:  # a bad frame in the call: its own error, the others stacked and served
                batch[1] = req(1, np.zeros((40, 56, 4), np.uint8))
            for k, out in enumerate(cams.handle(batch)):
                if t == 3 and k == 1:
                    assert isinstance(out, CameraError) and out.kind == "input"
                    continue
                assert np.array_equal(out.masks, stacked(own[k], videos[k][t], exprs[k]))
    finally:
        del tiny_engine._stages.sam_features_stacked
        cams.close()
    assert calls == [3, 3, 3, 2, 3] and cams.stacked_calls == 5
