"""The optimisation loop the stages share: which parameters train, the learning-rate schedule,
seeding, the progress bar and log, and the loop of the pretraining stages."""

from __future__ import annotations

import math
import random

import numpy as np
import torch
from tqdm import tqdm

from .config import TrainConfig
from .data import make_train_video


def trainable_parameters(model):
    """Every parameter but the fuser layer scales GLUS's loader never loads (kept at 1e-6)."""
    params = []
    for name, p in model.named_parameters():
        if name.startswith("sam.memory_encoder.fuser.layers.") and name.endswith(".gamma"):
            p.requires_grad_(False)
            continue
        # SAM2 parts GLUS never runs (object pointers, temporal encodings, occlusion, mask input
        # path) get no gradient anyway; leave them out of the optimizer.
        params.append((name, p))
    return params


UNUSED_PREFIXES = (
    "sam.obj_ptr_proj",
    "sam.obj_ptr_tpos_proj",
    "sam.maskmem_tpos_enc",
    "sam.no_obj_ptr",
    "sam.no_obj_embed_spatial",
    "sam.mask_downsample",
    "sam.sam_prompt_encoder.point_embeddings",
    "sam.sam_prompt_encoder.not_a_point_embed",
    "sam.sam_prompt_encoder.mask_downscaling",
    "sam.no_mem_pos_enc",
    "sam.sam_mask_decoder.pred_obj_score_head",
    "sam.sam_mask_decoder.obj_score_token",
)


def lr_at(step: int, peak: float, warmup: int, total: int, min_frac: float) -> float:
    """Linear warm-up, then cosine decay to min_frac * peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (min_frac + (1 - min_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Progress:
    """tqdm bar with smoothed loss values, and/or a plain log line every `every` steps."""

    KEYS = (
        "loss",
        "ce",
        "bce",
        "dice",
        "con",
        "point",
        "IoU",
        "IoU_colour",
        "IoU_shape",
        "IoU_motion",
        "sens",
        "d_col",
        "d_shape",
        "d_vel",
        "c_col",
        "c_shape",
        "c_pos",
        "c_fine",
        "g_mse",
        "g_pick",
        "g_pick_motion",
        "g_attr",
        "g_ce",
        "m_mse",
        "m_pick",
        "t_ce",
        "t_acc",
        "t_acc_ctx",
        "p_colour",
        "p_shape",
        "p_motion",
        "p_pair_motion",
        "ptr",
        "ptr_motion",
        "ptr_pair_motion",
    )

    def __init__(self, total: int, desc: str, progress: bool, log, every: int = 50):
        self.bar = tqdm(total=total, desc=desc, disable=not progress, dynamic_ncols=True)
        self.log, self.every, self.desc = log, every, desc
        self.ema: dict[str, float] = {}

    def update(self, step: int, parts: dict) -> None:
        for key in self.KEYS:
            if key in parts and not math.isnan(parts[key]):  # (a step with no object cell: NaN)
                v = parts[key]
                self.ema[key] = v if key not in self.ema else 0.95 * self.ema[key] + 0.05 * v
        self.bar.set_postfix({k: f"{v:.3f}" for k, v in self.ema.items()}, refresh=False)
        self.bar.update()
        if self.log is not None and step % self.every == 0:
            self.log(f"{self.desc} step {step} " + " ".join(f"{k}={v:.4f}" for k, v in self.ema.items()))

    def close(self) -> None:
        self.bar.close()


def _optimizer(params, lr: float, cfg: TrainConfig):
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)


def pretrain_on_frames(
    params,
    frame_loss,
    cfg,
    *,
    steps: int,
    lr: float,
    rng_seed: int,
    data_seed: int,
    desc: str,
    progress: bool = True,
    log=None,
) -> list[dict]:
    """The loop of the single-encoder stages (0 and 0b): per step one fresh video, n_query random
    frames of it, `frame_loss(video, frames)` → (loss, parts), AdamW with warm-up + cosine."""
    rng = np.random.default_rng(rng_seed)

    def step_loss(step):
        n = int(rng.integers(cfg.frames_min, cfg.frames_max + 1))
        video = make_train_video(data_seed, step, n, cfg.size)
        return frame_loss(video, sorted(int(f) for f in rng.choice(n, cfg.n_query, replace=False)))

    return run_stage(params, params, step_loss, cfg, steps=steps, lr=lr, desc=desc, progress=progress, log=log)


def run_stage(
    params, clipped, step_loss, cfg, *, steps: int, lr: float, desc: str, progress: bool = True, log=None
) -> list[dict]:
    """The pretraining stages' loop: AdamW over `params` with warm-up + cosine to `lr`,
    step_loss(step) → (loss, parts) or None (nothing drawn: no update), the gradient of
    `clipped` clipped to cfg.grad_clip; returns every step's parts."""
    opt = _optimizer(params, lr, cfg)
    bar = Progress(steps, desc, progress, log)
    history = []
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, lr, cfg.warmup, steps, cfg.min_lr_frac)
        out = step_loss(step)
        if out is None:
            continue
        loss, parts = out
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(clipped, cfg.grad_clip)
        opt.step()
        parts = dict(parts, loss=loss.item(), step=step)
        history.append(parts)
        bar.update(step, parts)
    bar.close()
    return history
