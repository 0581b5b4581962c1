"""The stages of a run in their order: 0b CLIP, 1b grounding and 1c motion (training.grounding,
training.motion), 0 the image encoder and 1 SAM2 (here), 2 GLUS training (`train`), then 3
(training.finetune); the stage-1 snapshot that lets stage 2 start again from the same weights."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from reference.preprocess import sam_pixels

from .checkpoints import init_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import make_sample, make_train_video
from .dense_aux import DenseAttributeHead, dense_labels
from .finetune import add_finetune_log, finetune
from .grounding import (
    GroundingHead,
    grounding_step_loss,
    pretrain_clip,
    pretrain_grounding,
)
from .loop import (
    UNUSED_PREFIXES,
    Progress,
    lr_at,
    pretrain_on_frames,
    seed_everything,
    trainable_parameters,
)
from .losses import SegBank
from .motion import MotionTokenHead, PointerHead, pretrain_motion
from .prompts import PromptCache
from .steps import AttributePrompt, forward_sam_attr, forward_sample


def pretrain_encoder(model, head: DenseAttributeHead, cfg, *, progress: bool = True, log=None) -> list[dict]:
    """Stage 0 (`--encoder-steps`): SAM2's image encoder alone learns per-cell colour
    and shape (training.dense_aux's static loss) on frames of yet another data seed, before stage 1.
    Measured in a probe: per-cell shape starts to emerge only after ~1,400 such steps, too late
    inside stage 1's shared budget; encoder-only steps are ~6x cheaper than stage-1 steps."""

    def frame_loss(video, frames):
        feats = model.encode_image(torch.stack([sam_pixels(video.frames[f], model.sam_image_size) for f in frames]))
        labels = torch.from_numpy(dense_labels(video, frames, cfg.dense_grid))
        return head.static_loss(feats.tokens[-1], feats.sizes[-1], labels)

    params = list(model.sam.image_encoder.parameters()) + list(head.parameters())
    return pretrain_on_frames(
        params,
        frame_loss,
        cfg,
        steps=cfg.encoder_steps,
        lr=cfg.encoder_lr,
        rng_seed=cfg.seed + 11,
        data_seed=cfg.train_data_seed + 900,
        desc="encoder",
        progress=progress,
        log=log,
    )


def pretrain_sam(ref, cfg: TrainConfig, *, progress: bool = True, log=None):
    """Stage 1: SAM2 alone (image encoder, memory bank, decoder) learns to segment expressions
    prompted by AttributePrompt tokens, on training videos of its own data seed. GLUS starts from
    a pretrained SAM2 and a LISA whose [SEG] already prompts it; this stage stands in for both."""
    model = ref.model
    prompt = AttributePrompt(model.sam.hidden_dim, model.sam.sam_prompt_encoder.pe_layer if cfg.locate else None)
    # built only when used: its random init shifts every later random draw
    dense = DenseAttributeHead(model.sam.hidden_dim) if cfg.dense_weight > 0 or cfg.encoder_steps else None
    encoder_history = pretrain_encoder(model, dense, cfg, progress=progress, log=log) if cfg.encoder_steps else []
    if cfg.dense_weight == 0:
        dense = None  # stage 0 only
    aux_params = list(prompt.parameters()) + (list(dense.parameters()) if dense is not None else [])
    params = [p for n, p in trainable_parameters(model) if n.startswith("sam.") and not n.startswith(UNUSED_PREFIXES)]
    opt = torch.optim.AdamW(
        [{"params": params, "peak": cfg.sam_lr}, {"params": aux_params, "peak": cfg.llm_lr}],
        lr=cfg.sam_lr,
        betas=(0.9, 0.95),
        weight_decay=cfg.weight_decay,
    )
    rng = np.random.default_rng(cfg.seed + 7)
    bar = Progress(cfg.sam_steps, "sam2", progress, log)
    history = []
    t0 = time.time()
    for step in range(cfg.sam_steps):
        n = int(rng.integers(cfg.frames_min, cfg.frames_max + 1))
        video = make_train_video(cfg.train_data_seed + 500, step, n, cfg.size)
        start = int(rng.integers(0, n - cfg.n_query + 1))
        query = list(range(start, start + cfg.n_query))
        exprs = sample_stage1_expressions(rng, video, cfg.sam_exprs, cfg.sam_hard_weight)
        step_cfg = cfg if step >= cfg.sam_memory_from else replace(cfg, memory=False)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, g["peak"], cfg.warmup, cfg.sam_steps, cfg.min_lr_frac)
        res = forward_sam_attr(ref, video, query, exprs, step_cfg, prompt, rng, dense)
        opt.zero_grad(set_to_none=True)
        res.loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        parts = dict(res.parts, gnorm=float(gn), step=step, t=round(time.time() - t0, 1))
        history.append(parts)
        bar.update(step, parts)
    bar.close()
    prompt.requires_grad_(False)
    return prompt, history, encoder_history


