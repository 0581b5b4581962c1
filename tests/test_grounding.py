"""training.grounding: CLIP token labels, the grounding prompt and loss, and both stages."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from evalkit import synth
from runtime import rules
from training import grounding as G
from training.checkpoints import init_checkpoint
from training.data import make_train_video
from training.dense_aux import IGNORE
from training.loop import seed_everything
from training.prompts import PromptCache
from training.stages import snapshot_digest, train

from .test_train import TEST_CFG, same_weights


def test_token_centres_follow_the_row_major_pooling_of_16x16_patches():
    xy = G.token_centres()
    assert xy.shape == (64, 2)
    # token 0: patch row 0, patch columns 0-3; token 5: row 1, columns 4-7; token 63: row 15, 12-15
    assert torch.allclose(xy[0], torch.tensor([2 / 16, 0.5 / 16]))
    assert torch.allclose(xy[5], torch.tensor([6 / 16, 1.5 / 16]))
    assert torch.allclose(xy[63], torch.tensor([14 / 16, 15.5 / 16]))


def _strip_cover(mask: np.ndarray) -> np.ndarray:
    """Share of each pooled token's strip (1/16 of the rows x 1/4 of the columns) the mask covers."""
    h, w = mask.shape
    return mask.reshape(16, h // 16, 4, w // 4).mean(axis=(1, 3)).reshape(-1)


@settings(max_examples=8, deadline=None)
@given(index=st.integers(0, 10_000), frame=st.integers(0, 7))
def test_clip_token_labels_name_the_object_covering_each_strip(index, frame):
    video = make_train_video(3, index, 8, (128, 128))
    labels = G.clip_token_labels(video, [frame]).numpy()[:, 0]  # [2, 64]
    meta = {o["obj_id"]: o for o in video.objects_meta}
    covers = {o: _strip_cover(video.objects[o][frame].astype(np.float64)) for o in video.objects}
    total = sum(covers.values())
    for k in range(64):
        owner = [o for o, c in covers.items() if c[k] >= 0.5]
        if owner:
            o = owner[0]
            assert labels[0, k] == list(synth.COLOURS).index(meta[o]["colour"]) + 1
            assert labels[1, k] == list(synth.SHAPES).index(meta[o]["shape"]) + 1
        elif total[k] < 0.2:
            assert labels[0, k] == labels[1, k] == 0
        else:
            assert labels[0, k] == labels[1, k] == IGNORE


def test_grounding_loss_skips_missing_targets_and_counts_picks():
    xy = torch.tensor([[0.1, 0.1], [0.5, 0.5], [0.9, 0.9]])
    target = torch.tensor([[0.1, 0.2], [float("nan"), 0.0], [0.0, 0.0]])
    other = torch.tensor([[0.9, 0.9], [0.0, 0.0], [1.0, 1.0]])
    loss, parts = G.grounding_loss(xy, target, other)
    expected = ((0.0**2 + 0.1**2) + (0.9**2 + 0.9**2)) / 4  # rows 0 and 2, both coordinates
    assert loss.item() == pytest.approx(expected)
    assert parts["g_pick"] == pytest.approx(0.5)  # row 0 nearer its target, row 2 nearer the other
    nothing, parts = G.grounding_loss(xy, torch.full((3, 2), float("nan")))
    assert nothing.item() == 0 and parts == {}


def test_question_prompt_has_the_frames_then_glus_question(tiny_ref):
    tok = tiny_ref.tokenizer
    ids = G.question_ids(tok, "the red circle", 3)
    assert ids[0] == tok.bos_id
    assert sum(1 for t in ids if t == rules.IMAGE_TOKEN_INDEX) == 3
    text = tok.decode([t for t in ids if t >= 0])
    assert rules.QUESTION_TEMPLATE.format(expr="the red circle") in text  # as the inference prompt words it
    assert text.rstrip().endswith("ASSISTANT: " + rules.ANSWER_PREFIX.strip())


def test_question_prompt_ends_where_stage_2_reads_seg(tiny_ref):
    """The grounding prompt's last tokens are the inference prompt's (the position whose hidden
    state predicts [SEG] and becomes the [SEG] embedding), and its CE targets are GLUS's answer
    text then [SEG] predicted from that last position."""
    tok = tiny_ref.tokenizer
    ids = G.question_ids(tok, "the red circle", 2)
    full = tok.encode_prompt(rules.prompt_text("the red circle", []))
    marker = tok.encode_chunk(rules.ASSISTANT_ROLE + ":")
    tail = len(ids) - max(k for k in range(len(ids)) if ids[k : k + len(marker)] == marker)
    assert ids[-tail:] == full[-tail:]
    targets = PromptCache(tok).answer_targets(ids)
    expanded = len(ids) + 2 * (rules.TOKENS_PER_IMAGE - 1)
    assert targets[-1] == (expanded - 1, tok.seg_id)
    assert tok.decode([t for _, t in targets[:-1]]).strip() == rules.ANSWER_PREFIX.strip()


@settings(max_examples=10, deadline=None)
@given(index=st.integers(0, 10_000), n=st.integers(1, 20), kmax=st.integers(1, 4), seed=st.integers(0, 99))
def test_grounding_draws_are_single_visible_targets_with_k_frames(index, n, kmax, seed):
    video = make_train_video(5, index, 8, (64, 64))
    draws = G.grounding_batch(np.random.default_rng(seed), video, n, kmax)
    assert len(draws) <= n
    for i, t, k in draws:
        ids = video.expressions[i][1]
        assert len(ids) == 1 and 1 <= k <= kmax and k - 1 <= t < len(video.frames)
        assert video.objects[ids[0]][t].any()


def test_clip_pretraining_makes_tokens_say_where_they_are(tiny_ref):
    """Stage 0b's position read-out error falls steeply within a few dozen steps."""
    cfg = replace(TEST_CFG, clip_steps=40, warmup=1)
    hist = G.pretrain_clip(tiny_ref, cfg, progress=False)
    first = np.mean([h["c_pos"] for h in hist[:5]])
    last = np.mean([h["c_pos"] for h in hist[-5:]])
    assert last < 0.5 * first


@pytest.fixture(scope="module")
def tiny_ref(tmp_path_factory):
    seed_everything(0)
    return init_checkpoint(tmp_path_factory.mktemp("tiny"), "test", 0)


def test_stages_0b_1b_and_the_rehearsal_run_inside_train_and_repeat_exactly(tmp_path):
    cfg = replace(
        TEST_CFG,
        steps=2,
        mask_warmup=1,
        weights_dtype="float32",
        clip_steps=3,
        ground_steps=3,
        ground_single_steps=1,
        ground_frames=3,
        ground_batch=4,
        ground_weight=1.0,
        ground_mix=1.0,
        ground_mix_batch=4,
    )
    for name in ("a", "b"):
        train(cfg, tmp_path / name, progress=False)
    assert same_weights(tmp_path / "a", tmp_path / "b")
    log = json.loads((tmp_path / "a" / "train_log.json").read_text())
    assert len(log["clip_history"]) == 3 and {"c_col", "c_shape", "c_pos"} <= set(log["clip_history"][0])
    assert [h["k"] for h in log["ground_history"]] == [1, 3, 3]  # one frame first, then up to 3
    assert all("g_mse" in h for h in log["history"])  # the stage-2 location loss is on
    assert all("m_mse" in h and "m_ce" in h for h in log["history"])  # and stage 1b's rehearsal


def test_stage2_from_a_stage1_snapshot_repeats_the_full_run(tmp_path):
    """--keep-stage1 then --from-stage1: stage 2 alone gives the full run's weights and losses."""
    cfg = replace(
        TEST_CFG,
        steps=2,
        mask_warmup=1,
        weights_dtype="float32",
        clip_steps=2,
        locate=True,
        ground_steps=2,
        ground_single_steps=1,
        ground_frames=2,
        ground_batch=4,
        ground_weight=1.0,
    )
    train(replace(cfg, keep_stage1=True), tmp_path / "full", progress=False)
    train(cfg, tmp_path / "resumed", progress=False, from_stage1=tmp_path / "full" / "stage1.pt")
    assert same_weights(tmp_path / "full", tmp_path / "resumed")
    la, lb = (json.loads((tmp_path / d / "train_log.json").read_text())["history"] for d in ("full", "resumed"))
    drop_t = [{k: v for k, v in h.items() if k != "t"} for h in la]
    assert drop_t == [{k: v for k, v in h.items() if k != "t"} for h in lb]
    logs = [json.loads((tmp_path / d / "train_log.json").read_text()) for d in ("full", "resumed")]
    assert logs[1]["from_stage1"].endswith("stage1.pt")
    # both runs record the snapshot's tensor digest, which is that of the file on disk
    assert logs[0]["stage1_sha256"] == logs[1]["stage1_sha256"] == snapshot_digest(tmp_path / "full" / "stage1.pt")


def test_snapshot_digest_sees_one_changed_weight_and_not_the_file_framing(tmp_path):
    """The digest is over tensors: re-saving the same state (new file bytes) keeps it, one
    changed value anywhere in it changes it."""
    state = {
        "model": {"b.weight": torch.arange(6.0).reshape(2, 3), "a.bias": torch.ones(2)},
        "prompt": None,
        "ground_head": {"fc.weight": torch.zeros(2, 2)},
        "motion_head": None,
        "pointer": None,
    }
    torch.save(state, tmp_path / "one.pt")
    torch.save({k: state[k] for k in reversed(list(state))}, tmp_path / "two.pt")  # other pickle order
    assert snapshot_digest(tmp_path / "one.pt") == snapshot_digest(tmp_path / "two.pt")
    state["ground_head"]["fc.weight"][1, 0] = 1e-30
    torch.save(state, tmp_path / "three.pt")
    assert snapshot_digest(tmp_path / "three.pt") != snapshot_digest(tmp_path / "one.pt")


def test_attribute_loss_is_the_colour_plus_shape_cross_entropy():
    head = G.GroundingHead(4)
    hidden = torch.randn(3, 4)
    colours, shapes = ["red", "blue", "red"], list(synth.SHAPES)[:3]
    loss, parts = head.attribute_loss(hidden, colours, shapes)
    yc = torch.tensor([list(synth.COLOURS).index(c) for c in colours])
    ys = torch.tensor([0, 1, 2])
    lc, ls = head.colour(hidden), head.shape(hidden)
    by_hand = -(lc.log_softmax(-1)[range(3), yc].mean() + ls.log_softmax(-1)[range(3), ys].mean())
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-6)
    both = ((lc.argmax(-1) == yc) & (ls.argmax(-1) == ys)).float().mean().item()
    assert parts["g_attr"] == pytest.approx(both)


