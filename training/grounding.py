"""Stand-ins for the pretraining GLUS inherits (not GLUS; training stages 0b and 1b).

GLUS starts from CLIP ViT-L, whose patch features say what is where, and from LLaVA/LISA, whose
LLM can say where a described object is. Ours start from scratch, and a probe measured what
that costs (models/glus-tiny/TRAINING.md): the pooled CLIP tokens of the v3 model hold almost
no position (a linear probe recovers a token's row with R^2 0.04), and its LLM never learns to
say where even a colour-named object is. Two cheap stages teach those skills before GLUS training:

- **CLIP pretraining** (`pretrain_clip`): per pooled token, linear heads for the colour and shape
  of the object there and for the token's own (x, y) — real CLIP features carry their position.
- **Grounding pretraining** (`pretrain_grounding`): the LLM (+ projector) answers GLUS's question
  about K consecutive frames with the target's centre (x, y) in the last one, read by a linear
  head from the last prompt position, the position whose hidden state becomes [SEG] in GLUS.
  Short prompts (one frame: 64 image tokens) and batches drawn from several videos make the
  attention routing learnable in ~500-800 steps; batches from a single video per step, or the
  full prompt (~600 tokens) with a fixed prompt set, stayed at chance for 1,100-3,150 steps.

The heads are not saved: they only shape training. `GroundingHead` also serves as an auxiliary
loss on the [SEG] position in stage 2 (`TrainConfig.ground_weight`).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from evalkit import synth
from reference.model import POOL
from reference.preprocess import clip_pixels
from runtime import rules

from .data import make_train_video, target_locations
from .dense_aux import IGNORE, dense_labels
from .loop import pretrain_on_frames, run_stage
from .prompts import PromptCache

PATCH_GRID = 16  # CLIP at 224/14: 16 x 16 patches
POOLED_COLS = PATCH_GRID // POOL  # avg-pool 4 over the row-major patch sequence: 16 rows x 4 strips


def token_centres() -> torch.Tensor:
    """[64, 2] (x, y) in [0, 1] of each pooled token: token k covers patch row k // 4 and the
    four patch columns 4 (k % 4) .. 4 (k % 4) + 3."""
    k = np.arange(PATCH_GRID * POOLED_COLS)
    x = ((k % POOLED_COLS) * POOL + POOL / 2) / PATCH_GRID
    y = (k // POOLED_COLS + 0.5) / PATCH_GRID
    return torch.tensor(np.c_[x, y], dtype=torch.float32)


def clip_token_labels(video, frames: list[int]) -> torch.Tensor:
    """int64 [2, F, 64]: colour and shape (1-based; 0 = background; IGNORE where mixed) of the
    object covering each pooled token's strip (training.dense_aux.dense_labels on a 16 x 4
    grid). CLIP's centre crop of a square frame is the whole frame."""
    labels = dense_labels(video, frames, (PATCH_GRID, POOLED_COLS))[:2]
    return torch.from_numpy(labels.reshape(2, len(frames), PATCH_GRID * POOLED_COLS))


FINE_COLS = 8  # sub-columns of a pooled token's strip (4 px each at 128 px) for clip_fine_cover


def clip_fine_cover(video, frames: list[int]) -> torch.Tensor:
    """float32 [F, 64, FINE_COLS]: the share of each of a pooled token's strip's sub-columns (its
    height x 1/FINE_COLS of its width) covered by any object. A strip is 32 px wide at 128 px,
    wider than an object moves between two context frames: without this the pooled token
    says that an object is in the strip, not where in it."""
    union = video.target(tuple(video.objects))
    out = [
        cv2.resize(
            union[f].astype(np.float32), (POOLED_COLS * FINE_COLS, PATCH_GRID), interpolation=cv2.INTER_AREA
        ).reshape(PATCH_GRID * POOLED_COLS, FINE_COLS)
        for f in frames
    ]
    return torch.from_numpy(np.stack(out))


