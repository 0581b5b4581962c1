"""Stage 3: GLUS's own training resumed on a saved checkpoint, query runs from the video's start.

At inference the video's first three frames are segmented with windows of one, two and three
frames; stage 2 draws its run of 4 query frames anywhere in the video, so it starts at frame 0
about one sample in nine. On held-out look-alike twins that is where v4 fails: its mask is on
the target in 25 % of frame 0's frames, 34 % / 47 % at frames 1 / 2, ~70 % in mid-video
(benchmarks/results/failmodes-glus-tiny-v4.md). This stage trains every part with GLUS's losses
(token CE with [SEG], mask BCE + Dice through the memory bank, the object contrastive loss),
the run starting at frame 0 with probability `finetune_early`, at `finetune_lr_scale` times
stage 2's rates, on videos no earlier stage drew. Measured (models/glus-tiny/TRAINING.md):
on v4, 600 steps give held-out J&F 0.7953 -> 0.8071 and 1200 steps (v5) 0.8176; a control with
uniform starts did as well as the early ones, and the twins' early-frame merges the early starts
were aimed at did not go away.

It starts from the saved files (fp16 weights read back as fp32) and uses nothing that is not
in them (stage 1c's heads and the scaffold token are not saved), so `--finetune-from DIR` and
a recipe that runs it right after stage 2 start from the same numbers.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np
import torch

from reference.errors import CheckpointError
from reference.loader import load

from .checkpoints import save_checkpoint
from .config import TRAIN_SHAPES, TrainConfig
from .data import make_sample, make_train_video
from .loop import (
    UNUSED_PREFIXES,
    Progress,
    lr_at,
    seed_everything,
    trainable_parameters,
)
from .prompts import PromptCache
from .steps import forward_sample

DATA_SEED_OFFSET = 1100  # of cfg.train_data_seed; stages 0b/1/1b/1c use +700/+500/+800/+900, stage 2 +0


def _check_shape(ref, shape_name: str) -> None:
    want = TRAIN_SHAPES[shape_name]["llama"]
    have = ref.model.llm.config
    if (have.num_hidden_layers, have.hidden_size) != (want["num_hidden_layers"], want["hidden_size"]):
        raise CheckpointError(
            f"{ref.checkpoint}: an LLM of {have.num_hidden_layers} layers x {have.hidden_size}, but --shape "
            f"{shape_name} says {want['num_hidden_layers']} x {want['hidden_size']} (give the recipe's flags)"
        )


def finetune(
    cfg: TrainConfig,
    src: str | Path,
    out: str | Path,
    *,
    progress: bool = True,
    log=None,
    vision_tower: str | None = None,
):
    """Load SRC/glus + SRC/clip, train cfg.finetune_steps steps, save OUT/glus + OUT/clip.
    Returns (ref, history, seconds)."""
    torch.set_num_threads(cfg.threads)
    src, out = Path(src), Path(out)
    ref = load(src / "glus", src / "clip")
    _check_shape(ref, cfg.shape)
    seed_everything(cfg.seed + 31)
    model = ref.model
    model.train()
    named = [(n, p) for n, p in trainable_parameters(model) if not n.startswith(UNUSED_PREFIXES)]
    params = [p for _, p in named]
    body = ("llm.", "mm_projector", "clip.")
    s = cfg.finetune_lr_scale
    groups = [
        {"params": [p for n, p in named if n.startswith("sam.")], "peak": cfg.lr * s},
        {"params": [p for n, p in named if n.startswith(body)], "peak": cfg.llm_lr * cfg.stage2_llm_scale * s},
        {"params": [p for n, p in named if not n.startswith(("sam.",) + body)], "peak": cfg.llm_lr * s},
    ]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    prompts = PromptCache(ref.tokenizer)
    data_rng = np.random.default_rng(cfg.seed + 37)
    py_rng = random.Random(cfg.seed + 37)
    history = []
    bar = Progress(cfg.finetune_steps, "finetune", progress, log)
    t0 = time.time()
    warmup = min(cfg.warmup, max(1, cfg.finetune_steps // 10))
    for step in range(cfg.finetune_steps):
        n_frames = int(data_rng.integers(cfg.frames_min, cfg.frames_max + 1))
        video = make_train_video(cfg.train_data_seed + DATA_SEED_OFFSET, step, n_frames, cfg.size)
        sample = make_sample(
            data_rng, video, cfg.n_query, cfg.exprs, cfg.exact_context_prob, early_prob=cfg.finetune_early
        )
        for g in opt.param_groups:
            g["lr"] = lr_at(step, g["peak"], warmup, cfg.finetune_steps, cfg.min_lr_frac)
        res = forward_sample(ref, prompts, sample, cfg, None, py_rng, masks_on=True)
        opt.zero_grad(set_to_none=True)
        res.loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        parts = dict(
            res.parts,
            start=sample.query[0],
            gnorm=float(gn),
            lr=opt.param_groups[0]["lr"],
            step=step,
            t=round(time.time() - t0, 1),
        )
        history.append(parts)
        bar.update(step, parts)
    bar.close()
    model.eval()
    seconds = time.time() - t0
    save_checkpoint(ref, out, cfg.shape, cfg.weights_dtype, vision_tower)
    return ref, history, seconds


def add_finetune_log(log_path: Path, history: list[dict], seconds: float, src: str | None = None) -> None:
    d = json.loads(log_path.read_text()) if log_path.is_file() else {}
    d.update(
        finetune_history=history,
        finetune_seconds=round(seconds, 1),
        **({"finetune_from": src} if src is not None else {}),
    )
    log_path.write_text(json.dumps(d))