def sample_stage1_expressions(rng: np.random.Generator, video, k: int, hard_weight: float) -> list[int]:
    """k expressions of the video without replacement; those colour alone does not resolve
    (shape or motion needed) drawn hard_weight times as often (1.0: uniform)."""
    n = len(video.expressions)
    if hard_weight == 1.0:
        return [int(i) for i in rng.permutation(n)[:k]]
    w = np.array([1.0 if video.needs(i) == "colour" else hard_weight for i in range(n)])
    return [int(i) for i in rng.choice(n, size=min(k, n), replace=False, p=w / w.sum())]


@dataclass
class _PreStage2:
    """What stages 0b, 1b, 1c, 0 and 1 hand to stage 2 (besides the model's weights)."""

    prompt: AttributePrompt | None
    ground_head: GroundingHead | None
    clip_history: list
    ground_history: list
    sam_history: list
    encoder_history: list
    motion_head: MotionTokenHead | None = None
    motion_history: list = field(default_factory=list)
    pointer: PointerHead | None = None
    pre_seconds: float = 0.0
    sam_seconds: float = 0.0

    def save(self, path: Path, model) -> None:
        torch.save(
            {
                "model": model.state_dict(),
                "prompt": None if self.prompt is None else self.prompt.state_dict(),
                "ground_head": None if self.ground_head is None else self.ground_head.state_dict(),
                "motion_head": None if self.motion_head is None else self.motion_head.state_dict(),
                "pointer": None if self.pointer is None else self.pointer.state_dict(),
            },
            path,
        )

    @classmethod
    def load(cls, path, ref, cfg: TrainConfig) -> _PreStage2:
        state = torch.load(path, map_location="cpu", weights_only=False)
        model = ref.model
        model.load_state_dict(state["model"])
        prompt = ground_head = None
        if state["prompt"] is not None:
            prompt = AttributePrompt(
                model.sam.hidden_dim, model.sam.sam_prompt_encoder.pe_layer if cfg.locate else None
            )
            prompt.load_state_dict(state["prompt"])
            prompt.requires_grad_(False)
        if cfg.ground_weight or cfg.ground_mix or state["ground_head"] is not None:
            ground_head = GroundingHead(model.llm.config.hidden_size)
            if state["ground_head"] is not None:
                ground_head.load_state_dict(state["ground_head"])
        motion_head = None
        if cfg.motion_stage2_weight or state.get("motion_head") is not None:
            motion_head = MotionTokenHead(model.llm.config.hidden_size)
            if state.get("motion_head") is not None:
                motion_head.load_state_dict(state["motion_head"])
        pointer = None
        if cfg.pointer_stage2_weight or state.get("pointer") is not None:
            pointer = PointerHead(model.llm.config.hidden_size)
            if state.get("pointer") is not None:
                pointer.load_state_dict(state["pointer"])
        return cls(prompt, ground_head, [], [], [], [], motion_head, pointer=pointer)


SNAPSHOT_PARTS = ("model", "prompt", "ground_head", "motion_head", "pointer")