def clip_pooled(model, pixels: torch.Tensor) -> torch.Tensor:
    """[B, 64, mm_hidden] pooled CLIP tokens before the projector (= GlusModel.encode_clip without
    its projector, and without running the CLIP layers after the selected one)."""
    vm = getattr(model.clip, "vision_model", model.clip)
    h = vm.pre_layrnorm(vm.embeddings(pixels))
    layers = vm.encoder.layers
    sel = model.cfg.mm_vision_select_layer
    n = len(layers) + 1 + sel if sel < 0 else sel
    for layer in layers[:n]:
        h = layer(h, None)
        if isinstance(h, tuple):
            h = h[0]
    return F.avg_pool1d(h[:, 1:].transpose(1, 2), POOL, POOL).transpose(1, 2)


class ClipTokenHead(torch.nn.Module):
    """Linear per-token colour / shape classifiers and (x, y) regressor over pooled CLIP tokens."""

    def __init__(self, dim: int, position_weight: float = 10.0):
        super().__init__()
        self.colour = torch.nn.Linear(dim, len(synth.COLOURS) + 1)
        self.shape = torch.nn.Linear(dim, len(synth.SHAPES) + 1)
        self.position = torch.nn.Linear(dim, 2)
        self.position_weight = position_weight
        self.register_buffer("xy", token_centres(), persistent=False)

    def loss(self, tokens: torch.Tensor, labels: torch.Tensor):
        """tokens [F, 64, D], labels [2, F, 64] → (loss, parts)."""
        lc, ls = (
            F.cross_entropy(h(tokens).transpose(1, 2), y, ignore_index=IGNORE)
            for h, y in ((self.colour, labels[0]), (self.shape, labels[1]))
        )
        lp = F.mse_loss(self.position(tokens), self.xy.expand(tokens.shape[0], -1, -1))
        with torch.no_grad():
            obj = labels[0] > 0
            acc = {
                f"c_{n}": float((h(tokens).argmax(-1) == y)[obj].float().mean()) if obj.any() else float("nan")
                for n, h, y in (("col", self.colour, labels[0]), ("shape", self.shape, labels[1]))
            }
        return lc + ls + self.position_weight * lp, dict(acc, c_pos=lp.item())


class GroundingHead(torch.nn.Module):
    """From an LLM hidden state: (x, y) in [0, 1] (linear + sigmoid), and colour / shape logits
    of the target (linear): what and where, as LISA's [SEG] says both. The attribute part asks
    for the first hop (the expression's words routed to the last position); it came in with the
    varied batches that made the location learnable, and was not tested apart from them."""

    def __init__(self, dim: int):
        super().__init__()
        self.fc = torch.nn.Linear(dim, 2)
        self.colour = torch.nn.Linear(dim, len(synth.COLOURS))
        self.shape = torch.nn.Linear(dim, len(synth.SHAPES))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc(hidden))

    def attribute_loss(self, hidden: torch.Tensor, colours: list[str], shapes: list[str]):
        """CE of the targets' colour and shape (names as in evalkit.synth), and the accuracy of both."""
        yc = torch.tensor([list(synth.COLOURS).index(c) for c in colours])
        ys = torch.tensor([list(synth.SHAPES).index(s) for s in shapes])
        lc, ls = self.colour(hidden), self.shape(hidden)
        loss = F.cross_entropy(lc, yc) + F.cross_entropy(ls, ys)
        with torch.no_grad():
            acc = ((lc.argmax(-1) == yc) & (ls.argmax(-1) == ys)).float().mean().item()
        return loss, {"g_attr": acc}


def grounding_loss(xy: torch.Tensor, target: torch.Tensor, other: torch.Tensor | None = None):
    """MSE to the target centres ([N, 2]; rows with NaN are left out) and, with `other` (the
    look-alike's centres), the share of points nearer the target than the look-alike."""
    ok = ~torch.isnan(target).any(-1)
    if not ok.any():
        return xy.sum() * 0, {}
    loss = F.mse_loss(xy[ok], target[ok])
    parts = {"g_mse": loss.item()}
    if other is not None:
        ok2 = ok & ~torch.isnan(other).any(-1)
        if ok2.any():
            near = (xy - target).norm(dim=-1) < (xy - other).norm(dim=-1)
            parts["g_pick"] = float(near[ok2].float().mean())
    return loss, parts


