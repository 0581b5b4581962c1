"""training: a few steps learn and are reproducible; the shipped trained model segments."""

from __future__ import annotations

import random
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from training import train as cli
from training.checkpoints import init_checkpoint
from training.config import TrainConfig
from training.data import make_sample, make_train_video, target_locations
from training.loop import UNUSED_PREFIXES, seed_everything, trainable_parameters
from training.losses import SegBank
from training.prompts import PromptCache
from training.stages import sample_stage1_expressions, train
from training.steps import AttributePrompt, forward_sample

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "models" / "glus-tiny"

TEST_CFG = TrainConfig(
    shape="test",
    size=(64, 64),
    frames_min=8,
    frames_max=8,
    exprs=3,
    mask_warmup=0,
    warmup=1,
    ckpt_every=0,
    threads=1,
    sam_steps=2,
    sam_memory_from=1,
    sam_exprs=3,
    freeze_sam_steps=1,
    point_until=2,
    encoder_steps=2,
)


def same_weights(dir_a: Path, dir_b: Path) -> bool:
    """Do two training outputs hold bit-identical GLUS weights?"""
    from safetensors.torch import load_file

    wa = load_file(str(Path(dir_a) / "glus" / "model.safetensors"))
    wb = load_file(str(Path(dir_b) / "glus" / "model.safetensors"))
    return all(torch.equal(wa[k], wb[k]) for k in wa)


def _overfit(tmp: Path, steps: int) -> list[float]:
    """`steps` optimiser steps on one fixed sample, from the seeded random init."""
    seed_everything(0)
    ref = init_checkpoint(tmp, "test", 0)
    model = ref.model
    model.train()
    params = [p for n, p in trainable_parameters(model) if not n.startswith(UNUSED_PREFIXES)]
    opt = torch.optim.AdamW(params, lr=2e-3)
    video = make_train_video(7, 0, 8, (64, 64))
    sample = make_sample(np.random.default_rng(0), video, 4, 3)
    prompts, bank = PromptCache(ref.tokenizer), SegBank(64)
    torch.manual_seed(1)
    attr = AttributePrompt(ref.model.sam.hidden_dim, ref.model.sam.sam_prompt_encoder.pe_layer).requires_grad_(False)
    losses = []
    for _ in range(steps):
        out = forward_sample(ref, prompts, sample, TEST_CFG, bank, random.Random(0), point_weight=1.0, prompt=attr)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.parts)
    return losses


def test_training_steps_reduce_every_loss_and_repeat_exactly(tmp_path):
    torch.set_num_threads(1)
    a = _overfit(tmp_path / "a", 12)
    b = _overfit(tmp_path / "b", 12)
    assert [x["loss"] for x in a] == [x["loss"] for x in b]  # same seed, same numbers
    first, last = a[0], a[-1]
    assert last["loss"] < 0.8 * first["loss"]
    for key in ("ce", "bce", "dice", "point"):
        assert last[key] < first[key], key
    assert {"ce", "bce", "dice", "aux", "iou", "con", "seg_acc", "point"} <= set(first)


