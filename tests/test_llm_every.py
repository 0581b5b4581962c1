"""llm_every=k: the LLM answers on every k-th query frame of a pass, SAM2 alone carries the
frames between. Pinned on a hand-made case: which frames ask the LLM, what the bank holds, and
that a skipped frame's mask is memory attention + the decoder prompted with the last [SEG],
computed here from the graphs themselves."""

from __future__ import annotations

import numpy as np
import pytest

from runtime import InputError, preprocess, rules
from runtime.stages import Stages

from .conftest import moving_square_video

EXPR = "the red square"


@pytest.fixture(scope="module")
def stages(tiny_engine_dir):
    return Stages.load(tiny_engine_dir)


def test_llm_every_1_is_glus(tiny_engine):
    frames = moving_square_video(7)
    a = tiny_engine.segment_video(frames, [EXPR, "the background"])
    b = tiny_engine.segment_video(frames, [EXPR, "the background"], llm_every=1)
    for ra, rb in zip(a, b):
        assert all(np.array_equal(x, y) for x, y in zip(ra.masks, rb.masks))
        assert all(s.llm_ran for s in rb.steps)


def test_which_frames_ask_the_llm_and_what_the_skipped_ones_are(tiny_engine, stages, monkeypatch):
    frames = moving_square_video(7)
    clip_calls = []
    clip = Stages.clip_tokens
    monkeypatch.setattr(Stages, "clip_tokens", lambda self, fs: clip_calls.append(len(fs)) or clip(self, fs))
    res = tiny_engine.segment_video(frames, EXPR, llm_every=3, force_seg=True, details=True)[0]
    assert [s.llm_ran for s in res.steps] == [True, False, False, True, False, False, True]
    # CLIP: the 4 context frames in one call, then only the frames the LLM sees and the
    # context did not already encode (context of 7 frames: rules.context_frame_indices)
    context = rules.context_frame_indices(7)
    assert clip_calls[0] == len(context)
    assert sum(clip_calls[1:]) == len({0, 3, 6} - set(context))
    # a skipped frame carries the last answer's [SEG]
    for i in (1, 2):
        np.testing.assert_array_equal(res.steps[i].seg_embedding, res.steps[0].seg_embedding)
    for i in (4, 5):
        np.testing.assert_array_equal(res.steps[i].seg_embedding, res.steps[3].seg_embedding)

    # Frame 2 by hand: the bank holds frames 0 and 1's memories (from their own decoder outputs);
    # memory attention over them, then the decoder with frame 0's [SEG].
    st = stages
    memories = []
    for i in range(2):
        feats = st.sam_features(frames[i])
        keys = [k for k in rules.memory_frame_indices(i, int(st.c["mem_stride"]), rules.NUM_MASKMEM) if k < i]
        mem = np.concatenate([memories[k] for k in keys], 0) if keys else None
        cond = st.condition(feats, mem)
        low = res.steps[i].low_res_logits[None]
        memories.append(st.encode_memory(cond, low))
    keys = [k for k in rules.memory_frame_indices(2, int(st.c["mem_stride"]), rules.NUM_MASKMEM) if k < 2]
    assert res.steps[2].memories == keys and sorted(keys) == [0, 1]  # GLUS's order
    feats = st.sam_features(frames[2])
    cond = st.condition(feats, np.concatenate([memories[k] for k in keys], 0))
    low, iou, obj = st.decode(cond, feats, res.steps[0].seg_embedding[None])
    np.testing.assert_allclose(res.steps[2].low_res_logits, low[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(res.masks[2], preprocess.logits_to_masks(low, frames[2].shape[:2])[0, 0])
    assert res.steps[2].iou == pytest.approx(float(iou[0, 0]), abs=1e-6)
    assert res.steps[2].object_score == pytest.approx(float(obj[0, 0]), abs=1e-5)


def test_the_window_holds_the_frames_the_llm_saw(tiny_engine, stages, monkeypatch):
    """At frame 6 (llm_every=3) the LLM's third round: its window is frames 0, 3, 6, its past
    answers those of rounds 1 and 2 (GLUS's rule on rounds, not on frames)."""
    seen = []
    step = Stages.llm_step
    monkeypatch.setattr(
        Stages, "llm_step", lambda self, p, e, past, w: seen.append((len(past), len(w))) or step(self, p, e, past, w)
    )
    tiny_engine.segment_video(moving_square_video(7), EXPR, llm_every=3)
    assert seen == [(0, 1), (1, 2), (2, 3)]


def test_stream_follows_the_same_schedule(tiny_engine):
    frames = moving_square_video(8)
    offline = tiny_engine.segment_video(frames, EXPR, llm_every=4)[0]
    s = tiny_engine.stream([EXPR], context_frames=[frames[i] for i in rules.context_frame_indices(8)], llm_every=4)
    ran = []
    for k, f in enumerate(frames):
        m = s.push(f)[EXPR]
        ran.append(s.last_steps[EXPR].llm_ran)
        np.testing.assert_array_equal(m, offline.masks[k])  # the offline context: the same masks
    assert ran == [True, False, False, False, True, False, False, False]


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True, None])
def test_llm_every_is_checked(tiny_engine, bad):
    with pytest.raises(InputError, match="llm_every"):
        tiny_engine.segment_video(moving_square_video(2), EXPR, llm_every=bad)
    with pytest.raises(InputError, match="llm_every"):
        tiny_engine.stream([EXPR], llm_every=bad)


def test_incremental_window_counts_the_llm_rounds(tiny_engine):
    """kv_policy="incremental" keeps its own cache of the LLM's rounds: with llm_every=2 over 7
    frames the LLM runs 4 rounds, the window never slides, so it equals the exact window."""
    frames = moving_square_video(7)
    exact = tiny_engine.segment_video(frames, EXPR, llm_every=2)[0]
    inc = tiny_engine.segment_video(frames, EXPR, llm_every=2, kv_policy="incremental")[0]
    for a, b in zip(exact.steps, inc.steps):
        np.testing.assert_allclose(a.seg_embedding, b.seg_embedding, rtol=1e-4, atol=1e-5)
    assert [s.llm_ran for s in inc.steps] == [True, False] * 3 + [True]
