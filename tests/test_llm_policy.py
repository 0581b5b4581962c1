"""llm_every="auto" and sticky [SEG]: when the LLM answers, and what SAM2 does when it does not.

Each trigger is pinned on a hand-made case with an independent expectation: a trigger that
always fires is GLUS (llm_every=1's masks), a gap alone is llm_every=k, a scene cut is found
from the graphs' own features, and sticky [SEG]'s masks are recomputed from the graphs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime import InputError, preprocess
from runtime.llm_policy import AutoTrigger, EveryK, cosine, llm_policy, scene_signature
from runtime.stages import Stages

from .conftest import moving_square_video

EXPR = "the red square"
LLM_STEP = Stages.llm_step
NEVER = dict(min_score=0.0, max_drop=1.0, min_cosine=-1.0)  # no confidence or scene trigger


@pytest.fixture(scope="module")
def stages(tiny_engine_dir):
    return Stages.load(tiny_engine_dir)


def test_policies_from_llm_every():
    assert isinstance(llm_policy(1), EveryK) and llm_policy(3).k == 3
    assert llm_policy("auto") == AutoTrigger()
    custom = AutoTrigger(max_gap=2)
    assert llm_policy(custom) is custom
    for bad in (0, -2, 2.0, "3", "Auto", None, True):
        with pytest.raises(InputError, match="llm_every"):
            llm_policy(bad)


@given(
    st.sampled_from(["min_score", "max_drop", "min_cosine", "max_gap"]),
    st.one_of(st.floats(allow_nan=True), st.integers(-5, 0), st.text(max_size=2), st.booleans()),
)
def test_bad_thresholds_are_refused(field, value):
    limits = {"min_score": (0, 1), "max_drop": (0, 1), "min_cosine": (-1, 1)}
    if field == "max_gap":
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    else:
        lo, hi = limits[field]
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and lo <= value <= hi
        ok = ok or (isinstance(value, bool) and lo <= value <= hi)  # bool is an int to Python
    if ok:
        AutoTrigger(**{field: value})
    else:
        with pytest.raises(InputError, match=field):
            AutoTrigger(**{field: value})


def test_defaults_are_the_validation_sweeps_choice():
    """AutoTrigger's defaults are what benchmarks.llm_trigger chose on the validation split."""
    res = json.loads((Path(__file__).parent.parent / "benchmarks/results/llm-trigger-glus-tiny.json").read_text())
    from benchmarks.llm_every import parse_variant

    assert res["chosen"], "the validation sweep chose no setting"
    assert parse_variant(res["chosen"])["llm_every"] == AutoTrigger()


def test_a_trigger_that_always_fires_is_glus(tiny_engine):
    """min_score=1: SAM2's own mask is never confident enough, so the LLM answers on every frame,
    and the masks are llm_every=1's (the first SAM2-alone decode is thrown away)."""
    frames = moving_square_video(6)
    exprs = [EXPR, "the background"]
    glus = tiny_engine.segment_video(frames, exprs, force_seg=True)
    always = AutoTrigger(min_score=1.0, min_cosine=-1.0)
    auto = tiny_engine.segment_video(frames, exprs, force_seg=True, llm_every=always)
    for g, a in zip(glus, auto):
        assert all(np.array_equal(x, y) for x, y in zip(g.masks, a.masks))
        assert all(s.llm_ran for s in a.steps)
        assert a.steps[0].why == "new expression"
        assert all(s.why.startswith("confidence ") and "< 1.0" in s.why for s in a.steps[1:])


def test_the_gap_alone_is_llm_every_k(tiny_engine):
    frames = moving_square_video(7)
    every3 = tiny_engine.segment_video(frames, EXPR, force_seg=True, llm_every=3)[0]
    gap3 = tiny_engine.segment_video(frames, EXPR, force_seg=True, llm_every=AutoTrigger(**NEVER, max_gap=3))[0]
    assert [s.llm_ran for s in gap3.steps] == [True, False, False, True, False, False, True]
    assert [s.why for s in gap3.steps if s.llm_ran] == ["new expression", "max gap 3", "max gap 3"]
    assert all(np.array_equal(x, y) for x, y in zip(every3.masks, gap3.masks))