def test_train_writes_a_loadable_checkpoint_deterministically(tmp_path):
    from safetensors.torch import load_file

    import reference

    cfg = replace(TEST_CFG, steps=3, mask_warmup=1, weights_dtype="float32")
    for name in ("a", "b"):
        train(cfg, tmp_path / name, progress=False)
    wa = load_file(str(tmp_path / "a" / "glus" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "glus" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    init = init_checkpoint(tmp_path / "init", "test", 0)  # training moved the weights
    w0 = load_file(str(init.checkpoint / "model.safetensors"))
    assert any(not torch.equal(w0[k], wa[k]) for k in wa)

    ref = reference.load(tmp_path / "a" / "glus", tmp_path / "a" / "clip")
    video = make_train_video(9, 0, 6, (64, 64))
    res = reference.segment_video(ref, video.frames, video.expressions[0][0])
    assert len(res.masks) == 6 and res.masks[0].shape == (64, 64)
    # the shipped layout: GLUS keys only in glus/, a CLIPModel directory in clip/
    assert not any(k.startswith("model.vision_tower") for k in wa)
    assert (tmp_path / "a" / "clip" / "preprocessor_config.json").is_file()


def _jf(gt: np.ndarray, pred: np.ndarray) -> float:
    from evalkit.metrics import boundary_f, region_similarity

    return (region_similarity(gt, pred) + boundary_f(gt, pred)) / 2


@pytest.mark.skipif(not (SHIPPED / "glus" / "config.json").is_file(), reason="no shipped model")
def test_shipped_model_segments_the_described_object():
    """On a held-out synthetic video, the shipped model beats 'segment every object' by far."""
    import reference
    from training.data import HELDOUT_SEEDS

    torch.set_num_threads(2)
    ref = reference.load(SHIPPED / "glus", SHIPPED / "clip")
    video = make_train_video(HELDOUT_SEEDS[0] + 17, 0, 8, (128, 128))
    everything = np.zeros_like(next(iter(video.objects.values())))
    for m in video.objects.values():
        everything |= m
    single = [(text, ids) for text, ids in video.expressions if len(ids) == 1][:3]
    model_jf, union_jf = [], []
    for text, ids in single:
        res = reference.segment_video(ref, video.frames, text)
        gt = video.target(ids)
        model_jf.append(np.mean([_jf(g, p) for g, p in zip(gt, res.masks)]))
        union_jf.append(np.mean([_jf(g, u) for g, u in zip(gt, everything)]))
    assert np.mean(model_jf) > 0.5
    assert np.mean(model_jf) > np.mean(union_jf) + 0.2


def test_located_scaffold_encodes_where_the_target_is():
    """--locate: the scaffold token = attributes + SAM2's point encoding of the target centre."""
    seed_everything(0)
    from sam2.modeling.position_encoding import PositionEmbeddingRandom

    pe = PositionEmbeddingRandom(128)
    prompt = AttributePrompt(256, pe)
    video = make_train_video(7, 0, 8, (64, 64))
    k = next(i for i, (_, ids) in enumerate(video.expressions) if len(ids) == 1)
    (obj,) = video.expressions[k][1]
    frames = [f for f in range(8) if video.objects[obj][f].any()][:2]
    centres = target_locations(video, [video.expressions[k][1]], frames)
    ys, xs = np.nonzero(video.objects[obj][frames[0]])  # hand-computed centroid, pixel centres
    assert centres[0, 0, 0] == pytest.approx(((xs.mean() + 0.5) / 64, (ys.mean() + 0.5) / 64))
    attrs = [video.attributes[k]]
    base = prompt(attrs)
    tok = prompt(attrs, centres)
    assert tok.shape == (1, 2, 256)
    expect = base[0] + prompt.loc_gain * pe._pe_encoding(torch.from_numpy(centres[0, 0, 0])) + prompt.where.weight[0]
    assert torch.allclose(tok[0, 0], expect, atol=1e-5)
    hidden = np.full_like(centres, np.nan)  # no visible target: the "absent" vector
    assert torch.allclose(prompt(attrs, hidden)[0, 0], base[0] + prompt.where.weight[1], atol=1e-6)
    dropped = prompt(attrs, centres, np.ones((1, 2), bool))  # dropped: attributes only
    assert torch.allclose(dropped[0], base.expand(2, -1), atol=1e-6)
    with pytest.raises(ValueError):
        AttributePrompt(256)(attrs, centres)


def test_stage1_hard_expressions_are_drawn_more_often():
    video = make_train_video(7, 3, 8, (64, 64))
    hard = {i for i in range(len(video.expressions)) if video.needs(i) != "colour"}
    assert hard and len(hard) < len(video.expressions)
    rng_a, rng_b = np.random.default_rng(0), np.random.default_rng(0)
    uniform = sample_stage1_expressions(rng_a, video, 3, 1.0)
    assert uniform == [int(i) for i in rng_b.permutation(len(video.expressions))[:3]]  # the old draw

    def hard_share(weight):
        rng = np.random.default_rng(1)
        picks = [sample_stage1_expressions(rng, video, 3, weight) for _ in range(400)]
        assert all(len(set(p)) == len(p) == 3 for p in picks)
        return np.mean([i in hard for p in picks for i in p])

    assert hard_share(4.0) > hard_share(1.0) + 0.05


def test_train_video_needs_match_the_evaluation_split(tmp_path):
    """TrainVideo.needs (stage-1 logging, hard-expression sampling) = evalkit.heldout's split."""
    import json

    from evalkit import synth
    from evalkit.heldout import expression_needs

    synth.generate(tmp_path, 4, 8, (64, 64), seed=77, split="s")
    needs = expression_needs(tmp_path, "s")
    meta = json.loads((tmp_path / "s" / "synth_meta.json").read_text())
    seen = set()
    for idx, (vid, v) in enumerate(sorted(meta["videos"].items())):
        tv = make_train_video(77, idx, 8, (64, 64))
        assert [e for e, _ in tv.expressions] == [v["expressions"][k]["exp"] for k in sorted(v["expressions"], key=int)]
        got = [tv.needs(i) for i in range(len(tv.expressions))]
        assert got == [needs[(vid, k)] for k in sorted(v["expressions"], key=int)]
        seen |= set(got)
    assert seen == {"colour", "shape", "motion"}


def test_recipe_stands_for_the_shipped_models_flags():
    """--recipe glus-tiny-v4 = R1's command line (TRAINING.md); explicit flags win."""
    _, cfg = cli.parse_args(["--out", "x", "--recipe", "glus-tiny-v4"])
    assert (cfg.shape, cfg.locate, cfg.clip_steps, cfg.clip_fine_weight) == ("small4", True, 12000, 20)
    assert (cfg.ground_steps, cfg.ground_single_steps, cfg.ground_weight, cfg.ground_mix) == (1200, 1200, 20, 10)
    assert (cfg.stage2_llm_scale, cfg.motion_steps, cfg.pointer_from, cfg.motion_context) == (0.1, 2750, 1200, True)
    assert (cfg.motion_stage2_weight, cfg.motion_ground_weight, cfg.pointer_weight) == (1, 20, 1)
    assert (cfg.pointer_stage2_weight, cfg.pointer_below, cfg.sam_steps) == (1, True, 4400)
    assert cfg.contrastive and cfg.memory and cfg.threads == 2
    _, ablation = cli.parse_args(["--out", "x", "--sam-steps", "10", "--recipe", "glus-tiny-v4", "--no-memory"])
    assert ablation == replace(cfg, sam_steps=10, memory=False)
    assert cli.parse_args(["--out", "x", "--recipe", "glus-tiny-v3"])[1] == cli.parse_args(["--out", "x"])[1]
    assert cfg.finetune_steps == 0  # v4 has no stage 3
    _, v5 = cli.parse_args(["--out", "x", "--recipe", "glus-tiny-v5"])
    assert v5 == replace(cfg, finetune_steps=1200, finetune_early=0.5, finetune_lr_scale=0.3)


@settings(max_examples=40, deadline=None)
@given(batch=st.integers(-20, 80), warm=st.integers(-5, 900))
def test_motion_batch_and_mask_warmup_flags(batch, warm):
    """--motion-batch must fill every stage-1c video equally (a multiple of motion_videos, else
    the remainder would be dropped silently); --mask-warmup >= 0; both reach the config."""
    videos = TrainConfig().motion_videos
    argv = ["--out", "x", "--motion-batch", str(batch), "--mask-warmup", str(warm)]
    if batch >= videos and batch % videos == 0 and warm >= 0:
        _, cfg = cli.parse_args(argv)
        assert (cfg.motion_batch, cfg.mask_warmup) == (batch, warm)
    else:
        with pytest.raises(SystemExit):
            cli.parse_args(argv)


def _other_value(f):
    """A valid value of field f other than its default, and how the command line says it."""
    if f.metadata.get("range_to"):
        return (6, 9), "6-9"
    if f.metadata.get("choices"):
        v = next(c for c in f.metadata["choices"] if c != f.default)
        return v, v
    if isinstance(f.default, tuple):
        return (96, 64), "96x64"
    if f.default is None or isinstance(f.default, float):
        v = 0.75 if f.default is None else f.default / 2 + 0.3  # probabilities stay in [0, 1]
        return v, repr(v)
    v = 2 * f.default or 1  # a multiple: --motion-batch must stay a multiple of --motion-videos
    return v, str(v)


def test_every_config_field_is_a_flag_that_sets_that_field_alone():
    """The command line is TrainConfig's fields: each field's flag (named by the field unless its
    metadata says otherwise) sets it and nothing else; booleans flip their default."""
    base = TrainConfig()
    assert cli.parse_args(["--out", "x"])[1] == base
    for f in fields(TrainConfig):
        flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
        if flag is None:
            assert any(g.metadata.get("range_to") == f.name for g in fields(TrainConfig)), f.name
            continue
        assert f.metadata["help"], f.name
        if isinstance(f.default, bool):
            argv, want = [("--no-" + f.name.replace("_", "-")) if f.default else flag], {f.name: not f.default}
        else:
            value, text = _other_value(f)
            assert value != f.default, f.name
            argv = [flag, text]
            want = (
                {f.name: value[0], f.metadata["range_to"]: value[1]} if f.metadata.get("range_to") else {f.name: value}
            )
        assert cli.parse_args(["--out", "x", *argv])[1] == replace(base, **want), argv