def test_stage2_llm_scale_zero_leaves_the_grounded_llm_as_stage_1b_left_it(tmp_path):
    """stage2_llm_scale scales the LLM body / projector / CLIP rate only: at 0 they keep the
    snapshot's weights while the [SEG] head (text_hidden_fcs) still learns."""
    cfg = replace(
        TEST_CFG,
        steps=2,
        mask_warmup=1,
        weights_dtype="float32",
        clip_steps=1,
        ground_steps=1,
        ground_single_steps=1,
        ground_batch=4,
        ground_weight=1.0,
    )
    train(replace(cfg, keep_stage1=True, steps=0), tmp_path / "pre", progress=False)
    snap = torch.load(tmp_path / "pre" / "stage1.pt", weights_only=False)["model"]
    ref, _ = train(
        replace(cfg, stage2_llm_scale=0.0, freeze_sam_steps=2),
        tmp_path / "s2",
        progress=False,
        from_stage1=tmp_path / "pre" / "stage1.pt",
    )
    now = ref.model.state_dict()
    body = [k for k in snap if k.startswith(("llm.", "mm_projector", "clip."))]
    assert body and all(torch.equal(now[k].float(), snap[k].float()) for k in body)
    assert not all(torch.equal(now[k].float(), snap[k].float()) for k in snap if k.startswith("text_hidden_fcs"))