def test_a_scene_cut_asks_the_llm(tiny_engine, stages):
    """Frames 0-3 show one scene, 4-6 another: the LLM answers on frame 0 (new expression) and on
    the first frame whose scene signature's cosine to frame 0's, computed here from the SAM2
    image features, falls below the threshold."""
    a = moving_square_video(4, seed=0)
    b = [np.ascontiguousarray(f[::-1, ::-1, ::-1]) for f in moving_square_video(3, seed=5)]  # another scene
    frames = [a[0]] * 4 + b
    sigs = [scene_signature(stages.sam_features(f)[2]) for f in frames]
    cut = cosine(sigs[4], sigs[0])
    assert cosine(sigs[1], sigs[0]) == pytest.approx(1.0, abs=1e-6) and cut < 0.99
    trig = AutoTrigger(min_score=0.0, max_drop=1.0, min_cosine=(1.0 + cut) / 2, max_gap=100)
    res = tiny_engine.segment_video(frames, EXPR, force_seg=True, llm_every=trig)[0]
    asked = [i for i, s in enumerate(res.steps) if s.llm_ran]
    assert asked[:2] == [0, 4]
    assert res.steps[4].why.startswith("scene change (cosine ")
    # after the cut the yardstick is the scene of the last frame the LLM saw
    want, last = [], 4
    for i in (5, 6):
        if cosine(sigs[i], sigs[last]) < trig.min_cosine:
            want.append(i)
            last = i
    assert asked[2:] == want


def test_a_new_expression_in_a_stream_starts_with_the_llm(tiny_engine):
    frames = moving_square_video(5)
    s = tiny_engine.stream([EXPR], llm_every=AutoTrigger(**NEVER, max_gap=100), force_seg=True)
    s.push(frames[0])
    s.push(frames[1])
    assert not s.last_steps[EXPR].llm_ran
    s.add("the background")
    s.push(frames[2])
    assert s.last_steps["the background"].llm_ran and s.last_steps["the background"].why == "new expression"
    assert not s.last_steps[EXPR].llm_ran


def _scripted_answers(monkeypatch, answers):
    """The LLM's step as it is, but its answer token replaced in turn by answers' (True: [SEG])."""
    step, it = LLM_STEP, iter(answers)

    def scripted(self, prefix, expression, past, window):
        seg, _ = step(self, prefix, expression, past, window)
        return seg, (self.seg_id if next(it) else (self.seg_id + 1) % len(self.embed_tokens))

    monkeypatch.setattr(Stages, "llm_step", scripted)


def test_sticky_seg_prompts_sam2_with_the_last_seg(tiny_engine, stages, monkeypatch):
    """[SEG] on frame 0, "no [SEG]" after. GLUS: empty masks from frame 1. sticky_seg: the decoder
    prompted with frame 0's [SEG] over the bank, mask kept (and stored) while the object score
    is > 0, recomputed here from the graphs."""
    frames = moving_square_video(5)
    answers = [True, False, False, False, False]
    _scripted_answers(monkeypatch, answers)
    glus = tiny_engine.segment_video(frames, EXPR, details=True)[0]
    _scripted_answers(monkeypatch, answers)
    sticky = tiny_engine.segment_video(frames, EXPR, details=True, sticky_seg=True)[0]
    assert [s.is_seg for s in sticky.steps] == answers
    assert not any(m.any() for m in glus.masks[1:])
    np.testing.assert_array_equal(sticky.masks[0], glus.masks[0])
    seg0 = sticky.steps[0].seg_embedding
    st = stages
    bank = st.new_bank(True)
    feats = st.sam_features(frames[0])
    cond = st.condition(feats, None)
    bank.store(0, st.encode_memory(cond, sticky.steps[0].low_res_logits[None])[0])
    kept = []
    for t in range(1, 5):
        feats = st.sam_features(frames[t])
        _, mem = bank.read(t)
        cond = st.condition(feats, mem)
        low, _, obj = st.decode(cond, feats, seg0[None])
        assert sticky.steps[t].object_score == pytest.approx(float(obj[0, 0]), abs=1e-4)
        if obj[0, 0] > 0:
            np.testing.assert_array_equal(sticky.masks[t], preprocess.logits_to_masks(low, frames[t].shape[:2])[0, 0])
            bank.store(t, st.encode_memory(cond, low)[0])
            kept.append(t)
        else:
            assert not sticky.masks[t].any()
    assert kept, "the case must keep some masks to test anything"