def question_ids(tok, expr: str, n_frames: int) -> list[int]:
    """The grounding prompt: BOS, n_frames images, GLUS's question, then "ASSISTANT: " and GLUS's
    answer prefix, ending where stage 2 and inference read the [SEG] embedding (the last prompt
    position, which predicts [SEG]): a head trained at "ASSISTANT:" read MSE 0.020 there but
    0.085 at the [SEG] position, so a stage 2 built on it starts without the skill."""
    text = (
        rules.IMAGE_TEXT * n_frames
        + "\n"
        + rules.QUESTION_TEMPLATE.format(expr=expr)
        + rules.SEP
        + rules.ASSISTANT_ROLE
        + ": "
        + rules.ANSWER_PREFIX
    )
    return tok.encode_prompt(text)


def look_alike(video, target: tuple[int, ...]) -> int | None:
    """The other object of the same-shape pair when the target is one of them."""
    if len(target) == 1 and target[0] in video.pair:
        return video.pair[1] if target[0] == video.pair[0] else video.pair[0]
    return None


# ---------------------------------------------------------------------------------------------
# The two stages (training.stages runs them before stage 2)
# ---------------------------------------------------------------------------------------------
def pretrain_clip(ref, cfg, *, progress: bool = True, log=None) -> list[dict]:
    """Stage 0b (`--clip-steps`): the CLIP vision tower alone learns, per pooled token, colour,
    shape and its own position (with `clip_fine_weight`, also where in its strip objects are:
    clip_fine_cover), on 4 frames of one fresh video per step."""
    model = ref.model
    vm = getattr(model.clip, "vision_model", model.clip)
    head = ClipTokenHead(model.cfg.mm_hidden_size)
    # created only when asked, so the default run's random draws stay as they were
    fine = torch.nn.Linear(model.cfg.mm_hidden_size, FINE_COLS) if cfg.clip_fine_weight else None

    def frame_loss(video, frames):
        tokens = clip_pooled(model, torch.stack([clip_pixels(ref.clip_processor, video.frames[f]) for f in frames]))
        loss, parts = head.loss(tokens, clip_token_labels(video, frames))
        if fine is not None:
            lf = F.mse_loss(fine(tokens), clip_fine_cover(video, frames))
            loss, parts = loss + cfg.clip_fine_weight * lf, dict(parts, c_fine=lf.item())
        return loss, parts

    extra = [] if fine is None else list(fine.parameters())
    return pretrain_on_frames(
        list(vm.parameters()) + list(head.parameters()) + extra,
        frame_loss,
        cfg,
        steps=cfg.clip_steps,
        lr=cfg.clip_lr,
        rng_seed=cfg.seed + 13,
        data_seed=cfg.train_data_seed + 700,
        desc="clip",
        progress=progress,
        log=log,
    )


def grounding_batch(rng: np.random.Generator, video, n: int, max_frames: int):
    """n (expression index, last frame t, K) draws from one video: single-object targets, the
    target visible in frame t, K consecutive frames t-K+1..t with K in [1, max_frames]; with
    one frame, only expressions one frame can resolve (not those needing the motion)."""
    singles = [
        i
        for i, (_, ids) in enumerate(video.expressions)
        if len(ids) == 1 and (max_frames > 1 or video.needs(i) != "motion")
    ]
    T = len(video.frames)
    out = []
    for _ in range(50 * n):
        if len(out) == n or not singles:
            break
        i = singles[int(rng.integers(len(singles)))]
        k = int(rng.integers(1, max_frames + 1))
        t = int(rng.integers(k - 1, T))
        if video.objects[video.expressions[i][1][0]][t].any():
            out.append((i, t, k))
    return out