def snapshot_digest(path) -> str:
    """SHA-256 of a stage1.pt's tensors (`--keep-stage1`): every state dict of SNAPSHOT_PARTS in
    that order, keys sorted, each key's bytes then its tensor's raw bytes. The file's own bytes
    are not compared (pickle framing); equal digests mean bit-identical weights before stage 2."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    h = hashlib.sha256()
    for part in SNAPSHOT_PARTS:
        sd = state.get(part)
        for key in sorted(sd or {}):
            h.update(key.encode())
            h.update(sd[key].detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def _pretrain(ref, cfg: TrainConfig, *, progress: bool, log) -> _PreStage2:
    """Stages 0b, 1b and 1c (CLIP, the LLM's grounding, its motion), then 0 and 1 (SAM2)."""
    model = ref.model
    t_pre = time.time()
    clip_history = pretrain_clip(ref, cfg, progress=progress, log=log) if cfg.clip_steps else []
    ground_head = (
        GroundingHead(model.llm.config.hidden_size)
        if cfg.ground_steps or cfg.ground_weight or cfg.ground_mix or cfg.motion_steps
        else None
    )
    ground_history = pretrain_grounding(ref, cfg, ground_head, progress=progress, log=log) if cfg.ground_steps else []
    motion_head = (
        MotionTokenHead(model.llm.config.hidden_size) if cfg.motion_steps or cfg.motion_stage2_weight else None
    )
    # created only when asked, so runs without it keep their random draws
    pointer = (
        PointerHead(model.llm.config.hidden_size)
        if (cfg.motion_steps and cfg.pointer_weight) or cfg.pointer_stage2_weight
        else None
    )
    motion_history = (
        pretrain_motion(
            ref,
            cfg,
            ground_head,
            motion_head,
            progress=progress,
            log=log,
            pointer=pointer if cfg.pointer_weight else None,
        )
        if cfg.motion_steps
        else []
    )
    t0 = time.time()
    prompt, sam_history, encoder_history = (
        pretrain_sam(ref, cfg, progress=progress, log=log) if cfg.sam_steps else (None, [], [])
    )
    return _PreStage2(
        prompt,
        ground_head,
        clip_history,
        ground_history,
        sam_history,
        encoder_history,
        motion_head,
        motion_history,
        pointer,
        pre_seconds=t0 - t_pre,
        sam_seconds=time.time() - t0,
    )


def train(
    cfg: TrainConfig,
    out: str | Path,
    *,
    progress: bool = True,
    log=None,
    eval_fn=None,
    vision_tower: str | None = None,
    from_stage1: str | Path | None = None,
):
    """Train from a seeded random init; returns (ref, history). Saves OUT/glus + OUT/clip.

    Stage 1 (cfg.sam_steps): SAM2 pretraining (attribute prompts). Stage 2 (cfg.steps): GLUS training,
    every part, with GLUS's losses. `from_stage1` (development): a stage1.pt that an earlier run
    with keep_stage1 wrote; stages 0b, 1b, 1c, 0 and 1 are skipped and stage 2 starts from it.
    """
    torch.set_num_threads(cfg.threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    work = out / ".init"
    ref = init_checkpoint(work, cfg.shape, cfg.seed)
    model = ref.model
    with torch.no_grad():
        out_layer = model.text_hidden_fcs[0][2]
        out_layer.weight.mul_(cfg.seg_init_scale)
        out_layer.bias.mul_(cfg.seg_init_scale)
    model.train()
    stage1_sha256 = None  # of the snapshot stage 2 starts from, when there is one
    if from_stage1 is not None:
        pre = _PreStage2.load(from_stage1, ref, cfg)
        stage1_sha256 = snapshot_digest(from_stage1)
    else:
        pre = _pretrain(ref, cfg, progress=progress, log=log)
        if cfg.keep_stage1:
            pre.save(out / "stage1.pt", model)
            stage1_sha256 = snapshot_digest(out / "stage1.pt")
            if log is not None:
                log(f"stage1.pt written, tensors' SHA-256 {stage1_sha256}")
    clip_history, ground_history = pre.clip_history, pre.ground_history
    sam_history, encoder_history = pre.sam_history, pre.encoder_history
    prompt, ground_head, motion_head, pointer = pre.prompt, pre.ground_head, pre.motion_head, pre.pointer
    pre_seconds, sam_seconds = pre.pre_seconds, pre.sam_seconds
    t0 = time.time()

    named = [(n, p) for n, p in trainable_parameters(model) if not n.startswith(UNUSED_PREFIXES)]
    params = [p for _, p in named]
    sam_params = [p for n, p in named if n.startswith("sam.")]
    other = [p for n, p in named if not n.startswith("sam.")]
    if ground_head is not None and (cfg.ground_weight or cfg.ground_mix):
        other += list(ground_head.parameters())
    if motion_head is not None and cfg.motion_stage2_weight:
        other += list(motion_head.parameters())
    if pointer is not None and cfg.pointer_stage2_weight:
        other += list(pointer.parameters())
    mix_rng = np.random.default_rng(cfg.seed + 19)
    mix_answers = PromptCache(ref.tokenizer) if cfg.ground_mix else None
    groups = [{"params": sam_params, "peak": cfg.lr}]
    if cfg.stage2_llm_scale != 1.0:
        body = {id(p) for n, p in named if n.startswith(("llm.", "mm_projector", "clip."))}
        groups += [
            {"params": [p for p in other if id(p) in body], "peak": cfg.llm_lr * cfg.stage2_llm_scale},
            {"params": [p for p in other if id(p) not in body], "peak": cfg.llm_lr},
        ]
    else:
        groups.append({"params": other, "peak": cfg.llm_lr})
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    prompts = PromptCache(ref.tokenizer)
    bank = SegBank(cfg.bank_size) if cfg.contrastive and cfg.bank_negatives > 0 else None
    data_rng = np.random.default_rng(cfg.seed)
    py_rng = random.Random(cfg.seed)
    history = []
    bar = Progress(cfg.steps, "glus", progress, log)
    step = -1
    for step in range(cfg.steps):
        n_frames = int(data_rng.integers(cfg.frames_min, cfg.frames_max + 1))
        video = make_train_video(cfg.train_data_seed, step, n_frames, cfg.size)
        sample = make_sample(data_rng, video, cfg.n_query, cfg.exprs, cfg.exact_context_prob)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, g["peak"], cfg.warmup, cfg.steps, cfg.min_lr_frac)
        warm = step < cfg.mask_warmup
        step_cfg = cfg
        if (warm or step < cfg.point_until) and cfg.contrastive:
            step_cfg = replace(cfg, contrastive_weight=cfg.contrastive_weight_warmup)
        pw = cfg.point_weight * max(0.0, 1 - step / cfg.point_until) if cfg.point_until else 0.0
        res = forward_sample(
            ref,
            prompts,
            sample,
            step_cfg,
            bank,
            py_rng,
            masks_on=not warm,
            point_weight=pw,
            prompt=prompt,
            ground_head=ground_head if cfg.ground_weight else None,
            motion_head=motion_head,
            pointer=pointer,
        )
        loss = res.loss
        mix_parts = {}
        if cfg.ground_mix:
            out_mix = grounding_step_loss(
                ref,
                cfg,
                ground_head,
                mix_rng,
                mix_answers,
                kmax=1,
                n_videos=4,
                video_index=10_000_000 + 4 * step,
                batch=cfg.ground_mix_batch,
            )
            if out_mix is not None:
                loss = loss + cfg.ground_mix * out_mix[0]
                mix_parts = {"m_" + k.removeprefix("g_"): v for k, v in out_mix[1].items()}
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if step < cfg.freeze_sam_steps:
            for p in sam_params:
                p.grad = None  # AdamW leaves parameters without a gradient untouched
        gn = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        parts = dict(
            res.parts,
            **mix_parts,
            gnorm=float(gn),
            lr=opt.param_groups[0]["lr"],
            step=step,
            t=round(time.time() - t0, 1),
        )
        history.append(parts)
        bar.update(step, parts)
        if cfg.ckpt_every and (step + 1) % cfg.ckpt_every == 0 and step + 1 < cfg.steps:
            model.eval()
            save_checkpoint(ref, out, cfg.shape, cfg.weights_dtype, vision_tower)
            if eval_fn is not None:
                eval_fn(step + 1)
            model.train()
        if cfg.minutes is not None and time.time() - t0 > cfg.minutes * 60:
            break
    bar.close()
    model.eval()
    wall = time.time() - t0
    save_checkpoint(ref, out, cfg.shape, cfg.weights_dtype, vision_tower)
    shutil.rmtree(work, ignore_errors=True)
    log_path = out / "train_log.json"
    log_path.write_text(
        json.dumps(
            {
                "config": asdict(cfg),
                **({"from_stage1": str(from_stage1)} if from_stage1 is not None else {}),
                **({"stage1_sha256": stage1_sha256} if stage1_sha256 is not None else {}),
                "sam_steps_done": len(sam_history),
                "steps_done": step + 1,
                "sam_seconds": round(sam_seconds, 1),
                "train_seconds": round(wall, 1),
                "sam_history": sam_history,
                "history": history,
                **({"encoder_history": encoder_history} if cfg.encoder_steps else {}),
                **(
                    {"clip_history": clip_history, "pre_seconds": round(pre_seconds, 1)}
                    if cfg.clip_steps or cfg.ground_steps
                    else {}
                ),
                **({"ground_history": ground_history} if cfg.ground_steps else {}),
                **({"motion_history": pre.motion_history} if cfg.motion_steps else {}),
            }
        )
    )
    if cfg.finetune_steps:
        ref, ft_history, ft_seconds = finetune(cfg, out, out, progress=progress, log=log, vision_tower=vision_tower)
        add_finetune_log(log_path, ft_history, ft_seconds)
    return ref, history
