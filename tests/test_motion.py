"""reference.motion (stage 1c): per-token motion labels, where image tokens sit in a prompt, the
token loss and picks, and the stage inside train()."""

from dataclasses import replace
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from evalkit import synth
from reference import motion as M
from reference import rules
from reference import train as T
from reference.dense_aux import IGNORE
from reference.train_data import make_train_video

from .test_grounding import _strip_cover
from .test_train import TEST_CFG, same_weights


@pytest.fixture(scope="module")
def tiny_ref(tmp_path_factory):
    T.seed_everything(0)
    return T.init_checkpoint(tmp_path_factory.mktemp("tiny"), "test", 0)


@settings(max_examples=8, deadline=None)
@given(index=st.integers(0, 10_000), frame=st.integers(0, 7))
def test_motion_labels_name_the_video_level_motion_of_the_object_covering_each_strip(index, frame):
    video = make_train_video(4, index, 8, (128, 128))
    labels = M.motion_token_labels(video, [frame]).numpy()[0]
    meta = {o["obj_id"]: o for o in video.objects_meta}
    covers = {o: _strip_cover(video.objects[o][frame].astype(np.float64)) for o in video.objects}
    total = sum(covers.values())
    for k in range(64):
        owner = [o for o, c in covers.items() if c[k] >= 0.5]
        if owner:
            assert labels[k] == list(synth.MOTIONS).index(meta[owner[0]]["motion"]) + 1
        elif total[k] < 0.2:
            assert labels[k] == 0
        else:
            assert labels[k] == IGNORE


@settings(max_examples=10, deadline=None)
@given(rounds=st.integers(1, rules.NUM_QUERY), expr=st.sampled_from(["the red circle", "the object moving up"]))
def test_image_offsets_point_at_each_frames_tokens_in_the_embedded_prompt(tiny_ref, rounds, expr):
    """GLUS's whole prompt (prefix + window): the 64 rows at each offset are that image's tokens."""
    prompts = T.PromptCache(tiny_ref.tokenizer)
    ids = prompts.prefix_ids() + prompts.get(expr, rounds)[0]
    n = rules.NUM_CONTEXT + rounds
    images = torch.randn(n, rules.TOKENS_PER_IMAGE, tiny_ref.model.llm.config.hidden_size)
    with torch.no_grad():
        emb = tiny_ref.model.embed_prompt(ids, images)[0]
    offsets = M.image_offsets(ids)
    assert len(offsets) == n
    for k, s in enumerate(offsets):
        assert torch.equal(emb[s:s + rules.TOKENS_PER_IMAGE], images[k])
    assert emb.shape[0] == len(ids) + n * (rules.TOKENS_PER_IMAGE - 1)


def test_token_loss_is_the_cross_entropy_over_object_tokens_only():
    torch.manual_seed(0)
    head = M.MotionTokenHead(6)
    tokens = torch.randn(2, 64, 6)
    labels = torch.zeros(2, 64, dtype=torch.long)
    labels[0, 3], labels[0, 10], labels[1, 5] = 2, 7, 4
    labels[1, 6] = IGNORE
    loss, parts = head.loss(tokens, labels)
    picked = [(0, 3, 2), (0, 10, 7), (1, 5, 4)]
    logp = torch.stack([head.fc(tokens[b, k]).log_softmax(-1)[y] for b, k, y in picked])
    assert loss.item() == pytest.approx(-logp.mean().item(), rel=1e-6)
    right = np.mean([int(head.fc(tokens[b, k]).argmax()) == y for b, k, y in picked])
    assert parts["t_acc"] == pytest.approx(right)
    none, parts = head.loss(tokens, torch.zeros(2, 64, dtype=torch.long))
    assert none.item() == 0 and parts == {}


