"""One training step's forward pass, with grad, through the modules GlusModel's inference methods
call: stage 2's (GLUS's prompt through the LLM, [SEG] into SAM2 over the query frames with the
memory bank in the graph, GLUS's losses) and stage 1's (SAM2 prompted by the AttributePrompt
scaffold)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from evalkit import synth
from reference.model import ImageFeatures
from reference.preprocess import clip_pixels, sam_pixels
from reference.sam import seg_prompted_decode
from runtime import rules

from .config import TrainConfig
from .data import Sample, target_locations
from .dense_aux import dense_labels
from .grounding import GroundingHead, clip_pooled, grounding_loss
from .losses import SegBank, contrastive_loss, mask_losses
from .motion import (
    MotionTokenHead,
    PointerHead,
    image_offsets,
    motion_token_labels,
    point_at,
    pointer_masks,
    shared_prefix_forward,
    stage2_token_loss,
    token_owners,
)
from .prompts import PromptCache


def clip_tokens(model, pixels: torch.Tensor) -> torch.Tensor:
    """= GlusModel.encode_clip, without running the CLIP layers after the selected one."""
    return model.mm_projector(clip_pooled(model, pixels))


def decode_all(model, feats: ImageFeatures, conditioned: torch.Tensor, seg: torch.Tensor):
    """GlusModel.decode, returning all four mask outputs and IoU predictions. `seg`: [B, 256]
    ([SEG] embeddings, one sparse token each) or [B, N, 256] (other sparse prompts)."""
    pe = model.sam.sam_prompt_encoder
    if seg.dim() == 2:
        seg = seg[:, None]
    image_embed = model._to_map(conditioned, feats.sizes[-1])
    high_res = [model._to_map(t, s) for t, s in zip(feats.tokens[:-1], feats.sizes[:-1])]
    masks, iou, _, _ = seg_prompted_decode(
        model.sam.sam_mask_decoder,
        image_embed,
        pe.get_dense_pe(),
        high_res,
        seg,
        pe.no_mask_embed.weight,
        all_masks=True,
    )
    return masks, iou


@dataclass
class StepOut:
    loss: torch.Tensor
    parts: dict = field(default_factory=dict)


def forward_sample(
    ref,
    prompts: PromptCache,
    sample: Sample,
    cfg: TrainConfig,
    bank: SegBank | None,
    rng: random.Random,
    masks_on: bool = True,
    point_weight: float = 0.0,
    prompt: AttributePrompt | None = None,
    ground_head: GroundingHead | None = None,
    motion_head: MotionTokenHead | None = None,
    pointer: PointerHead | None = None,
) -> StepOut:
    model = ref.model
    video = sample.video
    exprs = [video.expressions[i] for i in sample.exprs]
    k, q = len(exprs), len(sample.query)

    # --- LLM: one prompt per (expression, query frame), exactly the inference prompt of that
    # frame (query order = the video from frame 0: window = the last <= 4 frames).
    windows = [[f for f in rules.window_positions(t + 1)] for t in sample.query]
    needed = sorted(set(sample.context) | {f for w in windows for f in w})
    pixels = torch.stack([clip_pixels(ref.clip_processor, video.frames[f]) for f in needed])
    tokens = clip_tokens(model, pixels)
    row = {f: i for i, f in enumerate(needed)}
    # The prefix (system, context frames, context sentence) is the same for every prompt of the
    # sample: one prefill, its keys/values shared by all continuations (exact: the causal mask
    # over a cache equals a full prefill's, tests/test_export_llm.py checks it).
    prefix_ids = prompts.prefix_ids()
    prefix = model.embed_prompt(prefix_ids, tokens[[row[f] for f in sample.context]])
    n_pre = prefix.shape[1]
    embeds, ce_rows, ce_pos, ce_tgt, rest_ids = [], [], [], [], []
    for text, _ in exprs:
        for w in windows:
            ids, targets = prompts.get(text, len(w))
            e = model.embed_prompt(ids, tokens[[row[f] for f in w]])[0]
            b = len(embeds)
            embeds.append(e)
            rest_ids.append(ids)
            for p, t in targets:
                ce_rows.append(b)
                ce_pos.append(p - n_pre)
                ce_tgt.append(t)
    bsz = len(embeds)
    token_motion = motion_head is not None and cfg.motion_stage2_weight > 0
    pointing = pointer is not None and cfg.pointer_stage2_weight > 0
    _, llm_out, lengths = shared_prefix_forward(model.llm.model, prefix, [0] * bsz, embeds)
    hidden = llm_out.last_hidden_state
    logits = model.llm.lm_head(hidden[ce_rows, ce_pos])
    ce = F.cross_entropy(logits, torch.tensor(ce_tgt))
    last = hidden[torch.arange(bsz), torch.tensor(lengths) - 1]
    seg = model.seg_head(last).reshape(k, q, -1)
    with torch.no_grad():
        seg_acc = (logits.argmax(-1) == torch.tensor(ce_tgt)).float().mean()

    loss = cfg.ce_weight * ce
    parts = {"ce": ce.item(), "seg_acc": seg_acc.item()}
    if masks_on:
        loss = loss + sam_losses(ref, sample, exprs, seg, cfg, parts)
    if token_motion:  # training.motion: each query-frame token says how its object moves
        labs = motion_token_labels(video, needed)
        tl, tparts = stage2_token_loss(
            model,
            motion_head,
            llm_out.hidden_states,
            rest_ids,
            [w for _ in exprs for w in windows],
            lambda f: labs[row[f]],
        )
        loss = loss + cfg.motion_stage2_weight * tl
        parts.update(tparts, t_ce=tl.item())
    if pointing:  # the [SEG] position points at the target's tokens
        owners = token_owners(video, sample.query)  # each window ends on its query frame
        masks = [pointer_masks(video, owners[j], tuple(ids)) for _, ids in exprs for j in range(q)]
        needs = [video.needs(i) for i in sample.exprs for _ in windows]
        pl, pparts = point_at(
            pointer, llm_out, cfg.pointer_below, lengths, [image_offsets(ids)[-1] for ids in rest_ids], masks, needs
        )
        loss = loss + cfg.pointer_stage2_weight * pl
        parts.update(pparts)
    if ground_head is not None:  # training.grounding: the [SEG] position says where the target is
        centres = target_locations(video, [ids for _, ids in exprs], sample.query)  # [k, q, O, 2]
        seen = ~np.isnan(centres[..., 0])
        mean = np.where(seen[..., None], centres, 0).sum(2) / np.maximum(seen.sum(2), 1)[..., None]
        mean[seen.sum(2) == 0] = np.nan  # no target object visible in that frame
        gl, gparts = grounding_loss(ground_head(last), torch.from_numpy(mean.reshape(-1, 2)))
        loss = loss + cfg.ground_weight * gl
        parts.update(gparts)
    if point_weight > 0 and prompt is not None:
        with torch.no_grad():
            attrs = [video.attributes[i] for i in sample.exprs]
            if cfg.locate:
                tgt = prompt(attrs, target_locations(video, [ids for _, ids in exprs], sample.query))
            else:
                tgt = prompt(attrs)[:, None].expand_as(seg)
        pl = F.mse_loss(seg, tgt)
        loss = loss + point_weight * pl
        parts["point"] = pl.item()
    if cfg.contrastive:
        targets = [tuple(sorted(ids)) for _, ids in exprs]
        neg = bank.negatives(video.name, cfg.bank_negatives, rng) if bank is not None else None
        c = contrastive_loss(seg, targets, cfg.tau, neg)
        if c is not None:
            loss = loss + cfg.contrastive_weight * c
            parts["con"] = c.item()
        if bank is not None:
            for e, t in zip(seg, targets):
                bank.add(video.name, t, e)
    parts["loss"] = loss.item()
    return StepOut(loss, parts)


def memory_run(model, feats: ImageFeatures, k: int, prompt_at, memory: bool, on_frame, on_cond=None) -> None:
    """SAM2 over the q query frames of `feats` in order, K prompts each (`prompt_at(j)`), with
    GLUS's memory rule and the memory bank inside the autograd graph. `on_frame(j, masks, iou)`
    sees each frame's decoder outputs before the next frame's memory is encoded; `on_cond(j,
    cond)` each memory-conditioned feature map (frames that read at least one memory)."""
    q = feats.tokens[0].shape[1]
    mem: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for j in range(q):
        fj = ImageFeatures(
            tokens=[t[:, j : j + 1].expand(-1, k, -1) for t in feats.tokens],
            pos=[p[:, j : j + 1].expand(-1, k, -1) for p in feats.pos],
            sizes=feats.sizes,
        )
        keys = [m for m in rules.memory_frame_indices(j) if m in mem] if memory else []
        cond = model.condition(fj, [mem[m] for m in keys])
        if on_cond is not None and keys:
            on_cond(j, cond)
        masks, iou = decode_all(model, fj, cond, prompt_at(j))
        on_frame(j, masks, iou)
        if memory and j + 1 < q:
            mem[j] = model.encode_memory(fj, cond, masks[:, 0:1])


def sam_losses(ref, sample: Sample, exprs, seg: torch.Tensor, cfg: TrainConfig, parts: dict):
    """SAM2 over the query frames in order, the memory bank inside the graph; mask losses."""
    model, video = ref.model, sample.video
    k = seg.shape[0]
    sam_in = torch.stack([sam_pixels(video.frames[f], model.sam_image_size) for f in sample.query])
    feats = model.encode_image(sam_in)
    gt = torch.from_numpy(np.stack([video.target(ids)[sample.query] for _, ids in exprs])).float()
    terms = []

    def on_frame(j, masks, iou):
        if j == 0:  # how much the masks depend on the expression (0: the prompt is ignored)
            parts["sens"] = float((masks[:, 0] - masks[:, 0].mean(0)).abs().mean().detach())
        terms.append(mask_losses(cfg, masks, iou, gt[:, j]))

    memory_run(model, feats, k, lambda j: seg[:, j], cfg.memory, on_frame)
    bce, dice, aux, il = (torch.cat(t).mean() for t in zip(*terms))
    loss = cfg.bce_weight * bce + cfg.dice_weight * dice + cfg.aux_mask_weight * aux
    parts.update(bce=bce.item(), dice=dice.item(), aux=aux.item(), iou=il.item())
    return loss + cfg.iou_weight * il


class AttributePrompt(torch.nn.Module):
    """Stage-1 scaffold (not part of GLUS, not saved): a prompt token for SAM2's decoder built
    from an expression's attributes (sum of learned colour / shape / motion / plural vectors)
    and, when given, *where* its target is in the current frame (SAM2's own point encoding of
    each visible target object's centre, averaged, times a learned gain; a learned "absent"
    vector when none is visible), standing in for the [SEG] embedding a pretrained LISA would
    give (LISA's [SEG] says what and where). Stage 2 teaches the LLM to produce these tokens,
    then GLUS's losses take over. Stage 1 drops or jitters the location at random, so the
    decoder also learns to segment from the attributes alone and from a rough location."""

    def __init__(self, dim: int = 256, pe_layer=None):
        super().__init__()
        names = (
            ["base", "plural"]
            + [f"colour:{c}" for c in synth.COLOURS]
            + [f"shape:{s}" for s in synth.SHAPES]
            + [f"motion:{m}" for m in synth.MOTIONS]
        )
        self.index = {n: i for i, n in enumerate(names)}
        self.table = torch.nn.Embedding(len(names), dim)
        torch.nn.init.normal_(self.table.weight, std=1.0)
        # SAM2's prompt-encoder PositionEmbeddingRandom (a fixed buffer); None: attributes only,
        # and no extra parameters (their random init would change every later draw)
        self.pe_layer = pe_layer
        if pe_layer is not None:
            self.where = torch.nn.Embedding(2, dim)  # 0: located, 1: absent (no target visible)
            torch.nn.init.normal_(self.where.weight, std=1.0)
            self.loc_gain = torch.nn.Parameter(torch.tensor(2.0))

    def forward(
        self, attrs: list[dict], centres: np.ndarray | None = None, drop: np.ndarray | None = None
    ) -> torch.Tensor:
        """[K, dim] (attributes only) or, with centres [K, Q, O, 2], [K, Q, dim]; `drop` [K, Q]
        bool: leave the location out there."""
        rows = []
        for a in attrs:
            keys = ["base"] + (["plural"] if a.get("n", 1) > 1 else [])
            keys += [f"{k}:{a[k]}" for k in ("colour", "shape", "motion") if a.get(k) is not None]
            rows.append(self.table(torch.tensor([self.index[k] for k in keys])).sum(0))
        tok = torch.stack(rows)
        if centres is None:
            return tok
        if self.pe_layer is None:
            raise ValueError("this AttributePrompt has no location part (built without pe_layer)")
        c = torch.from_numpy(np.nan_to_num(centres, nan=0.5))
        seen = torch.from_numpy(~np.isnan(centres[..., 0])).float()  # [K, Q, O]
        pe = self.pe_layer._pe_encoding(c)  # [K, Q, O, dim]
        n = seen.sum(-1, keepdim=True)  # [K, Q, 1]
        loc = (pe * seen[..., None]).sum(2) / n.clamp(min=1)
        visible = (n > 0).float()
        where = visible * (self.loc_gain * loc + self.where.weight[0]) + (1 - visible) * self.where.weight[1]
        if drop is not None:
            where = where * torch.from_numpy(~drop).float()[..., None]
        return tok[:, None] + where


def noisy_locations(rng: np.random.Generator, centres: np.ndarray, jitter: float, drop_p: float):
    """Stage-1 location noise: Gaussian jitter of every centre (in image fractions) and, per
    (expression, frame), dropping the location with probability drop_p."""
    noisy = centres + rng.normal(0.0, jitter, centres.shape).astype(np.float32)
    drop = rng.random(centres.shape[:2]) < drop_p
    return noisy, drop


def forward_sam_attr(
    ref,
    video,
    query: list[int],
    exprs: list[int],
    cfg: TrainConfig,
    prompt: AttributePrompt,
    rng: np.random.Generator | None = None,
    dense=None,
) -> StepOut:
    """Stage 1: SAM2 (image encoder, memory, decoder) segments expressions prompted by
    AttributePrompt tokens, over a run of query frames with the memory bank in the graph."""
    model = ref.model
    k = len(exprs)
    feats = model.encode_image(torch.stack([sam_pixels(video.frames[f], model.sam_image_size) for f in query]))
    gt = torch.from_numpy(np.stack([video.target(video.expressions[i][1])[query] for i in exprs])).float()
    h, w = gt.shape[-2:]
    attrs = [video.attributes[i] for i in exprs]
    if cfg.locate and rng is not None:
        centres = target_locations(video, [video.expressions[i][1] for i in exprs], query)
        tok = prompt(attrs, *noisy_locations(rng, centres, cfg.locate_jitter, cfg.locate_drop))
    else:  # one token for every frame (used as is: the gradient sums in the same order as before)
        tok = prompt(attrs)
    bces, dices, auxs, ious, hit = [], [], [], [], []
    dense_terms, dense_parts, on_cond = [], {}, None
    if dense is not None:  # training.dense_aux: per-cell colour / shape / velocity
        labels = torch.from_numpy(dense_labels(video, query, cfg.dense_grid))
        static, dense_parts = dense.static_loss(feats.tokens[-1], feats.sizes[-1], labels)
        dense_terms.append(static)
        vel_acc = []

        def on_cond(j, cond):
            loss_v, acc = dense.velocity_loss(cond, feats.sizes[-1], labels[2, j])
            dense_terms.append(loss_v)
            vel_acc.append(acc)

    def on_frame(j, masks, iou):
        b, d, a, il = mask_losses(cfg, masks, iou, gt[:, j])
        with torch.no_grad():
            p_ = F.interpolate(masks[:, :1], (h, w), mode="bilinear", align_corners=False)[:, 0] > 0
            g_ = gt[:, j] > 0
            hit.append((p_ & g_).flatten(1).sum(1) / (p_ | g_).flatten(1).sum(1).clamp(min=1))
        bces.append(b)
        dices.append(d)
        auxs.append(a)
        ious.append(il)

    memory_run(
        model, feats, k, (lambda j: tok[:, j]) if tok.dim() == 3 else (lambda j: tok), cfg.memory, on_frame, on_cond
    )
    bce, dice = torch.cat(bces).mean(), torch.cat(dices).mean()
    aux, il = torch.cat(auxs).mean(), torch.cat(ious).mean()
    loss = cfg.bce_weight * bce + cfg.dice_weight * dice + cfg.aux_mask_weight * aux + cfg.iou_weight * il
    if dense_terms:
        loss = loss + cfg.dense_weight * sum(dense_terms)
        if dense_terms[1:]:
            dense_parts["d_vel"] = float(np.nanmean(vel_acc))
    per_expr = torch.stack(hit).mean(0)  # [K]
    needs = [video.needs(i) for i in exprs]
    parts = {
        "loss": loss.item(),
        "bce": bce.item(),
        "dice": dice.item(),
        "aux": aux.item(),
        "iou": il.item(),
        "IoU": float(per_expr.mean()),
        **dense_parts,
    }
    for need in ("colour", "shape", "motion"):  # IoU by what the expression needs
        mine = torch.tensor([n == need for n in needs])
        if mine.any():
            parts[f"IoU_{need}"] = float(per_expr[mine].mean())
    return StepOut(loss, parts)