def grounding_step_loss(
    ref,
    cfg,
    head: GroundingHead,
    rng: np.random.Generator,
    answers,
    *,
    video_index: int,
    kmax: int,
    n_videos: int,
    batch: int,
):
    """One varied grounding batch (stage 1b's step): `batch` prompts drawn from `n_videos` fresh
    short videos (video indices video_index..+n_videos); returns (loss, parts) or None when no
    draw was possible. Loss: location MSE + attribute CE x ground_attr_weight + answer CE x
    ground_answer_weight."""
    model, tok = ref.model, ref.tokenizer
    embeds, targets, others, objs, motion, ce_at = [], [], [], [], [], []
    per_video = max(1, batch // n_videos)
    for v in range(n_videos):
        n = int(rng.integers(max(kmax, 4), 9))
        video = make_train_video(cfg.train_data_seed + 800, video_index + v, n, cfg.size)
        draws = grounding_batch(rng, video, per_video, kmax)
        if not draws:
            continue
        used = sorted({f for _, t, k in draws for f in range(t - k + 1, t + 1)})
        with torch.no_grad():
            pooled = clip_pooled(model, torch.stack([clip_pixels(ref.clip_processor, video.frames[f]) for f in used]))
        images = model.mm_projector(pooled)
        row = {f: j for j, f in enumerate(used)}
        meta = {o["obj_id"]: o for o in video.objects_meta}
        for i, t, k in draws:
            text, ids = video.expressions[i]
            ids_k = question_ids(tok, text, k)
            ce_at += [(len(embeds), p, t_id) for p, t_id in answers.answer_targets(ids_k)]
            embeds.append(model.embed_prompt(ids_k, images[[row[f] for f in range(t - k + 1, t + 1)]])[0])
            targets.append(target_locations(video, [ids], [t])[0, 0, 0])
            o = look_alike(video, ids)
            others.append(
                target_locations(video, [(o,)], [t])[0, 0, 0] if o is not None else np.full(2, np.nan, np.float32)
            )
            objs.append(meta[ids[0]])
            motion.append(video.needs(i) == "motion" and k > 1)
    if not embeds:
        return None
    lengths = [e.shape[0] for e in embeds]
    padded = torch.stack([F.pad(e, (0, 0, 0, max(lengths) - e.shape[0])) for e in embeds])
    hidden = model.llm.model(inputs_embeds=padded).last_hidden_state  # right padding: causal
    last = hidden[torch.arange(len(embeds)), torch.tensor(lengths) - 1]
    xy = head(last)
    tgt, oth = torch.from_numpy(np.stack(targets)), torch.from_numpy(np.stack(others))
    loss, parts = grounding_loss(xy, tgt, oth)
    la, pa = head.attribute_loss(last, [o["colour"] for o in objs], [o["shape"] for o in objs])
    loss = loss + cfg.ground_attr_weight * la
    parts.update(pa)
    if cfg.ground_answer_weight:  # the answer text stage 2 asks for, so its CE starts low
        rows, pos, tgt_ids = (torch.tensor(c) for c in zip(*ce_at))
        ce = F.cross_entropy(model.llm.lm_head(hidden[rows, pos]), tgt_ids)
        loss = loss + cfg.ground_answer_weight * ce
        parts["g_ce"] = ce.item()
    motion = torch.tensor(motion)
    if motion.any():  # the pick where only the motion tells the target from its look-alike
        parts["g_pick_motion"] = grounding_loss(xy[motion].detach(), tgt[motion], oth[motion])[1].get(
            "g_pick", float("nan")
        )
    return loss, parts


def pretrain_grounding(ref, cfg, head: GroundingHead, *, progress: bool = True, log=None) -> list[dict]:
    """Stage 1b (`--ground-steps`): the LLM and projector (CLIP frozen) learn to say where the
    described object is in the last of K consecutive frames; the first `ground_single_steps`
    use one frame (K = 1), the rest K in [1, ground_frames] (motion needs K >= 2)."""
    model = ref.model
    params = list(model.llm.parameters()) + list(model.mm_projector.parameters())
    rng = np.random.default_rng(cfg.seed + 17)
    answers = PromptCache(ref.tokenizer)

    def step_loss(step):
        kmax = 1 if step < cfg.ground_single_steps else cfg.ground_frames
        # several short videos per step: draws from one video alone are too alike (one video
        # per step did not learn the location in 6,000 steps; a varied set did in ~1,500)
        out = grounding_step_loss(
            ref,
            cfg,
            head,
            rng,
            answers,
            video_index=step * cfg.ground_videos,
            kmax=kmax,
            n_videos=cfg.ground_videos,
            batch=cfg.ground_batch,
        )
        return None if out is None else (out[0], dict(out[1], k=kmax))

    return run_stage(
        params + list(head.parameters()),
        params,
        step_loss,
        cfg,
        steps=cfg.ground_steps,
        lr=cfg.llm_lr,
        desc="ground",
        progress=progress,
        log=log,
    )
