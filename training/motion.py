"""Stage 1c (not GLUS): the LLM learns which way every object moves, over GLUS's own prompt.

GLUS's LLaVA knows from pretraining what moves where; ours starts from scratch. Sessions 5-7
(models/glus-tiny/TRAINING.md) found that the tiny LLM, asked only for the target's location at
the [SEG] position, never learned to pick a target among look-alikes by its motion: that one
target number per prompt has to teach, in one go, which look-alike in the query frame is which
one in the context frames, which way each moves, and which one the words ask for.

This stage splits the job the way the prompt's causal order allows. The query frame's image
tokens come before the question, so they cannot know the expression; what they can compute is
the motion of the object under them, by attending to the same object in the context frames and
the window's earlier query frames. A linear head on the LLM's middle layer asks every query-frame
token for the video-level motion of the object covering it (`evalkit.synth.MOTIONS`: left,
right, up, down, stop, still, bounce), so the [SEG] position's last layers only have to match the
expression's words against tokens that already carry their motion, as they match colour.

A step: `motion_videos` fresh videos, `motion_batch` prompts in all; each prompt is exactly the
inference prompt of one query frame (4 context frames by GLUS's training rule, the window of
<= 4 query rounds, the question, the answer prefix). Loss: the per-token motion CE (object
tokens only) x `motion_weight` + the target's location at the [SEG] position (the
training.grounding head). `motion_stage2_weight` keeps the token loss on in stage 2.

With `motion_context`, context frames 2-4 are asked too, at a lower layer (`motion_layers`).
Why: GLUS's prompt puts all context frames before the query frame, whatever their
time, so a query token cannot tell which context frames are earlier than its own and its
direction estimate is a guess (0.67 on a video's first frame, 0.32-0.46 on the others). The
context frames are in time order: each of their tokens sees its object's earlier positions in
causal order and can compute the direction; a query token above that layer only has to fetch it
from the context token of its own object. Measured (`--shape small4`, TRAINING.md): the query
tokens reach 0.742 on videos of an unseen seed, 0.72-0.75 at every window length, where the
2-layer head plateaued at 0.40 (0.38 on the unseen seed).

With a PointerHead (`pointer_weight`, `pointer_stage2_weight`, `pointer_below`), the [SEG]
position is also asked which of the current frame's tokens are the target's (a CE over them).
Measured (TRAINING.md): the pick among look-alikes reaches 0.89 on training batches pointing from
below the last layer, but SAM2 only sees the [SEG] state, and the place follows it only when the
centre regression is weighted up (`motion_ground_weight` 20: look-alike pick 0.57 -> 0.69).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from transformers import DynamicCache

from evalkit import synth
from reference.preprocess import clip_pixels
from runtime import rules

from .data import context_frames, make_train_video, target_locations
from .dense_aux import cell_owners
from .grounding import (
    PATCH_GRID,
    POOLED_COLS,
    GroundingHead,
    clip_pooled,
    grounding_loss,
    look_alike,
)
from .loop import run_stage
from .prompts import PromptCache

MOTIONS = synth.MOTIONS


def motion_token_labels(video, frames: list[int]) -> torch.Tensor:
    """int64 [F, 64]: 1 + MOTIONS index of the object covering each pooled token's strip (its
    motion over the whole video, as the expressions name it); 0 = background; IGNORE where mixed
    (training.dense_aux.cell_owners on the 16 x 4 strip grid)."""
    owners = token_owners(video, frames)
    out = owners.copy()
    for o in video.objects_meta:
        out[owners == o["obj_id"]] = MOTIONS.index(o["motion"]) + 1
    return torch.from_numpy(out)


def token_owners(video, frames: list[int]) -> np.ndarray:
    """int64 [F, 64]: the obj_id covering each pooled token's strip (0 background, IGNORE mixed)."""
    return cell_owners(video, frames, (PATCH_GRID, POOLED_COLS)).reshape(len(frames), PATCH_GRID * POOLED_COLS)


def image_offsets(ids: list[int]) -> list[int]:
    """Where each image's 64 tokens start in the sequence GlusModel.embed_prompt builds from `ids`."""
    starts, pos = [], 0
    for t in ids:
        if t == rules.IMAGE_TOKEN_INDEX:
            starts.append(pos)
            pos += rules.TOKENS_PER_IMAGE
        else:
            pos += 1
    return starts