def test_pick_counts_a_point_only_when_nearer_the_target_than_every_other_object():
    target = np.array([0.2, 0.2])
    others = np.array([[0.8, 0.8], [0.3, 0.3], [np.nan, np.nan]])
    assert M.nearest_pick(np.array([0.21, 0.2]), target, others) == 1.0
    assert M.nearest_pick(np.array([0.29, 0.29]), target, others) == 0.0  # nearer the second object
    assert np.isnan(M.nearest_pick(np.array([0.2, 0.2]), np.array([np.nan, np.nan]), others))
    parts = M.pick_parts(np.array([[0.21, 0.2], [0.29, 0.29]]), np.stack([target, target]),
                         np.array([[0.8, 0.8], [0.3, 0.3]]), [others, others], ["colour", "motion"])
    assert parts == {"p_colour": 1.0, "p_motion": 0.0, "p_pair_motion": 0.0}


def test_motion_draws_weight_motion_expressions_and_keep_visible_single_targets():
    video = next(v for v in (make_train_video(9, i, 8, (64, 64)) for i in range(50))
                 if any(v.needs(i) == "motion" for i in range(len(v.expressions)))
                 and any(v.needs(i) != "motion" for i in range(len(v.expressions))))
    share = {}
    for w in (1.0, 10.0):
        draws = M.motion_draws(np.random.default_rng(0), video, 400, w)
        assert draws and all(len(video.expressions[i][1]) == 1 and video.objects[video.expressions[i][1][0]][t].any()
                             for i, t in draws)
        share[w] = np.mean([video.needs(i) == "motion" for i, _ in draws])
    assert share[10.0] > share[1.0]


def test_stage_1c_learns_the_token_motion_of_a_fixed_batch(tiny_ref):
    """Steps on one batch (the same draws each time) bring the token loss well down."""
    model = tiny_ref.model
    cfg = replace(TEST_CFG, motion_videos=2, motion_batch=4)
    ground, head = M.GroundingHead(model.llm.config.hidden_size), M.MotionTokenHead(model.llm.config.hidden_size)
    params = list(model.llm.parameters()) + list(model.mm_projector.parameters())
    opt = torch.optim.AdamW(params + list(ground.parameters()) + list(head.parameters()), lr=3e-3)
    prompts = T.PromptCache(tiny_ref.tokenizer)
    ce = []
    for _ in range(40):
        loss, parts = M.motion_step_loss(tiny_ref, cfg, ground, head, np.random.default_rng(0), prompts, video_index=0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ce.append(parts["t_ce"])
    assert np.mean(ce[-5:]) < 0.5 * np.mean(ce[:3])


def test_stage_1c_and_the_stage2_token_loss_run_inside_train_and_repeat_exactly(tmp_path):
    cfg = replace(TEST_CFG, steps=2, mask_warmup=1, weights_dtype="float32", clip_steps=2,
                  motion_steps=3, motion_videos=2, motion_batch=4, motion_stage2_weight=1.0)
    for name in ("a", "b"):
        T.train(cfg, tmp_path / name, progress=False)
    assert same_weights(tmp_path / "a", tmp_path / "b")
    log = json.loads((tmp_path / "a" / "train_log.json").read_text())
    assert len(log["motion_history"]) == 3 and {"t_ce", "t_acc", "g_mse"} <= set(log["motion_history"][0])
    assert all("t_ce" in h for h in log["history"])  # the token loss stays on in stage 2


def test_stage2_from_a_snapshot_keeps_the_motion_head(tmp_path):
    """--keep-stage1 saves the token head; --from-stage1 restarts stage 2 with it, bit for bit."""
    cfg = replace(TEST_CFG, steps=2, mask_warmup=1, weights_dtype="float32", clip_steps=1,
                  motion_steps=2, motion_videos=2, motion_batch=4, motion_stage2_weight=1.0)
    T.train(replace(cfg, keep_stage1=True), tmp_path / "full", progress=False)
    T.train(cfg, tmp_path / "resumed", progress=False, from_stage1=tmp_path / "full" / "stage1.pt")
    assert same_weights(tmp_path / "full", tmp_path / "resumed")
