"""training.finetune (stage 3): early query runs, the same numbers from the recipe and from files."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reference.errors import CheckpointError
from training import train as cli
from training.data import make_sample, make_train_video
from training.finetune import finetune
from training.stages import train

from .test_train import TEST_CFG, same_weights

VIDEO = make_train_video(7, 0, 8, (64, 64))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n_query=st.integers(1, 8))
def test_early_prob_zero_draws_what_make_sample_always_drew(seed, n_query):
    """Stage 2 (early_prob 0) must keep its random stream: v4's reproduction depends on it."""
    a = make_sample(np.random.default_rng(seed), VIDEO, n_query, 3)
    rng = np.random.default_rng(seed)
    q = min(n_query, len(VIDEO.frames))
    start = int(rng.integers(0, len(VIDEO.frames) - q + 1))  # the draw, by hand
    assert a.query == list(range(start, start + q))
    b = make_sample(np.random.default_rng(seed), VIDEO, n_query, 3, early_prob=0.0)
    assert (a.query, a.context, a.exprs) == (b.query, b.context, b.exprs)


def test_early_prob_sets_how_often_the_run_starts_at_frame_0():
    rng = np.random.default_rng(0)
    always = [make_sample(rng, VIDEO, 4, 3, early_prob=1.0).query for _ in range(50)]
    assert all(q == [0, 1, 2, 3] for q in always)
    starts = [make_sample(rng, VIDEO, 4, 3, early_prob=0.5).query[0] for _ in range(2000)]
    # 8 frames, 4 query frames: 5 uniform starts, so P(start 0) = 0.5 + 0.5 / 5
    assert np.mean(np.array(starts) == 0) == pytest.approx(0.6, abs=0.04)
    assert set(starts) == set(range(5))


def test_stage3_from_the_recipe_equals_stage3_from_the_saved_files(tmp_path):
    """train() with finetune_steps runs stage 3 on what stage 2 saved: the same weights as
    training without it and fine-tuning the saved directory afterwards (--finetune-from)."""
    torch.set_num_threads(1)
    base = replace(TEST_CFG, steps=2, mask_warmup=1)
    train(replace(base, finetune_steps=3), tmp_path / "chained", progress=False)
    train(base, tmp_path / "stage2", progress=False)
    assert not same_weights(tmp_path / "chained", tmp_path / "stage2")  # stage 3 changed them
    _, hist, _ = finetune(replace(base, finetune_steps=3), tmp_path / "stage2", tmp_path / "resumed", progress=False)
    assert len(hist) == 3 and all(np.isfinite(h["loss"]) for h in hist)
    assert {"ce", "bce", "dice", "start"} <= set(hist[0])
    assert same_weights(tmp_path / "chained", tmp_path / "resumed")
    log = (tmp_path / "chained" / "train_log.json").read_text()
    assert '"finetune_history"' in log


def test_stage3_refuses_a_checkpoint_of_another_shape(tmp_path):
    train(replace(TEST_CFG, steps=1, mask_warmup=1), tmp_path / "a", progress=False)
    with pytest.raises(CheckpointError, match="layers"):
        finetune(replace(TEST_CFG, shape="small4", finetune_steps=1), tmp_path / "a", tmp_path / "b", progress=False)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--finetune-early", "1.5"], "probability"),
        (["--finetune-lr-scale", "0"], "lr-scale"),
        (["--finetune-from", "nowhere"], "needs --finetune-steps"),
    ],
)
def test_cli_refuses_bad_stage3_flags(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--out", str(tmp_path / "o")] + argv)
    said = str(exit_.value.code) + capsys.readouterr().err  # argparse: exit code 2, message on stderr
    assert message in said
    assert not (tmp_path / "o" / "glus").exists()  # refused before any training


def test_cli_names_a_missing_stage3_source(tmp_path):
    with pytest.raises(SystemExit, match="checkpoint directory not found"):
        cli.main(["--out", str(tmp_path / "o"), "--finetune-from", str(tmp_path / "none"), "--finetune-steps", "1"])
