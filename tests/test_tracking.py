"""runtime.tracking and the engine's passes: each frame is encoded once per call however many
passes read it, key_frames is one parameter, and the Stream's state is its tracks'."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime import InputError
from runtime.checks import check_key_frames
from runtime.stages import Stages

from .conftest import moving_square_video

EXPRS = ["the red square", "the background"]


@pytest.fixture
def counted(monkeypatch):
    """Frames CLIP- and SAM2-encoded, by content (a frame is identified by its bytes)."""
    seen = {"clip": [], "sam": []}
    clip, sam = Stages.clip_tokens, Stages.sam_features

    def clip_tokens(self, frames):
        seen["clip"] += [f.tobytes() for f in frames]
        return clip(self, frames)

    def sam_features(self, frame):
        seen["sam"].append(frame.tobytes())
        return sam(self, frame)

    monkeypatch.setattr(Stages, "clip_tokens", clip_tokens)
    monkeypatch.setattr(Stages, "sam_features", sam_features)
    return seen


@pytest.mark.parametrize("key_frames", ["auto", [5, 2], 4, None])
def test_each_frame_is_encoded_once_per_call(tiny_engine, counted, key_frames):
    frames = moving_square_video(9)
    res = tiny_engine.segment_video(frames, EXPRS, key_frames=key_frames, force_seg=True)
    for kind in ("clip", "sam"):
        assert len(counted[kind]) == len(set(counted[kind])), f"a frame {kind}-encoded twice"
        assert set(counted[kind]) == {f.tobytes() for f in frames}  # force_seg: every frame needs SAM2
    if key_frames == [5, 2]:
        assert [r.key_frame for r in res] == [5, 2]
        assert res[0].steps[0].pass_name == "backward" and res[0].steps[8].pass_name == "forward"


def test_one_key_frame_for_all_expressions_equals_a_list(tiny_engine):
    frames = moving_square_video(7)
    a = tiny_engine.segment_video(frames, EXPRS, key_frames=3)
    b = tiny_engine.segment_video(frames, EXPRS, key_frames=[3, 3])
    for ra, rb in zip(a, b):
        assert all(np.array_equal(x, y) for x, y in zip(ra.masks, rb.masks))


@given(
    st.one_of(
        st.text(max_size=5),
        st.integers(-3, 12),
        st.booleans(),
        st.lists(st.one_of(st.none(), st.integers(-2, 12)), max_size=4),
    )
)
def test_key_frames_are_checked(key_frames):
    n_expr, n = 2, 9
    ok = (
        key_frames == "auto"
        or (isinstance(key_frames, int) and not isinstance(key_frames, bool) and 0 <= key_frames < n)
        or (
            isinstance(key_frames, list)
            and len(key_frames) == n_expr
            and all(k is None or 0 <= k < n for k in key_frames)
        )
    )
    if ok:
        got = check_key_frames(key_frames, n_expr, n)
        assert got == "auto" or (len(got) == n_expr and all(0 <= k < n for k in got))
    else:
        with pytest.raises(InputError):
            check_key_frames(key_frames, n_expr, n)


def test_the_old_kf_parameter_is_gone(tiny_engine):
    with pytest.raises(TypeError):
        tiny_engine.segment_video(moving_square_video(3), EXPRS, kf="auto")


def test_stream_with_fixed_context_has_no_context_indices(tiny_engine):
    frames = moving_square_video(6)
    s = tiny_engine.stream(EXPRS[:1], context_frames=frames[:4])
    assert s.context_indices is None
    s.push(frames[4])
    assert s.context_indices is None  # the context is not frames of this stream
    live = tiny_engine.stream(EXPRS[:1])
    live.push(frames[0])
    assert live.context_indices == [0] * 4  # one frame seen: GLUS repeats it as all 4 context frames


def test_public_surface_fits_on_a_screen(tiny_engine):
    public = {n for n in dir(tiny_engine) if not n.startswith("_")}
    assert public == {
        "load",
        "segment_video",
        "stream",
        "check_expression",
        "manifest",
        "precision",
        "backend",
        "device",
        "io_binding",
        "encode_frames",  # several cameras' frames in one image-encoder call (serving --batch-images)
    }


def test_every_runtime_error_is_a_glus_error():
    """Bad input, a bad engine directory, a missing backend, a video source that cannot be
    read and a broken invariant: each a GlusError, so one except clause catches them all."""
    import runtime.errors as E
    from runtime.video import VideoSourceError

    for cls in (E.InputError, E.EngineDirError, E.BackendError, E.InvariantError, VideoSourceError):
        assert issubclass(cls, E.GlusError)
