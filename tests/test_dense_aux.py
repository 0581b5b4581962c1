"""training.dense_aux (stage-1 experiment): labels match hand-computed cases; the losses train."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from evalkit import synth
from training.checkpoints import init_checkpoint
from training.config import TrainConfig
from training.data import TrainVideo, make_train_video
from training.dense_aux import (
    IGNORE,
    VELOCITIES,
    DenseAttributeHead,
    dense_labels,
    velocity_class,
)
from training.stages import pretrain_encoder
from training.steps import AttributePrompt, forward_sam_attr


@pytest.mark.parametrize(
    "step, want",
    [
        ((0, 0), "still"),
        ((0.2, -0.3), "still"),
        ((-3, 1), "left"),
        ((2, 1), "right"),
        ((1, -4), "up"),
        ((0.5, 2), "down"),
    ],
)
def test_velocity_class_is_the_dominant_direction_with_image_y_down(step, want):
    traj = np.array([[50.0, 50.0], [50.0 + step[0], 50.0 + step[1]], [60.0, 40.0]])
    assert VELOCITIES[velocity_class(traj, 1)] == want
    assert velocity_class(traj, 0) == velocity_class(traj, 1)  # frame 0 reads the first step


@settings(max_examples=25, deadline=None)
@given(x=st.integers(0, 40), y=st.integers(0, 40), side=st.integers(8, 24), grid=st.sampled_from([4, 8, 16]))
def test_dense_labels_of_one_square(x, y, side, grid):
    """One square object: its cells carry its attributes, cells it does not touch are
    background, mixed cells are ignored, and nothing else appears."""
    h = w = 64
    mask = np.zeros((2, h, w), bool)
    mask[:, y : y + side, x : x + side] = True
    meta = [
        {
            "obj_id": 1,
            "colour": "blue",
            "shape": "square",
            "motion": "still",
            "trajectory": [[x + side / 2, y + side / 2]] * 2,
        }
    ]
    video = TrainVideo("v", [np.zeros((h, w, 3), np.uint8)] * 2, {1: mask}, [], (1, 2), [], meta)
    lab = dense_labels(video, [0, 1], grid)
    assert lab.shape == (3, 2, grid, grid)
    cell = h // grid
    cover = mask[0].reshape(grid, cell, grid, cell).mean(axis=(1, 3))
    want = {
        0: list(synth.COLOURS).index("blue") + 1,
        1: list(synth.SHAPES).index("square") + 1,
        2: VELOCITIES.index("still") + 1,
    }
    for k, v in want.items():
        assert np.all(lab[k][:, cover >= 0.5] == v)
        assert np.all(lab[k][:, cover < 0.2] == 0)
        assert np.all(lab[k][:, (cover >= 0.2) & (cover < 0.5)] == IGNORE)


def test_dense_labels_follow_a_real_video():
    video = make_train_video(7, 3, 8, (64, 64))
    lab = dense_labels(video, [2, 3], 16)
    for o in video.objects_meta:  # every object fully covering a cell is labelled with its colour
        m = video.objects[o["obj_id"]][2].reshape(16, 4, 16, 4).mean(axis=(1, 3)) == 1.0
        assert np.all(lab[0, 0][m] == list(synth.COLOURS).index(o["colour"]) + 1)


def test_stage1_with_dense_supervision_trains_every_head(tmp_path):
    """A few stage-1 steps with --dense-weight: the loss reaches all three classifiers (velocity
    through the memory-conditioned features) and the image encoder."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    ref = init_checkpoint(tmp_path, "test", 0)
    cfg = replace(
        TrainConfig(shape="test", size=(64, 64), frames_min=8, frames_max=8, sam_exprs=3, threads=1), dense_weight=1.0
    )
    prompt = AttributePrompt(ref.model.sam.hidden_dim)
    head = DenseAttributeHead(ref.model.sam.hidden_dim)
    video = make_train_video(7, 0, 8, (64, 64))
    out = forward_sam_attr(ref, video, [0, 1, 2, 3], [0, 1, 2], cfg, prompt, None, head)
    out.loss.backward()
    for lin in (head.colour, head.shape, head.velocity):
        assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0
    enc = next(p for n, p in ref.model.named_parameters() if n.startswith("sam.image_encoder"))
    assert enc.grad is not None and enc.grad.abs().sum() > 0
    assert {"d_col", "d_shape", "d_vel"} <= set(out.parts)


def test_stage0_trains_only_the_image_encoder(tmp_path):
    """--encoder-steps: the image encoder and the head move, the rest of SAM2 does not."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    ref = init_checkpoint(tmp_path, "test", 0)
    model = ref.model
    cfg = replace(
        TrainConfig(shape="test", size=(64, 64), frames_min=8, frames_max=8, threads=1), encoder_steps=3, warmup=1
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    head = DenseAttributeHead(model.sam.hidden_dim)
    hist = pretrain_encoder(model, head, cfg, progress=False)
    assert [h["step"] for h in hist] == [0, 1, 2] and all(np.isfinite(h["loss"]) for h in hist)
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved and all(n.startswith("sam.image_encoder.") for n in moved)