def motion_layers(model) -> tuple[int, int]:
    """(context layer, query layer): the hidden states the token head reads. Query frames at the
    middle of the LLM (at least after layer 1), so the layers above are left to route the
    expression to the [SEG] position and match it; context frames at a quarter of it (at least
    after layer 1), so the query tokens' layers can read what the context tokens computed."""
    n = model.llm.config.num_hidden_layers
    return max(1, n // 4), max(1, n // 2)


class MotionTokenHead(torch.nn.Module):
    """Linear per-token classifier of the covering object's video-level motion."""

    def __init__(self, dim: int):
        super().__init__()
        self.fc = torch.nn.Linear(dim, len(MOTIONS) + 1)

    def loss(self, tokens: torch.Tensor, labels: torch.Tensor, is_query: torch.Tensor | None = None):
        """tokens [N, 64, D], labels [N, 64] → (CE over object tokens, {"t_acc": the query images'
        accuracy, "t_acc_ctx": the context images'}); is_query [N] bool (default: all query).
        Background (most tokens, and told by colour alone) is left out."""
        obj = labels > 0
        if not obj.any():
            return tokens.sum() * 0, {}
        logits = self.fc(tokens[obj])
        loss = F.cross_entropy(logits, labels[obj])
        with torch.no_grad():
            right = torch.zeros_like(labels, dtype=torch.bool)
            right[obj] = logits.argmax(-1) == labels[obj]
            q = torch.ones(len(labels), dtype=torch.bool) if is_query is None else is_query
            parts = {}
            for name, rows in (("t_acc", q), ("t_acc_ctx", ~q)):
                m = obj & rows[:, None]
                if m.any():
                    parts[name] = float(right[m].float().mean())
        return loss, parts


class PointerHead(torch.nn.Module):
    """The pick as attention: logits over the current query frame's 64 image
    tokens, (W_q h_seg) . (W_k h_token) / sqrt(D), at the LLM's last layer; the answer is the
    target's tokens. Regressing the target's (x, y) from [SEG] left the motion pick at chance in
    every run (TRAINING.md): the gradient of one point says little about which token to read.
    A CE over tokens says it directly. It does not by itself put the target's place into the
    [SEG] state that prompts SAM2 (held-out J&F unchanged); with the centre regression
    weighted up (`motion_ground_weight`) the place starts to follow."""

    def __init__(self, dim: int):
        super().__init__()
        self.q = torch.nn.Linear(dim, dim)
        self.k = torch.nn.Linear(dim, dim)

    def forward(self, seg: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """seg [B, D], tokens [B, 64, D] → logits [B, 64]."""
        return torch.einsum("bd,bkd->bk", self.q(seg), self.k(tokens)) / seg.shape[-1] ** 0.5


def pointer_masks(video, owners: np.ndarray, target: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """bool [64] each: the frame's pooled tokens the target covers, and those its look-alike
    covers (all False without one); owners [64]: that frame's row of token_owners."""
    other = look_alike(video, target)
    return np.isin(owners, target), owners == (other if other is not None else -1)


def pointer_loss(logits: torch.Tensor, tmask: torch.Tensor, pmask: torch.Tensor, needs: list[str]):
    """logits [B, 64], tmask / pmask bool [B, 64] (pointer_masks), needs [B] → (CE of the
    target's tokens: -log of their summed probability, mean over rows where the target covers a
    token; parts): "ptr", the top token's hit rate per need ("ptr_colour", ...), and on motion
    expressions the pick between the target's and its look-alike's tokens ("ptr_pair_motion")."""
    ok = tmask.any(1)
    if not ok.any():
        return logits.sum() * 0, {}
    lse = torch.logsumexp(logits, 1)
    loss = (lse - torch.logsumexp(logits.masked_fill(~tmask, float("-inf")), 1))[ok].mean()
    parts = {"ptr": loss.item()}
    with torch.no_grad():
        rows = torch.arange(len(logits))
        hit = tmask[rows, logits.argmax(1)]
        nd = np.array(needs)
        for name in ("colour", "shape", "motion"):
            m = torch.from_numpy(nd == name) & ok
            if m.any():
                parts[f"ptr_{name}"] = float(hit[m].float().mean())
        both = ok & pmask.any(1) & torch.from_numpy(nd == "motion")
        if both.any():
            pick = logits.masked_fill(~(tmask | pmask), float("-inf")).argmax(1)
            parts["ptr_pair_motion"] = float(tmask[rows, pick][both].float().mean())
    return loss, parts


def nearest_pick(xy: np.ndarray, target: np.ndarray, others: np.ndarray) -> float:
    """1.0 when the point is nearer the target's centre than every other visible object's
    (others [O, 2], NaN rows: not visible), NaN when the target is not visible."""
    if np.isnan(target).any():
        return float("nan")
    d = np.linalg.norm(xy - target)
    rest = others[~np.isnan(others).any(-1)]
    return float(np.all(d < np.linalg.norm(rest - xy, axis=-1)))


def shared_prefix_forward(
    llm, prefixes: torch.Tensor, video_of: list[int], conts: list[torch.Tensor], prefix_hidden: bool = False
):
    """GLUS prompts that share a prefix, run as one prefill of each distinct prefix plus the
    continuations over its keys/values (the same numbers as running every whole prompt: causal
    attention, positions continued). prefixes [V, Lp, D] (equal lengths); video_of[b] = the prefix
    row of continuation b; conts[b] [L_b, D], right-padded here. Returns (prefix output, with
    hidden_states when prefix_hidden; continuation output with hidden_states; lengths). Stage 1c
    (one prefix per video) and stage 2 (one per sample) both run their prompts through it."""
    pre = llm(inputs_embeds=prefixes, use_cache=True, output_hidden_states=prefix_hidden)
    if len(prefixes) == 1:  # one prefix (stage 2's sample): a view, no copy per continuation
        kv = [
            (k.expand(len(conts), -1, -1, -1), v.expand(len(conts), -1, -1, -1))
            for k, v in ((layer.keys, layer.values) for layer in pre.past_key_values.layers)
        ]
    else:
        idx = torch.tensor(video_of)
        kv = [(layer.keys[idx], layer.values[idx]) for layer in pre.past_key_values.layers]
    cache = DynamicCache(kv)
    lengths = [c.shape[0] for c in conts]
    n_pre, lmax = prefixes.shape[1], max(lengths)
    batch = torch.stack([F.pad(c, (0, 0, 0, lmax - c.shape[0])) for c in conts])
    pos = torch.arange(n_pre, n_pre + lmax)[None].expand(len(conts), -1)
    out = llm(inputs_embeds=batch, position_ids=pos, past_key_values=cache, use_cache=True, output_hidden_states=True)
    return pre, out, lengths


def motion_draws(rng: np.random.Generator, video, n: int, motion_weight: float) -> list[tuple[int, int]]:
    """n (expression index, query frame t) draws: single-object targets visible in frame t;
    expressions that need the motion are drawn `motion_weight` times as often."""
    singles = [i for i, (_, ids) in enumerate(video.expressions) if len(ids) == 1]
    if not singles:
        return []
    w = np.array([motion_weight if video.needs(i) == "motion" else 1.0 for i in singles])
    out = []
    for _ in range(50 * n):
        if len(out) == n:
            break
        i = singles[int(rng.choice(len(singles), p=w / w.sum()))]
        t = int(rng.integers(0, len(video.frames)))
        if video.objects[video.expressions[i][1][0]][t].any():
            out.append((i, t))
    return out


def motion_step_loss(
    ref,
    cfg,
    ground_head: GroundingHead,
    head: MotionTokenHead,
    rng: np.random.Generator,
    prompts,
    *,
    video_index: int,
    pointer: PointerHead | None = None,
):
    """One stage-1c batch; returns (loss, parts) or None when nothing could be drawn. With a
    pointer head (and cfg.pointer_weight), the pick as a CE over the current frame's tokens too."""
    model = ref.model
    prefix_ids = prompts.prefix_ids()
    ctx_offsets = image_offsets(prefix_ids)
    ctx_layer, query_layer = motion_layers(model)
    prefixes, video_of, conts, at, labels, targets, pairs, others, needs = [], [], [], [], [], [], [], [], []
    current, masks = [], []  # the pointer's: the current frame's offset, pointer_masks
    per_video = max(1, cfg.motion_batch // cfg.motion_videos)
    for v in range(cfg.motion_videos):
        n = int(rng.integers(cfg.frames_min, cfg.frames_max + 1))
        video = make_train_video(cfg.train_data_seed + 900, video_index + v, n, cfg.size)
        ctx = context_frames(rng, n, cfg.exact_context_prob)
        draws = motion_draws(rng, video, per_video, cfg.motion_expr_weight)
        if not draws:
            continue
        used = sorted(set(ctx) | {f for _, t in draws for f in rules.window_positions(t + 1)})
        with torch.no_grad():  # CLIP is frozen here (stage 0b taught it)
            pooled = clip_pooled(model, torch.stack([clip_pixels(ref.clip_processor, video.frames[f]) for f in used]))
        images = model.mm_projector(pooled)
        row = {f: j for j, f in enumerate(used)}
        labs = motion_token_labels(video, used)
        obj_ids = sorted(video.objects)
        owners = token_owners(video, used) if pointer is not None else None
        vrow = len(prefixes)  # the video's prompts share its prefix (system, context frames, sentence)
        prefixes.append(model.embed_prompt(prefix_ids, images[[row[f] for f in ctx]])[0])
        for i, t in draws:
            text, tid = video.expressions[i]
            window = rules.window_positions(t + 1)
            rest = prompts.get(text, len(window))[0]
            b = len(conts)
            conts.append(model.embed_prompt(rest, images[[row[f] for f in window]])[0])
            video_of.append(vrow)
            offsets = image_offsets(rest)
            for s, f in zip(offsets, window):  # the query frames' tokens
                at.append((True, b, s))
                labels.append(labs[row[f]])
            if cfg.motion_context:  # context frames 2-4 (the first sees no earlier frame), once per
                for s, f in zip(ctx_offsets[1:], ctx[1:]):  # prompt as with unshared prompts
                    at.append((False, vrow, s))
                    labels.append(labs[row[f]])
            targets.append(target_locations(video, [tid], [t])[0, 0, 0])
            o = look_alike(video, tid)
            pairs.append(
                target_locations(video, [(o,)], [t])[0, 0, 0] if o is not None else np.full(2, np.nan, np.float32)
            )
            others.append(target_locations(video, [tuple(x for x in obj_ids if x != tid[0])], [t])[0, 0])
            needs.append(video.needs(i))
            if pointer is not None:
                current.append(offsets[-1])
                masks.append(pointer_masks(video, owners[row[t]], tid))
    if not conts:
        return None
    pre, out, lengths = shared_prefix_forward(
        model.llm.model, torch.stack(prefixes), video_of, conts, prefix_hidden=cfg.motion_context
    )
    hs = {True: out.hidden_states, False: pre.hidden_states}
    tl, parts = head.loss(
        torch.stack([hs[q][query_layer if q else ctx_layer][b, s : s + rules.TOKENS_PER_IMAGE] for q, b, s in at]),
        torch.stack(labels),
        torch.tensor([q for q, *_ in at]),
    )
    last = out.last_hidden_state[torch.arange(len(conts)), torch.tensor(lengths) - 1]
    xy = ground_head(last)
    tgt = torch.from_numpy(np.stack(targets))
    gl, gparts = grounding_loss(xy, tgt)
    parts.update(gparts, t_ce=tl.item())
    parts.update(pick_parts(xy.detach().numpy(), np.stack(targets), np.stack(pairs), others, needs))
    loss = cfg.motion_weight * tl + cfg.motion_ground_weight * gl
    if pointer is not None:
        pl, pparts = point_at(pointer, out, cfg.pointer_below, lengths, current, masks, needs)
        loss = loss + cfg.pointer_weight * pl
        parts.update(pparts)
    return loss, parts


def pick_parts(xy: np.ndarray, targets: np.ndarray, pairs: np.ndarray, others: list, needs: list[str]) -> dict:
    """Share of points nearest their target among all objects, per expression need ("p_colour",
    "p_shape", "p_motion"), and against the look-alike alone for motion ("p_pair_motion")."""
    near = np.array([nearest_pick(p, t, o) for p, t, o in zip(xy, targets, others)])
    pair = np.array([nearest_pick(p, t, o[None]) for p, t, o in zip(xy, targets, pairs)])
    needs = np.array(needs)
    out = {}
    for name in ("colour", "shape", "motion"):
        m = (needs == name) & ~np.isnan(near)
        if m.any():
            out[f"p_{name}"] = float(near[m].mean())
    m = (needs == "motion") & ~np.isnan(pair) & ~np.isnan(pairs).any(-1)
    if m.any():
        out["p_pair_motion"] = float(pair[m].mean())
    return out


def pretrain_motion(
    ref,
    cfg,
    ground_head: GroundingHead,
    head: MotionTokenHead,
    *,
    progress: bool = True,
    log=None,
    pointer: PointerHead | None = None,
) -> list[dict]:
    """Stage 1c (`--motion-steps`): LLM + projector (CLIP frozen) on GLUS's prompt, per-token
    motion CE at the middle layer and the target's location at the [SEG] position (and, with a
    pointer head, the pick over the current frame's tokens). With `pointer_from` K > 0 the stage
    runs in two phases, each with its own warm-up and cosine: K steps without the pointer and the
    centre x1 (the token skill first, as run H), then the rest with the pointer and the centre x
    `motion_ground_weight` (measured: the place follows the pick once the tokens know
    their motion)."""
    model = ref.model
    params = list(model.llm.parameters()) + list(model.mm_projector.parameters())
    rng = np.random.default_rng(cfg.seed + 23)
    prompts = PromptCache(ref.tokenizer)

    def phase(first: int, steps: int, ptr: PointerHead | None, ground_weight: float, desc: str) -> list[dict]:
        c = replace(cfg, motion_ground_weight=ground_weight)

        def step_loss(step):
            return motion_step_loss(
                ref, c, ground_head, head, rng, prompts, video_index=(first + step) * cfg.motion_videos, pointer=ptr
            )

        heads = list(ground_head.parameters()) + list(head.parameters())
        if ptr is not None:
            heads += list(ptr.parameters())
        hist = run_stage(
            params + heads, params, step_loss, c, steps=steps, lr=cfg.llm_lr, desc=desc, progress=progress, log=log
        )
        return [dict(h, step=h["step"] + first) for h in hist]

    if cfg.pointer_from < 0 or (pointer is not None and cfg.pointer_from and cfg.pointer_from >= cfg.motion_steps):
        raise ValueError(
            f"pointer_from {cfg.pointer_from} must be in [0, motion_steps {cfg.motion_steps}): "
            "the pointer phase would have no steps"
        )
    k = cfg.pointer_from if pointer is not None else 0
    if k <= 0:
        return phase(0, cfg.motion_steps, pointer, cfg.motion_ground_weight, "motion")
    return phase(0, k, None, 1.0, "motion") + phase(
        k, cfg.motion_steps - k, pointer, cfg.motion_ground_weight, "motion+pointer"
    )


def stage2_token_loss(
    model, head: MotionTokenHead, hidden_states, rest_ids: list[list[int]], windows_of, labels_of
) -> tuple[torch.Tensor, dict]:
    """The stage-2 form: hidden_states of the continuation after the shared prefix (one row per
    prompt, `rest_ids[b]` its ids, `windows_of[b]` its query frames), labels_of(frame) → [64]."""
    mid = hidden_states[motion_layers(model)[1]]
    at, labels = [], []
    for b, ids in enumerate(rest_ids):
        for s, f in zip(image_offsets(ids), windows_of[b]):
            at.append((b, s))
            labels.append(labels_of(f))
    return head.loss(torch.stack([mid[b, s : s + rules.TOKENS_PER_IMAGE] for b, s in at]), torch.stack(labels))


def point_at(
    pointer: PointerHead,
    out,
    below: bool,
    lengths: list[int],
    starts: list[int],
    masks: list[tuple[np.ndarray, np.ndarray]],
    needs: list[str],
) -> tuple[torch.Tensor, dict]:
    """pointer_loss for a right-padded batch: `out` the LLM's output (with hidden_states when
    `below`), row b's [SEG] state at lengths[b] - 1, its current frame's 64 tokens from starts[b],
    masks[b] = pointer_masks of that frame and row b's target. Stage 1c and stage 2 both call it."""
    hidden = out.hidden_states[-2] if below else out.last_hidden_state
    seg = hidden[torch.arange(len(lengths)), torch.tensor(lengths) - 1]
    toks = torch.stack([hidden[b, s : s + rules.TOKENS_PER_IMAGE] for b, s in enumerate(starts)])
    tm = torch.stack([torch.from_numpy(t) for t, _ in masks])
    pm = torch.stack([torch.from_numpy(p) for _, p in masks])
    return pointer_loss(pointer(seg, toks), tm, pm, needs)