@settings(max_examples=8, deadline=None)
@given(index=st.integers(0, 10_000), frame=st.integers(0, 7))
def test_fine_cover_is_the_union_of_objects_over_each_strips_sub_columns(index, frame):
    """Hand-computed at 128 px: token k = (row r, strip c) covers rows 8r..8r+7, columns 32c..32c+31;
    sub-column j of it, columns 32c+4j..32c+4j+3. Their mean is the strip's cover."""
    video = make_train_video(5, index, 8, (128, 128))
    fine = G.clip_fine_cover(video, [frame]).numpy()[0]
    union = np.zeros((128, 128))
    for masks in video.objects.values():
        union = np.maximum(union, masks[frame])
    for k in range(64):
        r, c = divmod(k, 4)
        for j in range(G.FINE_COLS):
            want = union[8 * r : 8 * r + 8, 32 * c + 4 * j : 32 * c + 4 * j + 4].mean()
            assert fine[k, j] == pytest.approx(want, abs=1e-6)
    assert np.allclose(fine.mean(-1), _strip_cover(union), atol=1e-6)


def test_clip_fine_weight_adds_the_sub_strip_read_out_and_is_off_by_default(tiny_ref):
    cfg = replace(TEST_CFG, clip_steps=3, warmup=1)
    assert "c_fine" not in G.pretrain_clip(tiny_ref, cfg, progress=False)[0]
    hist = G.pretrain_clip(tiny_ref, replace(cfg, clip_fine_weight=20.0), progress=False)
    assert all(h["c_fine"] >= 0 for h in hist)
