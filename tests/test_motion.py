"""training.motion (stage 1c): per-token motion labels, where image tokens sit in a prompt, the
token loss and picks, and the stage inside train()."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from evalkit import synth
from runtime import rules
from training import motion as M
from training.checkpoints import init_checkpoint
from training.config import TRAIN_SHAPES
from training.data import make_train_video
from training.dense_aux import IGNORE
from training.loop import seed_everything
from training.prompts import PromptCache
from training.stages import train

from .test_grounding import _strip_cover
from .test_train import TEST_CFG, same_weights


@pytest.fixture(scope="module")
def tiny_ref(tmp_path_factory):
    seed_everything(0)
    return init_checkpoint(tmp_path_factory.mktemp("tiny"), "test", 0)


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
    prompts = PromptCache(tiny_ref.tokenizer)
    ids = prompts.prefix_ids() + prompts.get(expr, rounds)[0]
    n = rules.NUM_CONTEXT + rounds
    images = torch.randn(n, rules.TOKENS_PER_IMAGE, tiny_ref.model.llm.config.hidden_size)
    with torch.no_grad():
        emb = tiny_ref.model.embed_prompt(ids, images)[0]
    offsets = M.image_offsets(ids)
    assert len(offsets) == n
    for k, s in enumerate(offsets):
        assert torch.equal(emb[s : s + rules.TOKENS_PER_IMAGE], images[k])
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
    parts = M.pick_parts(
        np.array([[0.21, 0.2], [0.29, 0.29]]),
        np.stack([target, target]),
        np.array([[0.8, 0.8], [0.3, 0.3]]),
        [others, others],
        ["colour", "motion"],
    )
    assert parts == {"p_colour": 1.0, "p_motion": 0.0, "p_pair_motion": 0.0}


def test_motion_draws_weight_motion_expressions_and_keep_visible_single_targets():
    video = next(
        v
        for v in (make_train_video(9, i, 8, (64, 64)) for i in range(50))
        if any(v.needs(i) == "motion" for i in range(len(v.expressions)))
        and any(v.needs(i) != "motion" for i in range(len(v.expressions)))
    )
    share = {}
    for w in (1.0, 10.0):
        draws = M.motion_draws(np.random.default_rng(0), video, 400, w)
        assert draws and all(
            len(video.expressions[i][1]) == 1 and video.objects[video.expressions[i][1][0]][t].any() for i, t in draws
        )
        share[w] = np.mean([video.needs(i) == "motion" for i, _ in draws])
    assert share[10.0] > share[1.0]


def test_stage_1c_learns_the_token_motion_of_a_fixed_batch(tiny_ref):
    """Steps on one batch (the same draws each time) bring the token loss well down."""
    model = tiny_ref.model
    cfg = replace(TEST_CFG, motion_videos=2, motion_batch=4)
    ground, head = M.GroundingHead(model.llm.config.hidden_size), M.MotionTokenHead(model.llm.config.hidden_size)
    params = list(model.llm.parameters()) + list(model.mm_projector.parameters())
    opt = torch.optim.AdamW(params + list(ground.parameters()) + list(head.parameters()), lr=3e-3)
    prompts = PromptCache(tiny_ref.tokenizer)
    ce = []
    for _ in range(40):
        loss, parts = M.motion_step_loss(tiny_ref, cfg, ground, head, np.random.default_rng(0), prompts, video_index=0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ce.append(parts["t_ce"])
    assert np.mean(ce[-5:]) < 0.5 * np.mean(ce[:3])


def test_stage_1c_and_the_stage2_token_loss_run_inside_train_and_repeat_exactly(tmp_path):
    cfg = replace(
        TEST_CFG,
        steps=2,
        mask_warmup=1,
        weights_dtype="float32",
        clip_steps=2,
        motion_steps=3,
        motion_videos=2,
        motion_batch=4,
        motion_stage2_weight=1.0,
    )
    for name in ("a", "b"):
        train(cfg, tmp_path / name, progress=False)
    assert same_weights(tmp_path / "a", tmp_path / "b")
    log = json.loads((tmp_path / "a" / "train_log.json").read_text())
    assert len(log["motion_history"]) == 3 and {"t_ce", "t_acc", "g_mse"} <= set(log["motion_history"][0])
    assert all("t_ce" in h for h in log["history"])  # the token loss stays on in stage 2


def test_stage2_from_a_snapshot_keeps_the_motion_head(tmp_path):
    """--keep-stage1 saves the token head; --from-stage1 restarts stage 2 with it, bit for bit."""
    cfg = replace(
        TEST_CFG,
        steps=2,
        mask_warmup=1,
        weights_dtype="float32",
        clip_steps=1,
        motion_steps=2,
        motion_videos=2,
        motion_batch=4,
        motion_stage2_weight=1.0,
    )
    train(replace(cfg, keep_stage1=True), tmp_path / "full", progress=False)
    train(cfg, tmp_path / "resumed", progress=False, from_stage1=tmp_path / "full" / "stage1.pt")
    assert same_weights(tmp_path / "full", tmp_path / "resumed")


def test_token_accuracy_is_reported_apart_for_query_and_context_images():
    torch.manual_seed(1)
    head = M.MotionTokenHead(6)
    tokens = torch.randn(3, 64, 6)
    labels = torch.zeros(3, 64, dtype=torch.long)
    labels[0, :5], labels[1, 7:9], labels[2, 20:24] = 1, 3, 6
    is_query = torch.tensor([True, False, True])
    _, parts = head.loss(tokens, labels, is_query)
    pred = head.fc(tokens).argmax(-1)
    right = (pred == labels) & (labels > 0)
    assert parts["t_acc"] == pytest.approx((right[0].sum() + right[2].sum()).item() / 9)
    assert parts["t_acc_ctx"] == pytest.approx(right[1].sum().item() / 2)


@pytest.mark.parametrize("layers,expected", [(1, (1, 1)), (2, (1, 1)), (4, (1, 2)), (8, (2, 4))])
def test_context_images_are_read_below_or_at_the_query_images_layer(layers, expected):
    class Cfg:
        num_hidden_layers = layers

    class Model:
        llm = type("L", (), {"config": Cfg})

    assert M.motion_layers(Model) == expected


def test_motion_context_asks_context_frames_2_to_4_at_the_lower_layer(tmp_path, monkeypatch):
    """With motion_context, the head also gets context frames 2-4 (not the first), their labels,
    read from the hidden state after layer 1 of a 4-layer LLM; query frames after layer 2."""
    monkeypatch.setitem(
        TRAIN_SHAPES,
        "test4",
        {**TRAIN_SHAPES["test"], "llama": dict(TRAIN_SHAPES["test"]["llama"], num_hidden_layers=4)},
    )
    seed_everything(0)
    ref = init_checkpoint(tmp_path, "test4", 0)
    ctx = [0, 2, 4, 6]
    monkeypatch.setattr(M, "context_frames", lambda rng, n, p: list(ctx))
    videos = []
    real_video = M.make_train_video
    monkeypatch.setattr(M, "make_train_video", lambda *a: videos.append(real_video(*a)) or videos[-1])
    hidden, seen = [], {}
    ref.model.llm.model.register_forward_hook(lambda m, i, out: hidden.append(out.hidden_states))
    head = M.MotionTokenHead(ref.model.llm.config.hidden_size)
    real_loss = head.loss
    head.loss = lambda tokens, labels, is_query=None: (
        seen.update(t=tokens, y=labels, q=is_query) or real_loss(tokens, labels, is_query)
    )
    cfg = replace(TEST_CFG, frames_min=8, frames_max=8, motion_videos=1, motion_batch=3, motion_context=True)
    _, parts = M.motion_step_loss(
        ref,
        cfg,
        M.GroundingHead(ref.model.llm.config.hidden_size),
        head,
        np.random.default_rng(0),
        PromptCache(ref.tokenizer),
        video_index=0,
    )
    assert "t_acc_ctx" in parts or not (seen["y"][~seen["q"]] > 0).any()
    q = seen["q"]
    prefix_hs, cont_hs = hidden  # one prefill of the video's shared prefix, then the continuations
    n_prompts = len(cont_hs[0])
    assert len(prefix_hs[0]) == 1 and (~q).sum() == 3 * n_prompts
    want = M.motion_token_labels(videos[0], ctx[1:])
    ctx_rows = torch.nonzero(~q).flatten()
    for j, k in enumerate(ctx_rows):
        assert torch.equal(seen["y"][k], want[j % 3])

    def found_at(hs, row, layer):
        return any(
            torch.equal(row, hs[layer][b, s : s + 64])
            for b in range(len(hs[layer]))
            for s in range(hs[layer].shape[1] - 63)
        )

    assert found_at(prefix_hs, seen["t"][ctx_rows[0]], 1) and not found_at(prefix_hs, seen["t"][ctx_rows[0]], 2)
    first_query = torch.nonzero(q).flatten()[0]
    assert found_at(cont_hs, seen["t"][first_query], 2) and not found_at(cont_hs, seen["t"][first_query], 1)


# --- the pointer: the pick as a CE over the current frame's tokens ---------------
def test_pointer_loss_is_minus_log_of_the_targets_summed_probability():
    logits = torch.tensor([[2.0, 0.0, 1.0, -1.0], [0.0, 3.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    tm = torch.tensor([[True, False, True, False], [True, False, False, False], [False] * 4])
    pm = torch.tensor([[False, True, False, False], [False, True, False, False], [True] + [False] * 3])
    loss, parts = M.pointer_loss(logits, tm, pm, ["colour", "motion", "motion"])
    p0 = (np.exp(2) + np.exp(1)) / (np.exp(2) + 1 + np.exp(1) + np.exp(-1))
    p1 = 1 / (3 + np.exp(3))
    assert loss.item() == pytest.approx(-(np.log(p0) + np.log(p1)) / 2, rel=1e-5)  # row 2: no target token
    # row 0's top token is the target's; row 1's is the look-alike's, which wins the pair too
    assert parts["ptr_colour"] == 1.0 and parts["ptr_motion"] == 0.0 and parts["ptr_pair_motion"] == 0.0


@settings(max_examples=6, deadline=None)
@given(index=st.integers(0, 10_000), frame=st.integers(0, 7))
def test_pointer_masks_are_the_target_and_look_alike_strips(index, frame):
    video = make_train_video(11, index, 8, (128, 128))
    owners = M.cell_owners(video, [frame], (16, 4)).reshape(-1)
    for _, ids in video.expressions:
        tm, pm = M.pointer_masks(video, M.token_owners(video, [frame])[0], ids)
        assert np.array_equal(tm, np.isin(owners, ids))
        other = M.look_alike(video, ids)
        assert np.array_equal(pm, owners == other) if other is not None else not pm.any()
        assert not (tm & pm).any()


def test_pointer_runs_in_stage_1c_and_stage_2_and_its_head_survives_the_snapshot(tmp_path):
    cfg = replace(
        TEST_CFG,
        steps=2,
        mask_warmup=1,
        weights_dtype="float32",
        clip_steps=1,
        motion_steps=2,
        motion_videos=2,
        motion_batch=4,
        pointer_weight=1.0,
        pointer_stage2_weight=1.0,
    )
    train(replace(cfg, keep_stage1=True), tmp_path / "full", progress=False)
    log = json.loads((tmp_path / "full" / "train_log.json").read_text())
    assert all("ptr" in h for h in log["motion_history"]) and all("ptr" in h for h in log["history"])
    assert torch.load(tmp_path / "full" / "stage1.pt", weights_only=False)["pointer"] is not None
    train(cfg, tmp_path / "resumed", progress=False, from_stage1=tmp_path / "full" / "stage1.pt")
    assert same_weights(tmp_path / "full", tmp_path / "resumed")


def test_pointer_is_off_by_default(tmp_path):
    cfg = replace(
        TEST_CFG,
        steps=1,
        mask_warmup=1,
        weights_dtype="float32",
        motion_steps=1,
        motion_videos=2,
        motion_batch=4,
        keep_stage1=True,
    )
    train(cfg, tmp_path / "a", progress=False)
    assert torch.load(tmp_path / "a" / "stage1.pt", weights_only=False)["pointer"] is None
    log = json.loads((tmp_path / "a" / "train_log.json").read_text())
    assert not any("ptr" in h for h in log["motion_history"] + log["history"])


def test_pointer_below_reads_the_input_of_the_last_layer(tiny_ref, monkeypatch):
    """With pointer_below the pointer gets hidden_states[-2] (before the last layer), else the last."""
    model = tiny_ref.model
    D = model.llm.config.hidden_size
    seen = {}

    class Spy(M.PointerHead):
        def forward(self, seg, tokens):
            seen["seg"] = seg.detach().clone()
            return super().forward(seg, tokens)

    real = model.llm.model.forward

    def spy_llm(*a, **kw):
        out = real(*a, **{**kw, "output_hidden_states": True})
        seen["hs"] = [h.detach() for h in out.hidden_states]
        return out

    monkeypatch.setattr(model.llm.model, "forward", spy_llm)
    for below, layer in ((False, -1), (True, -2)):
        cfg = replace(TEST_CFG, motion_videos=1, motion_batch=2, pointer_weight=1.0, pointer_below=below)
        out = M.motion_step_loss(
            tiny_ref,
            cfg,
            M.GroundingHead(D),
            M.MotionTokenHead(D),
            np.random.default_rng(3),
            PromptCache(tiny_ref.tokenizer),
            video_index=0,
            pointer=Spy(D),
        )
        assert out is not None
        hs = seen["hs"][layer]
        assert any(torch.allclose(seen["seg"][0], hs[0, i]) for i in range(hs.shape[1]))
        assert not any(
            torch.allclose(seen["seg"][0], seen["hs"][-1 if below else -2][0, i]) for i in range(hs.shape[1])
        )


def test_motion_ground_weight_scales_the_centre_term_of_stage_1c(tiny_ref):
    """loss(w) - loss(1) = (w - 1) x the centre MSE, the other terms and draws unchanged."""
    model = tiny_ref.model
    D = model.llm.config.hidden_size
    torch.manual_seed(0)
    ground, head = M.GroundingHead(D), M.MotionTokenHead(D)
    out = {}
    for w in (1.0, 5.0):
        cfg = replace(TEST_CFG, motion_videos=1, motion_batch=2, motion_ground_weight=w)
        out[w] = M.motion_step_loss(
            tiny_ref, cfg, ground, head, np.random.default_rng(4), PromptCache(tiny_ref.tokenizer), video_index=0
        )
    assert out[5.0][1]["g_mse"] == out[1.0][1]["g_mse"]
    assert (out[5.0][0] - out[1.0][0]).item() == pytest.approx(4 * out[1.0][1]["g_mse"], rel=1e-4)


def test_shared_prefix_forward_equals_running_every_whole_prompt(tiny_ref):
    """Stage 1c's one prefill per video + continuations over its cache = each whole prompt run alone."""
    llm = tiny_ref.model.llm.model
    D = tiny_ref.model.llm.config.hidden_size
    g = torch.Generator().manual_seed(0)
    prefixes = torch.randn(2, 7, D, generator=g)
    conts = [torch.randn(n, D, generator=g) for n in (3, 5, 1)]
    video_of = [1, 0, 1]
    with torch.no_grad():
        pre, out, lengths = M.shared_prefix_forward(llm, prefixes, video_of, conts, prefix_hidden=True)
        assert lengths == [3, 5, 1]
        for b, (v, c) in enumerate(zip(video_of, conts)):
            whole = llm(inputs_embeds=torch.cat([prefixes[v], c])[None], output_hidden_states=True)
            for layer, h in enumerate(whole.hidden_states):
                torch.testing.assert_close(out.hidden_states[layer][b, : len(c)], h[0, 7:], atol=1e-5, rtol=1e-4)
                torch.testing.assert_close(pre.hidden_states[layer][v], h[0, :7], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(
                out.last_hidden_state[b, : len(c)], whole.last_hidden_state[0, 7:], atol=1e-5, rtol=1e-4
            )


def test_pointer_from_splits_stage_1c_into_a_token_phase_and_a_pointer_phase(tmp_path, monkeypatch):
    """pointer_from K: K steps without the pointer, centre x1; then the pointer and the centre x
    motion_ground_weight, with its own warm-up (a second run_stage); steps numbered on."""
    calls = []
    real = M.run_stage

    def spy(params, clipped, step_loss, cfg, *, steps, **kw):
        if kw["desc"].startswith("motion"):
            calls.append((steps, cfg.motion_ground_weight, len(params)))
        return real(params, clipped, step_loss, cfg, steps=steps, **kw)

    monkeypatch.setattr(M, "run_stage", spy)
    cfg = replace(
        TEST_CFG,
        steps=0,
        sam_steps=0,
        encoder_steps=0,
        weights_dtype="float32",
        motion_steps=3,
        motion_videos=2,
        motion_batch=4,
        pointer_weight=1.0,
        pointer_from=2,
        motion_ground_weight=7.0,
    )
    train(cfg, tmp_path / "a", progress=False)
    log = json.loads((tmp_path / "a" / "train_log.json").read_text())["motion_history"]
    assert [h["step"] for h in log] == [0, 1, 2]
    assert ["ptr" in h for h in log] == [False, False, True]
    (n1, w1, p1), (n2, w2, p2) = calls
    assert (n1, w1, n2, w2) == (2, 1.0, 1, 7.0) and p2 == p1 + 4  # + the pointer's 2 weights, 2 biases


@pytest.mark.parametrize("start", [-1, 3, 5])
def test_pointer_from_outside_stage_1c_is_refused(tiny_ref, start):
    D = tiny_ref.model.llm.config.hidden_size
    cfg = replace(TEST_CFG, motion_steps=3, pointer_weight=1.0, pointer_from=start)
    with pytest.raises(ValueError, match="pointer_from"):
        M.pretrain_motion(
            tiny_ref, cfg, M.GroundingHead(D), M.MotionTokenHead(D), progress=False, pointer=M.PointerHead(D)
        )
