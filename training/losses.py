"""GLUS's losses: mask BCE and Dice, the decoder's auxiliary outputs and IoU head, and the
object contrastive loss over [SEG] embeddings (with GLUS's bank of earlier ones)."""

from __future__ import annotations

import random
from collections import deque

import torch
import torch.nn.functional as F

from .config import TrainConfig


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-mask 1 - Dice of sigmoid(logits), [N, H, W] → [N] (GLUS's dice_loss, per mask)."""
    p = logits.sigmoid().flatten(1)
    t = target.flatten(1)
    return 1 - (2 * (p * t).sum(-1) + eps) / (p.sum(-1) + t.sum(-1) + eps)


def bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-mask mean pixel BCE, [N, H, W] → [N] (GLUS's sigmoid_ce_loss, per mask)."""
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).mean(1)


class SegBank:
    """Recent detached [SEG] embeddings of other samples (GLUS's segTokenBank)."""

    def __init__(self, size: int):
        self.items: deque = deque(maxlen=size)

    def add(self, video: str, target: tuple, emb: torch.Tensor) -> None:
        for e in emb.detach():
            self.items.append((video, target, e))

    def negatives(self, video: str, n: int, rng: random.Random) -> torch.Tensor | None:
        pool = [e for v, _, e in self.items if v != video]
        if not pool:
            return None
        pick = pool if len(pool) <= n else rng.sample(pool, n)
        return torch.stack(pick)


def contrastive_loss(
    seg: torch.Tensor, targets: list[tuple], tau: float, bank_neg: torch.Tensor | None
) -> torch.Tensor | None:
    """InfoNCE over [SEG] embeddings seg [K, Q, D] of one video (cosine similarity / tau).

    Anchor (e, j): positives are the embeddings of the same target object set (other expressions
    or other query frames); negatives the embeddings of every other target of the same video
    (hard false positives: the distractor shares the shape and often the colour) plus the bank.
    """
    k, q, d = seg.shape
    z = F.normalize(seg.reshape(k * q, d), dim=-1)
    owner = [targets[i // q] for i in range(k * q)]
    sim = z @ z.t() / tau
    if bank_neg is not None:
        zb = F.normalize(bank_neg, dim=-1)
        sim_b = z @ zb.t() / tau
    losses = []
    for a in range(k * q):
        pos = [b for b in range(k * q) if b != a and owner[b] == owner[a]]
        neg = [b for b in range(k * q) if owner[b] != owner[a]]
        if not pos or not neg:
            continue
        neg_logits = sim[a, neg]
        if bank_neg is not None:
            neg_logits = torch.cat([neg_logits, sim_b[a]])
        for b in pos:
            logits = torch.cat([sim[a, b : b + 1], neg_logits])
            losses.append(torch.logsumexp(logits, 0) - sim[a, b])
    if not losses:
        return None
    return torch.stack(losses).mean()


def mask_losses(cfg: TrainConfig, masks: torch.Tensor, iou: torch.Tensor, tgt: torch.Tensor):
    """bce, dice ([B] each, main output), aux ([B*3], multimask outputs), iou-head loss [B]."""
    hw = tgt.shape[-2:]
    up = F.interpolate(masks, hw, mode="bilinear", align_corners=False)  # [B, 4, H, W]
    bce, dice = bce_loss(up[:, 0], tgt), dice_loss(up[:, 0], tgt)
    a_up = up[:, 1:].reshape(-1, *hw)
    a_t = tgt.repeat_interleave(3, 0)
    aux = cfg.bce_weight * bce_loss(a_up, a_t) + cfg.dice_weight * dice_loss(a_up, a_t)
    with torch.no_grad():
        pred = up > 0
        t4 = tgt[:, None].bool()
        inter = (pred & t4).flatten(2).sum(-1).float()
        union = (pred | t4).flatten(2).sum(-1).float()
        true_iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    return bce, dice, aux, F.mse_loss(iou, true_iou, reduction="none").mean(-1)
