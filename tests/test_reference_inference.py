"""The GLUS inference loop of the reference, against the rules it must follow."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import reference
from reference import inference
from reference.preprocess import clip_pixels
from runtime import rules

from .conftest import moving_square_video


@pytest.fixture(scope="module")
def result(tiny_ref):
    return reference.segment_video(tiny_ref, moving_square_video(8), "The red square.")


def test_one_mask_per_frame(result):
    assert len(result.masks) == 8
    for r, m in zip(result.frames, result.masks):
        assert m.dtype == bool and m.shape == (48, 64)
        if r.is_seg:
            up = torch.nn.functional.interpolate(
                torch.from_numpy(r.low_res_logits)[None], (48, 64), mode="bilinear", align_corners=False
            )[0, 0]
            np.testing.assert_array_equal(m, (up > 0).numpy())  # threshold at 0
    assert [r.frame for r in result.frames] == list(range(8))
    assert result.context == rules.context_frame_indices(8)


def test_the_tiny_model_exercises_the_seg_branch(result):
    assert sum(r.is_seg for r in result.frames) >= 4
    assert any(m.any() for m in result.masks)


def test_memory_read_follows_the_rule(result):
    seg_positions = {r.step - 1 for r in result.frames if r.is_seg}
    for r in result.frames:
        if r.is_seg:
            t = r.step - 1
            assert r.memories == [k for k in rules.memory_frame_indices(t) if k in seg_positions and k < t]


def test_seg_embedding_matches_a_plain_transformers_forward(tiny_ref):
    """Step 3 recomputed independently: LlamaForCausalLM with output_hidden_states, as GLUS."""
    frames = moving_square_video(5)
    res = reference.segment_video(tiny_ref, frames, "the red square")
    m, tok = tiny_ref.model, tiny_ref.tokenizer
    ctx = rules.context_frame_indices(5)
    past = [rules.ANSWER_SEG if r.is_seg else rules.ANSWER_NO_SEG for r in res.frames[:2]]
    ids = tok.encode_prompt(rules.prompt_text("the red square", past))
    imgs = [clip_pixels(tiny_ref.clip_processor, frames[i]) for i in ctx + [0, 1, 2]]
    with torch.no_grad():
        embeds = m.embed_prompt(ids, m.encode_clip(torch.stack(imgs)))
        out = m.llm(inputs_embeds=embeds, output_hidden_states=True)
        h = out.hidden_states[-1][0, -1]
        seg = m.text_hidden_fcs[0](h)
    np.testing.assert_allclose(res.frames[2].seg_embedding, seg.numpy(), rtol=1e-5, atol=1e-5)
    assert res.frames[2].next_token == int(out.logits[0, -1].argmax())


def test_whole_prompt_and_all_images_rerun_every_step(tiny_ref, monkeypatch):
    calls = []
    real = tiny_ref.model.encode_clip

    def spy(px):
        calls.append(px.shape[0])
        return real(px)

    monkeypatch.setattr(tiny_ref.model, "encode_clip", spy)
    reference.segment_video(tiny_ref, moving_square_video(6), "the red square")
    assert calls == [4 + min(i, 4) for i in range(1, 7)]


def test_not_seg_gives_empty_mask_and_no_seg_history(tiny_ref, monkeypatch):
    # seg_id -1 matches no token: the model never answers [SEG]
    never = SimpleNamespace(seg_id=-1, encode_prompt=tiny_ref.tokenizer.encode_prompt)
    ref = dataclasses.replace(tiny_ref, tokenizer=never)
    seen = []
    real = rules.prompt_text

    def spy(expr, past):
        seen.append(list(past))
        return real(expr, past)

    monkeypatch.setattr(rules, "prompt_text", spy)
    res = reference.segment_video(ref, moving_square_video(6), "the red square")
    assert not any(m.any() for m in res.masks)
    assert all(r.low_res_logits is None and not r.is_seg for r in res.frames)
    assert seen[-1] == [rules.ANSWER_NO_SEG] * 3


def test_key_frame_forward_and_backward(tiny_ref):
    frames = moving_square_video(7)
    k = 3
    res = reference.segment_video(tiny_ref, frames, "the red square", key_frame=k)
    ctx = rules.context_frame_indices(7)
    fwd = inference.run_pass(tiny_ref, frames, ctx, list(range(k, 7)), "the red square")
    bwd = inference.run_pass(tiny_ref, frames, ctx, [3, 2, 1, 0], "the red square")
    assert [r.frame for r in res.passes["backward"]] == [3, 2, 1, 0]
    for r in fwd[1:]:  # frames after k from the forward pass
        np.testing.assert_array_equal(res.masks[r.frame], r.mask)
    for r in bwd:  # frames 0..k (k included) from the backward pass
        np.testing.assert_array_equal(res.masks[r.frame], r.mask)
        assert res.frames[r.frame].pass_name == "backward"


def test_no_memory_bank_variant(tiny_ref, result):
    res = reference.segment_video(tiny_ref, moving_square_video(8), "the red square", use_memory=False)
    assert all(r.memories == [] for r in res.frames)
    np.testing.assert_array_equal(res.masks[0], result.masks[0])  # frame 0 never has memories


def test_trailing_period_and_case_are_normalised(tiny_ref, result):
    res = reference.segment_video(tiny_ref, moving_square_video(8), "the red square")
    for a, b in zip(res.masks, result.masks):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("n", [1, 3])
def test_short_videos(tiny_ref, n):
    res = reference.segment_video(tiny_ref, moving_square_video(n), "the red square")
    assert len(res.masks) == n
    assert len(res.context) == 4 and all(0 <= c < n for c in res.context)


@pytest.mark.parametrize(
    "bad,err",
    [
        ([], ValueError),
        ([np.zeros((8, 8, 3), np.float32)], ValueError),
        ([np.zeros((8, 8), np.uint8)], ValueError),
        ([np.zeros((0, 8, 3), np.uint8)], ValueError),
    ],
)
def test_bad_frames(tiny_ref, bad, err):
    with pytest.raises(err):
        reference.segment_video(tiny_ref, bad, "the red square")


def test_bad_expression_and_key_frame(tiny_ref):
    with pytest.raises(ValueError):
        reference.segment_video(tiny_ref, moving_square_video(3), "   ")
    with pytest.raises(ValueError, match="key frame"):
        reference.segment_video(tiny_ref, moving_square_video(3), "the square", key_frame=5)
