"""Train a small GLUS on synthetic referring videos, the way GLUS trains (model/GLUS.py), on a CPU.

    python -m reference.train --out DIR --recipe glus-tiny-v5 --eval   # the default model (~3 h 20 min, 2 cores)
    python -m reference.train --out DIR [--seed 0] [--steps N] [--sam-steps N]
                              [--minutes M] [--no-contrastive] [--no-memory] [--eval]
                              [--encoder-steps N] [--dense-weight W] [--locate]

Same topology as GLUS (CLIP-style ViT at 224/14 → 64 pooled tokens per frame → LLaMA → [SEG]
hidden state → text_hidden_fcs → SAM2 mask decoder, SAM2 memory bank), same prompt (4 context
frames, then a window of up to 4 query rounds in the llava_v1 template with past answers
"Sure, the segmentation result is [SEG]."; each query frame gets exactly the prompt
reference.segment_video builds for it), and the paper's losses:

- ce: token cross-entropy on the assistant answers, including the [SEG] token the current
  round must produce (GLUS's `ce_loss`, weight 1.0);
- bce + dice: per query frame, on the low-res mask logits upsampled to the frame size
  (GLUS's sigmoid_ce_loss x2.0 and dice_loss x0.5);
- memory: the query frames of a sample run in order through SAM2's memory bank (memory encoder
  on the conditioned feature and the predicted mask, memory attention for the next frames,
  GLUS's memory rule), all inside the autograd graph, so the bank is trained end to end;
- contrastive: the object contrastive loss (GLUS's ContrastiveLoss, tau 0.07, x0.1): the [SEG]
  embedding of an expression is pulled towards the [SEG] embeddings of the same object (other
  expressions, other query frames) and pushed away from those of the other objects of the same
  video, among them the same-shape distractor every synthetic video has (a hard false positive).

GLUS starts from pretrained parts: SAM2 (trained on SA-V) and LISA-7B, whose [SEG] token
already prompts SAM. Nothing of the kind exists at this size, so everything is trained from
scratch, in three stages, in one command:

0. Image-encoder pretraining (`--encoder-steps`): SAM2's image encoder alone learns, per cell
   of its lowest-resolution map, the colour and shape of the object there
   (reference.dense_aux; from scratch the decoder's per-cell selection never learns shape
   otherwise — models/glus-tiny/TRAINING.md).
1. SAM2 pretraining (`--sam-steps`): image encoder, memory bank and decoder learn to segment
   expressions prompted by a scaffold token (AttributePrompt: learned colour / shape / motion
   vectors summed; not part of GLUS, not saved) on videos of another data seed; expressions
   that colour alone cannot resolve are drawn 3x as often (`--sam-hard-weight`), and stage 0's
   head (plus a velocity head on the memory-conditioned map) stays on at x0.5 (`--dense-weight`).
2. GLUS training (`--steps`), every part, with the losses above. Its start bootstraps [SEG]
   (measured: from scratch the decoder learns to ignore a [SEG] token that does not yet tell
   objects apart and stays in that saddle for hundreds of steps): the first `mask_warmup` steps
   train the LLM side only (ce + contrastive x0.1 + a distillation loss towards the scaffold
   token of the expression), SAM2 stays frozen until `freeze_sam_steps`, and the distillation
   weight decays linearly to 0 at `point_until`; from there on only GLUS's losses train.

The default model (v5, `--recipe glus-tiny-v5`) first runs three optional stages for the parts
GLUS gets pretrained: 0b CLIP (`--clip-steps`, reference.grounding), 1b the LLM's grounding
(`--ground-steps`) and 1c the LLM's motion and pointer (`--motion-steps`, reference.motion), and
after stage 2 a stage 3 (`--finetune-steps`, reference.finetune): GLUS's losses again on the saved
weights, query runs drawn from the video's start more often.

The two layer-scale tensors GLUS's loader never loads (memory encoder fuser gamma) would stay
at 1e-6; this shape has no fuser layer (their output would be scaled by 1e-6 anyway). Besides
the main mask, the decoder's three multimask outputs and its IoU head get an auxiliary loss: at
inference SAM2's dynamic-multimask-via-stability may pick them.

Writes OUT/glus (config.json, tokenizer, sam2_config.yaml, model.safetensors: GLUS key names)
and OUT/clip (an openai/clip-vit layout: CLIPModel with a minimal text tower), the layout
`reference.load` reads; also OUT/train_log.json (and OUT/eval.json with --eval).
See models/glus-tiny/TRAINING.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Two OpenMP threads on two cores shared with other jobs: spinning workers waste most of the
# CPU (measured: 4x slower per step); sleep instead. Only effective before torch starts.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from reference.make_tiny import glus_config
from runtime import rules
from .dense_aux import DenseAttributeHead, dense_labels
from .grounding import (GroundingHead, clip_pooled, grounding_loss, grounding_step_loss, pretrain_clip,
                        pretrain_grounding)
from reference.model import ImageFeatures
from .motion import (MotionTokenHead, PointerHead, image_offsets, motion_token_labels, point_at, pointer_masks,
                     pretrain_motion, shared_prefix_forward, stage2_token_loss, token_owners)
from .data import TRAIN_DATA_SEED_BASE, Sample, make_sample, make_train_video

# ---------------------------------------------------------------------------------------------
# Model sizes
# ---------------------------------------------------------------------------------------------
# name → LLaMA / CLIP vision / SAM2 sizes (the SAM2 keys are reference.make_tiny.write_sam2_yaml's
# plus a few more edited into the YAML below).
TRAIN_SHAPES = {
    "small": {
        "llama": dict(hidden_size=128, intermediate_size=344, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048),
        "clip": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                     num_attention_heads=4, projection_dim=32),
        "sam2": dict(image_size=128, embed_dim=32, stages=[1, 2, 2, 1], global_att_blocks=[4],
                     num_heads=1, mem_layers=2, mem_ffn=512, fuser_layers=0,
                     window_spec=[8, 4, 8, 4]),
    },
}
TRAIN_SHAPES["small256"] = {**TRAIN_SHAPES["small"],
                             "sam2": dict(TRAIN_SHAPES["small"]["sam2"], image_size=256,
                                          window_spec=[8, 4, 14, 7])}
# A 4-layer LLM: room for reference.motion's two token layers (context frames after layer 1, query
# frames after layer 2) below the two that match words at [SEG].
TRAIN_SHAPES["small4"] = {**TRAIN_SHAPES["small"],
                          "llama": dict(TRAIN_SHAPES["small"]["llama"], num_hidden_layers=4)}
# For tests only: the same code path in seconds.
TRAIN_SHAPES["test"] = {
    "llama": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  num_key_value_heads=1, max_position_embeddings=2048),
    "clip": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 projection_dim=16),
    "sam2": dict(image_size=64, embed_dim=8, stages=[1, 1, 2, 1], global_att_blocks=[3],
                 num_heads=1, mem_layers=1, mem_ffn=64, fuser_layers=0, window_spec=[4, 2, 2, 1]),
}
DEFAULT_SHAPE = "small"
# CLIP's text tower is never used by GLUS; the CLIP directory keeps a minimal one.
CLIP_TEXT = dict(vocab_size=64, hidden_size=32, intermediate_size=32, num_hidden_layers=1,
                 num_attention_heads=1, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                 pad_token_id=1)


@dataclass
class TrainConfig:
    shape: str = DEFAULT_SHAPE
    seed: int = 0
    steps: int = 1300
    minutes: float | None = None  # wall-clock cap (then the run is no longer reproducible)
    frames_min: int = 8  # training video lengths are drawn in [frames_min, frames_max]
    frames_max: int = 16
    size: tuple[int, int] = (128, 128)
    n_query: int = 4  # consecutive query frames per sample (the memory-bank run)
    exprs: int = 4  # expressions per sample (GLUS num_classes_per_sample: 3)
    lr: float = 3e-4  # GLUS's; 1e-3 stalls SAM2's decoder from scratch here
    min_lr_frac: float = 0.05
    warmup: int = 50
    # stage 1: SAM2 pretraining, prompted by AttributePrompt tokens
    sam_steps: int = 2400  # 800 until session 4; with the two below (D's recipe) J&F 0.566 -> 0.602
    sam_lr: float = 3e-4
    sam_exprs: int = 6  # expressions per stage-1 sample
    sam_memory_from: int = 400  # first frame by frame, then with the memory bank
    sam_hard_weight: float = 3.0  # stage-1 sampling weight of expressions colour alone cannot resolve
    # reference.dense_aux: stage 0, the image encoder alone on per-cell colour / shape (steps,
    # lr), then the same head (+ velocity on the memory-conditioned map) x dense_weight in
    # stage 1; experiment F, shipped in session 4: held-out shape 0.364 -> 0.548, J&F 0.650
    encoder_steps: int = 4000
    encoder_lr: float = 1e-3
    dense_weight: float = 0.5
    dense_grid: int = 16
    keep_stage1: bool = False  # also write OUT/stage1.pt (every weight before stage 2)
    # reference.grounding (session 6): stage 0b, CLIP alone on per-token colour / shape /
    # position; stage 1b, the LLM says where the described object is (one frame for the first
    # ground_single_steps, then up to ground_frames consecutive frames); ground_weight: the same
    # head on the [SEG] position in stage 2
    clip_steps: int = 0
    clip_lr: float = 1e-3
    clip_fine_weight: float = 0.0  # stage 0b: x MSE of the sub-strip object cover (reference.grounding.clip_fine_cover)
    ground_steps: int = 0
    ground_single_steps: int = 0
    ground_frames: int = 4
    ground_batch: int = 32
    ground_videos: int = 8  # videos per stage-1b step (ground_batch // ground_videos draws each)
    ground_attr_weight: float = 0.1  # stage 1b: the target's colour / shape CE (the first hop)
    ground_answer_weight: float = 1.0  # stage 1b: CE on GLUS's answer text + [SEG] (stage 2's first CE)
    # stage 2 rehearses stage 1b: each step adds one varied one-frame grounding batch (ground_mix_batch
    # prompts from 4 fresh videos) x ground_mix, as LISA/GLUS mix their datasets; stage 2's own
    # batches come from one video, which never (re)learned the location (session 6)
    ground_mix: float = 0.0
    ground_mix_batch: int = 16
    # stage 2's rate for the LLM body, projector and CLIP, as a fraction of llm_lr (the [SEG] head
    # keeps llm_lr): a grounded LLM (stage 1b) is fine-tuned, not rebuilt, by stage 2's big early losses
    stage2_llm_scale: float = 1.0
    ground_weight: float = 0.0
    # reference.motion (session 8): stage 1c, the LLM over GLUS's prompt learns each query-frame
    # token's object motion (middle layer, x motion_weight) and the target's location ([SEG]
    # position); motion_stage2_weight keeps the token loss in stage 2
    motion_steps: int = 0
    motion_weight: float = 1.0
    motion_ground_weight: float = 1.0  # stage 1c: x the [SEG] centre's MSE (session 10: x20 lets the place follow the pointer)
    motion_stage2_weight: float = 0.0
    motion_context: bool = False  # stage 1c also asks context frames 2-4, at a lower layer (reference.motion)
    motion_expr_weight: float = 3.0  # stage 1c draws expressions that need the motion this much more often
    # reference.motion.PointerHead (session 10): the pick as a CE over the current frame's tokens
    # from the [SEG] position, x pointer_weight in stage 1c, x pointer_stage2_weight in stage 2
    pointer_weight: float = 0.0
    pointer_stage2_weight: float = 0.0
    # point from the input of the LLM's last layer (hidden_states[-2]), so that layer can fetch
    # what the [SEG] position points at (the target's tokens, their place) into the [SEG] state
    pointer_below: bool = False
    # stage 1c's first pointer_from steps run without the pointer and with the centre x1, then the
    # rest with both, the rate warmed up again (reference.motion.pretrain_motion; 0: one phase)
    pointer_from: int = 0
    motion_videos: int = 8
    motion_batch: int = 32
    llm_lr: float = 1e-3  # CLIP, projector, LLaMA, text_hidden_fcs: from scratch, a faster rate
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ce_weight: float = 1.0
    bce_weight: float = 2.0
    dice_weight: float = 0.5
    aux_mask_weight: float = 0.25  # multimask outputs 1..3
    iou_weight: float = 0.5
    contrastive: bool = True
    contrastive_weight: float = 0.1
    # Stage-2 start (see the module docstring): [SEG] output-layer init scale, LLM-only steps,
    # SAM2 frozen until, distillation towards the scaffold token (weight, decays to 0 at).
    seg_init_scale: float = 1.0
    mask_warmup: int = 400
    freeze_sam_steps: int = 500
    point_weight: float = 1.0
    point_until: int = 1000
    contrastive_weight_warmup: float = 0.1  # GLUS's weight throughout (1.0 until session 4)
    # experiment (off in the shipped model): the scaffold token also says where the target is
    # (see AttributePrompt); stage-1 location noise
    locate: bool = False
    locate_jitter: float = 0.03
    locate_drop: float = 0.3
    tau: float = 0.07
    bank_size: int = 256
    bank_negatives: int = 0  # GLUS also draws negatives from other videos; 0: same video only
    memory: bool = True
    exact_context_prob: float = 0.5
    threads: int = 2
    ckpt_every: int = 500
    weights_dtype: str = "float16"  # what the shipped checkpoint stores
    # reference.finetune (stage 3, session 15): GLUS's losses again on the saved checkpoint, the query
    # run starting at frame 0 with probability finetune_early, at finetune_lr_scale x stage 2's rates
    finetune_steps: int = 0
    finetune_early: float = 0.5
    finetune_lr_scale: float = 0.3

    @property
    def train_data_seed(self) -> int:
        return TRAIN_DATA_SEED_BASE + self.seed


# ---------------------------------------------------------------------------------------------
# Building and saving the checkpoint (the layout reference.make_tiny writes)
# ---------------------------------------------------------------------------------------------
def write_sam2_yaml(path: Path, s: dict) -> None:
    from omegaconf import OmegaConf

    from reference.make_tiny import write_sam2_yaml as base

    base(path, s)
    cfg = OmegaConf.load(str(path))
    m = cfg.model
    m.memory_encoder.fuser.num_layers = s.get("fuser_layers", 2)
    if "window_spec" in s:  # hiera's attention windows, fitted to the smaller feature maps
        m.image_encoder.trunk.window_spec = list(s["window_spec"])
    layer = m.memory_attention.layer
    layer.dropout = 0.0  # no dropout: data is unlimited (inference is unaffected)
    layer.self_attention.dropout = 0.0
    layer.cross_attention.dropout = 0.0
    OmegaConf.save(cfg, str(path))


def write_clip_dir(clip_dir: Path, vision_sizes: dict, vision_state: dict | None, dtype) -> None:
    """openai/clip-vit layout (CLIPModel + preprocessor) with a minimal text tower."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    vision = dict(image_size=224, patch_size=14,
                  **{k: v for k, v in vision_sizes.items() if k != "projection_dim"})
    cfg = CLIPConfig(text_config=CLIP_TEXT, vision_config=vision,
                     projection_dim=vision_sizes["projection_dim"])
    clip = CLIPModel(cfg)
    if vision_state is not None:
        clip.vision_model.load_state_dict(vision_state, strict=True)
    clip.to(dtype).save_pretrained(str(clip_dir))
    CLIPImageProcessorPil().save_pretrained(str(clip_dir))


def init_checkpoint(out: Path, shape_name: str, seed: int):
    """A seeded random GLUS of the training shape, written and loaded back with reference.load."""
    from transformers import CLIPVisionConfig

    from reference.checkpoint import glus_state_dict, save_glus_weights
    from reference.config import read_config
    from reference.loader import load
    from reference.model import GlusModel
    from reference.tokenizer import load_tokenizer, train_tiny_tokenizer

    shape = TRAIN_SHAPES[shape_name]
    glus_dir, clip_dir = out / "glus", out / "clip"
    for d in (glus_dir, clip_dir):
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
    train_tiny_tokenizer(glus_dir)
    tokenizer = load_tokenizer(glus_dir)
    torch.manual_seed(seed + 1)
    write_clip_dir(clip_dir, shape["clip"], None, torch.float32)
    write_sam2_yaml(glus_dir / "sam2_config.yaml", shape["sam2"])
    config = glus_config(tokenizer, shape, str(clip_dir.resolve()), "float32")
    (glus_dir / "config.json").write_text(json.dumps(config, indent=2))
    torch.manual_seed(seed)
    model = GlusModel(read_config(glus_dir), CLIPVisionConfig.from_pretrained(str(clip_dir)))
    save_glus_weights(glus_state_dict(model), glus_dir)
    return load(glus_dir, clip_dir)


def default_vision_tower(clip_dir: Path) -> str:
    """config.json's vision_tower: the CLIP dir relative to the working directory when it lies
    below it (a committed checkpoint must not name this machine's paths), else absolute."""
    clip_dir = Path(clip_dir).resolve()
    try:
        return str(clip_dir.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(clip_dir)


def save_checkpoint(ref, out: Path, shape_name: str, dtype: str = "float16",
                    vision_tower: str | None = None) -> tuple[Path, Path]:
    """OUT/glus + OUT/clip in the released layout (weights cast to `dtype`)."""
    from reference.checkpoint import glus_state_dict, save_glus_weights

    shape = TRAIN_SHAPES[shape_name]
    tdtype = getattr(torch, dtype)
    out = Path(out)
    glus_dir, clip_dir = out / "glus", out / "clip"
    tmp = out / ".saving"
    if tmp.exists():
        shutil.rmtree(tmp)
    tg, tc = tmp / "glus", tmp / "clip"
    tg.mkdir(parents=True)
    tc.mkdir(parents=True)
    src = ref.checkpoint
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                 "added_tokens.json", "sam2_config.yaml"):
        shutil.copy2(src / name, tg / name)
    config = glus_config(ref.tokenizer, shape, vision_tower or default_vision_tower(clip_dir), dtype)
    (tg / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    state = {k: v.to(tdtype) for k, v in glus_state_dict(ref.model).items()}
    save_glus_weights(state, tg)
    write_clip_dir(tc, shape["clip"], ref.model.clip.state_dict(), tdtype)
    for final, new in ((glus_dir, tg), (clip_dir, tc)):
        if final.exists():
            shutil.rmtree(final)
        new.rename(final)
    shutil.rmtree(tmp)
    return glus_dir, clip_dir


# ---------------------------------------------------------------------------------------------
# Forward pieces (the same modules GlusModel's inference methods call, with grad)
# ---------------------------------------------------------------------------------------------
def clip_tokens(model, pixels: torch.Tensor) -> torch.Tensor:
    """= GlusModel.encode_clip, without running the CLIP layers after the selected one."""
    return model.mm_projector(clip_pooled(model, pixels))


class PromptCache:
    """Token ids of GLUS prompts and their answer targets, per (expression, window length)."""

    def __init__(self, tok):
        self.tok = tok
        self.marker = tok.encode_chunk(rules.ASSISTANT_ROLE + ":")
        self._cache: dict = {}

    def prefix_ids(self) -> list[int]:
        """BOS, system, "USER:", the 4 context images and the context sentence."""
        if "prefix" not in self._cache:
            self._cache["prefix"] = self.tok.encode_prompt(rules.prefix_text())
        return self._cache["prefix"]

    def get(self, expr: str, n_rounds: int):
        """(ids after the prefix, [(position in the whole prompt, target id)])."""
        key = (expr, n_rounds)
        if key not in self._cache:
            text = rules.prompt_text(expr, [rules.ANSWER_SEG] * (n_rounds - 1))
            ids = self.tok.encode_prompt(text)
            prefix, rest = rules.split_prefix(text)
            rest_ids = rules.tokenize_with_images(rest, self.tok.encode_chunk, None)
            if self.prefix_ids() + rest_ids != ids:
                raise AssertionError("prefix + rest tokenisation differs from the whole prompt")
            self._cache[key] = (rest_ids, self.answer_targets(ids))
        return self._cache[key]

    def answer_targets(self, ids: list[int]) -> list[tuple[int, int]]:
        """[(expanded position whose hidden state predicts, target id)]: every assistant answer
        token (as GLUS's labels), then [SEG] from the last prompt position (the current round)."""
        pos, shift = [], 0
        for t in ids:
            pos.append(len(pos) + shift)
            if t == rules.IMAGE_TOKEN_INDEX:
                shift += rules.TOKENS_PER_IMAGE - 1
        m = self.marker
        starts = [k + len(m) for k in range(len(ids) - len(m) + 1) if ids[k:k + len(m)] == m]
        out = []
        eos = self.tok.eos_id
        for s in starts:
            k = s
            while k < len(ids):
                if k == len(ids) - 1 and not self.tok.decode([ids[k]]).strip():
                    break  # the trailing "▁" of the current round: GLUS never trains on it
                out.append((pos[k] - 1, ids[k]))
                if ids[k] == eos:
                    break
                k += 1
        out.append((pos[-1], self.tok.seg_id))
        return out


def decode_all(model, feats: ImageFeatures, conditioned: torch.Tensor, seg: torch.Tensor):
    """GlusModel.decode, returning all four mask outputs and IoU predictions. `seg`: [B, 256]
    ([SEG] embeddings, one sparse token each) or [B, N, 256] (other sparse prompts)."""
    sam = model.sam
    pe = sam.sam_prompt_encoder
    b = seg.shape[0]
    if seg.dim() == 2:
        seg = seg[:, None]
    image_embed = model._to_map(conditioned, feats.sizes[-1])
    high_res = [model._to_map(t, s) for t, s in zip(feats.tokens[:-1], feats.sizes[:-1])]
    h, w = feats.sizes[-1]
    dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(b, -1, h, w)
    masks, iou, _, _ = sam.sam_mask_decoder.predict_masks(
        image_embeddings=image_embed, image_pe=pe.get_dense_pe(),
        sparse_prompt_embeddings=seg, dense_prompt_embeddings=dense,
        repeat_image=False, high_res_features=high_res,
    )
    return masks, iou


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


def contrastive_loss(seg: torch.Tensor, targets: list[tuple], tau: float,
                     bank_neg: torch.Tensor | None) -> torch.Tensor | None:
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
            logits = torch.cat([sim[a, b:b + 1], neg_logits])
            losses.append(torch.logsumexp(logits, 0) - sim[a, b])
    if not losses:
        return None
    return torch.stack(losses).mean()


# ---------------------------------------------------------------------------------------------
# One training step
# ---------------------------------------------------------------------------------------------
@dataclass
class StepOut:
    loss: torch.Tensor
    parts: dict = field(default_factory=dict)


def forward_sample(ref, prompts: PromptCache, sample: Sample, cfg: TrainConfig,
                   bank: SegBank | None, rng: random.Random, masks_on: bool = True,
                   point_weight: float = 0.0, prompt: "AttributePrompt | None" = None,
                   ground_head: "GroundingHead | None" = None,
                   motion_head: "MotionTokenHead | None" = None,
                   pointer: "PointerHead | None" = None) -> StepOut:
    from reference.preprocess import clip_pixels

    model, tok = ref.model, ref.tokenizer
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
    # sample: one prefill, its keys/values shared by all continuations (exact: FINDINGS.md).
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
    if token_motion:  # reference.motion: each query-frame token says how its object moves
        labs = motion_token_labels(video, needed)
        tl, tparts = stage2_token_loss(model, motion_head, llm_out.hidden_states, rest_ids,
                                       [w for _ in exprs for w in windows], lambda f: labs[row[f]])
        loss = loss + cfg.motion_stage2_weight * tl
        parts.update(tparts, t_ce=tl.item())
    if pointing:  # the [SEG] position points at the target's tokens
        owners = token_owners(video, sample.query)  # each window ends on its query frame
        masks = [pointer_masks(video, owners[j], tuple(ids)) for _, ids in exprs for j in range(q)]
        needs = [video.needs(i) for i in sample.exprs for _ in windows]
        pl, pparts = point_at(pointer, llm_out, cfg.pointer_below, lengths,
                              [image_offsets(ids)[-1] for ids in rest_ids], masks, needs)
        loss = loss + cfg.pointer_stage2_weight * pl
        parts.update(pparts)
    if ground_head is not None:  # reference.grounding: the [SEG] position says where the target is
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


def memory_run(model, feats: ImageFeatures, k: int, prompt_at, memory: bool, on_frame,
               on_cond=None) -> None:
    """SAM2 over the q query frames of `feats` in order, K prompts each (`prompt_at(j)`), with
    GLUS's memory rule and the memory bank inside the autograd graph. `on_frame(j, masks, iou)`
    sees each frame's decoder outputs before the next frame's memory is encoded; `on_cond(j,
    cond)` each memory-conditioned feature map (frames that read at least one memory)."""
    q = feats.tokens[0].shape[1]
    mem: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for j in range(q):
        fj = ImageFeatures(
            tokens=[t[:, j:j + 1].expand(-1, k, -1) for t in feats.tokens],
            pos=[p[:, j:j + 1].expand(-1, k, -1) for p in feats.pos],
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
    from reference.preprocess import sam_pixels

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


def target_locations(video, targets: list[tuple[int, ...]], frames: list[int]):
    """Where each target is in each frame: centres [K, Q, O, 2], (x, y) in [0, 1], the centroid
    of each of the target's O objects' visible pixels; NaN where an object is not visible (and
    in the padding of targets with fewer objects)."""
    h, w = next(iter(video.objects.values())).shape[-2:]
    n_obj = max(len(t) for t in targets)
    centres = np.full((len(targets), len(frames), n_obj, 2), np.nan, dtype=np.float32)
    for k, ids in enumerate(targets):
        for o, obj in enumerate(ids):
            for j, f in enumerate(frames):
                ys, xs = np.nonzero(video.objects[obj][f])
                if len(xs):
                    centres[k, j, o] = ((xs.mean() + 0.5) / w, (ys.mean() + 0.5) / h)
    return centres


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
        from evalkit import synth

        names = (["base", "plural"] + [f"colour:{c}" for c in synth.COLOURS]
                 + [f"shape:{s}" for s in synth.SHAPES] + [f"motion:{m}" for m in synth.MOTIONS])
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

    def forward(self, attrs: list[dict], centres: np.ndarray | None = None,
                drop: np.ndarray | None = None) -> torch.Tensor:
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


def forward_sam_attr(ref, video, query: list[int], exprs: list[int], cfg: TrainConfig,
                     prompt: AttributePrompt, rng: np.random.Generator | None = None,
                     dense=None) -> StepOut:
    """Stage 1: SAM2 (image encoder, memory, decoder) segments expressions prompted by
    AttributePrompt tokens, over a run of query frames with the memory bank in the graph."""
    from reference.preprocess import sam_pixels

    model = ref.model
    k = len(exprs)
    feats = model.encode_image(torch.stack([sam_pixels(video.frames[f], model.sam_image_size)
                                            for f in query]))
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
    if dense is not None:  # reference.dense_aux: per-cell colour / shape / velocity
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

    memory_run(model, feats, k, (lambda j: tok[:, j]) if tok.dim() == 3 else (lambda j: tok),
               cfg.memory, on_frame, on_cond)
    bce, dice = torch.cat(bces).mean(), torch.cat(dices).mean()
    aux, il = torch.cat(auxs).mean(), torch.cat(ious).mean()
    loss = cfg.bce_weight * bce + cfg.dice_weight * dice + cfg.aux_mask_weight * aux + cfg.iou_weight * il
    if dense_terms:
        loss = loss + cfg.dense_weight * sum(dense_terms)
        if dense_terms[1:]:
            dense_parts["d_vel"] = float(np.nanmean(vel_acc))
    per_expr = torch.stack(hit).mean(0)  # [K]
    needs = [video.needs(i) for i in exprs]
    parts = {"loss": loss.item(), "bce": bce.item(), "dice": dice.item(), "aux": aux.item(),
             "iou": il.item(), "IoU": float(per_expr.mean()), **dense_parts}
    for need in ("colour", "shape", "motion"):  # IoU by what the expression needs
        mine = torch.tensor([n == need for n in needs])
        if mine.any():
            parts[f"IoU_{need}"] = float(per_expr[mine].mean())
    return StepOut(loss, parts)


# ---------------------------------------------------------------------------------------------
# Training loop
# ---------------------------------------------------------------------------------------------
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


UNUSED_PREFIXES = ("sam.obj_ptr_proj", "sam.obj_ptr_tpos_proj", "sam.maskmem_tpos_enc",
                   "sam.no_obj_ptr", "sam.no_obj_embed_spatial", "sam.mask_downsample",
                   "sam.sam_prompt_encoder.point_embeddings", "sam.sam_prompt_encoder.not_a_point_embed",
                   "sam.sam_prompt_encoder.mask_downscaling", "sam.no_mem_pos_enc",
                   "sam.sam_mask_decoder.pred_obj_score_head", "sam.sam_mask_decoder.obj_score_token")


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


class _Progress:
    """tqdm bar with smoothed loss values, and/or a plain log line every `every` steps."""

    KEYS = ("loss", "ce", "bce", "dice", "con", "point", "IoU", "IoU_colour", "IoU_shape", "IoU_motion", "sens",
            "d_col", "d_shape", "d_vel", "c_col", "c_shape", "c_pos", "c_fine", "g_mse", "g_pick", "g_pick_motion", "g_attr", "g_ce", "m_mse", "m_pick",
            "t_ce", "t_acc", "t_acc_ctx", "p_colour", "p_shape", "p_motion", "p_pair_motion", "ptr", "ptr_motion", "ptr_pair_motion")

    def __init__(self, total: int, desc: str, progress: bool, log, every: int = 50):
        from tqdm import tqdm

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


def pretrain_on_frames(params, frame_loss, cfg, *, steps: int, lr: float, rng_seed: int, data_seed: int,
                       desc: str, progress: bool = True, log=None) -> list[dict]:
    """The loop of the single-encoder stages (0 and 0b): per step one fresh video, n_query random
    frames of it, `frame_loss(video, frames)` → (loss, parts), AdamW with warm-up + cosine."""
    rng = np.random.default_rng(rng_seed)

    def step_loss(step):
        n = int(rng.integers(cfg.frames_min, cfg.frames_max + 1))
        video = make_train_video(data_seed, step, n, cfg.size)
        return frame_loss(video, sorted(int(f) for f in rng.choice(n, cfg.n_query, replace=False)))

    return run_stage(params, params, step_loss, cfg, steps=steps, lr=lr, desc=desc, progress=progress, log=log)


def run_stage(params, clipped, step_loss, cfg, *, steps: int, lr: float, desc: str, progress: bool = True,
              log=None) -> list[dict]:
    """The pretraining stages' loop: AdamW over `params` with warm-up + cosine to `lr`,
    step_loss(step) → (loss, parts) or None (nothing drawn: no update), the gradient of
    `clipped` clipped to cfg.grad_clip; returns every step's parts."""
    opt = _optimizer(params, lr, cfg)
    bar = _Progress(steps, desc, progress, log)
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


def pretrain_encoder(model, head: DenseAttributeHead, cfg, *, progress: bool = True, log=None) -> list[dict]:
    """Stage 0 (`--encoder-steps`): SAM2's image encoder alone learns per-cell colour
    and shape (reference.dense_aux's static loss) on frames of yet another data seed, before stage 1.
    Measured in a probe: per-cell shape starts to emerge only after ~1,400 such steps, too late
    inside stage 1's shared budget; encoder-only steps are ~6x cheaper than stage-1 steps."""
    from reference.preprocess import sam_pixels

    def frame_loss(video, frames):
        feats = model.encode_image(torch.stack([sam_pixels(video.frames[f], model.sam_image_size) for f in frames]))
        labels = torch.from_numpy(dense_labels(video, frames, cfg.dense_grid))
        return head.static_loss(feats.tokens[-1], feats.sizes[-1], labels)

    params = list(model.sam.image_encoder.parameters()) + list(head.parameters())
    return pretrain_on_frames(params, frame_loss, cfg, steps=cfg.encoder_steps, lr=cfg.encoder_lr,
                              rng_seed=cfg.seed + 11, data_seed=cfg.train_data_seed + 900,
                              desc="encoder", progress=progress, log=log)


def pretrain_sam(ref, cfg: TrainConfig, *, progress: bool = True, log=None):
    """Stage 1: SAM2 alone (image encoder, memory bank, decoder) learns to segment expressions
    prompted by AttributePrompt tokens, on training videos of its own data seed. GLUS starts from
    a pretrained SAM2 and a LISA whose [SEG] already prompts it; this stage stands in for both."""
    model = ref.model
    prompt = AttributePrompt(model.sam.hidden_dim, model.sam.sam_prompt_encoder.pe_layer if cfg.locate else None)
    # built only when used: its random init shifts every later random draw
    dense = DenseAttributeHead(model.sam.hidden_dim) if cfg.dense_weight > 0 or cfg.encoder_steps else None
    encoder_history = (pretrain_encoder(model, dense, cfg, progress=progress, log=log)
                       if cfg.encoder_steps else [])
    if cfg.dense_weight == 0:
        dense = None  # stage 0 only
    aux_params = list(prompt.parameters()) + (list(dense.parameters()) if dense is not None else [])
    params = [p for n, p in trainable_parameters(model)
              if n.startswith("sam.") and not n.startswith(UNUSED_PREFIXES)]
    opt = torch.optim.AdamW([{"params": params, "peak": cfg.sam_lr},
                             {"params": aux_params, "peak": cfg.llm_lr}],
                            lr=cfg.sam_lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed + 7)
    bar = _Progress(cfg.sam_steps, "sam2", progress, log)
    history = []
    t0 = time.time()
    for step in range(cfg.sam_steps):
        n = int(rng.integers(cfg.frames_min, cfg.frames_max + 1))
        video = make_train_video(cfg.train_data_seed + 500, step, n, cfg.size)
        start = int(rng.integers(0, n - cfg.n_query + 1))
        query = list(range(start, start + cfg.n_query))
        exprs = sample_stage1_expressions(rng, video, cfg.sam_exprs, cfg.sam_hard_weight)
        step_cfg = cfg if step >= cfg.sam_memory_from else _replace(cfg, memory=False)
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


def _replace(cfg: TrainConfig, **kw) -> TrainConfig:
    from dataclasses import replace

    return replace(cfg, **kw)


@dataclass
class _PreStage2:
    """What stages 0b, 1b, 1c, 0 and 1 hand to stage 2 (besides the model's weights)."""
    prompt: "AttributePrompt | None"
    ground_head: "GroundingHead | None"
    clip_history: list
    ground_history: list
    sam_history: list
    encoder_history: list
    motion_head: "MotionTokenHead | None" = None
    motion_history: list = field(default_factory=list)
    pointer: "PointerHead | None" = None
    pre_seconds: float = 0.0
    sam_seconds: float = 0.0

    def save(self, path: Path, model) -> None:
        torch.save({"model": model.state_dict(),
                    "prompt": None if self.prompt is None else self.prompt.state_dict(),
                    "ground_head": None if self.ground_head is None else self.ground_head.state_dict(),
                    "motion_head": None if self.motion_head is None else self.motion_head.state_dict(),
                    "pointer": None if self.pointer is None else self.pointer.state_dict()},
                   path)

    @classmethod
    def load(cls, path, ref, cfg: TrainConfig) -> "_PreStage2":
        state = torch.load(path, map_location="cpu", weights_only=False)
        model = ref.model
        model.load_state_dict(state["model"])
        prompt = ground_head = None
        if state["prompt"] is not None:
            prompt = AttributePrompt(model.sam.hidden_dim,
                                     model.sam.sam_prompt_encoder.pe_layer if cfg.locate else None)
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
    import hashlib

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
    ground_head = (GroundingHead(model.llm.config.hidden_size)
                   if cfg.ground_steps or cfg.ground_weight or cfg.ground_mix or cfg.motion_steps else None)
    ground_history = (pretrain_grounding(ref, cfg, ground_head, progress=progress, log=log)
                      if cfg.ground_steps else [])
    motion_head = (MotionTokenHead(model.llm.config.hidden_size)
                   if cfg.motion_steps or cfg.motion_stage2_weight else None)
    # created only when asked, so runs without it keep their random draws
    pointer = (PointerHead(model.llm.config.hidden_size)
               if (cfg.motion_steps and cfg.pointer_weight) or cfg.pointer_stage2_weight else None)
    motion_history = (pretrain_motion(ref, cfg, ground_head, motion_head, progress=progress, log=log,
                                      pointer=pointer if cfg.pointer_weight else None)
                      if cfg.motion_steps else [])
    t0 = time.time()
    prompt, sam_history, encoder_history = (pretrain_sam(ref, cfg, progress=progress, log=log)
                                            if cfg.sam_steps else (None, [], []))
    return _PreStage2(prompt, ground_head, clip_history, ground_history, sam_history, encoder_history,
                      motion_head, motion_history, pointer, pre_seconds=t0 - t_pre, sam_seconds=time.time() - t0)


def train(cfg: TrainConfig, out: str | Path, *, progress: bool = True, log=None, eval_fn=None,
          vision_tower: str | None = None, from_stage1: str | Path | None = None):
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
        groups += [{"params": [p for p in other if id(p) in body], "peak": cfg.llm_lr * cfg.stage2_llm_scale},
                   {"params": [p for p in other if id(p) not in body], "peak": cfg.llm_lr}]
    else:
        groups.append({"params": other, "peak": cfg.llm_lr})
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    prompts = PromptCache(ref.tokenizer)
    bank = SegBank(cfg.bank_size) if cfg.contrastive and cfg.bank_negatives > 0 else None
    data_rng = np.random.default_rng(cfg.seed)
    py_rng = random.Random(cfg.seed)
    history = []
    bar = _Progress(cfg.steps, "glus", progress, log)
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
            step_cfg = _replace(cfg, contrastive_weight=cfg.contrastive_weight_warmup)
        pw = cfg.point_weight * max(0.0, 1 - step / cfg.point_until) if cfg.point_until else 0.0
        res = forward_sample(ref, prompts, sample, step_cfg, bank, py_rng, masks_on=not warm,
                             point_weight=pw, prompt=prompt,
                             ground_head=ground_head if cfg.ground_weight else None,
                             motion_head=motion_head, pointer=pointer)
        loss = res.loss
        mix_parts = {}
        if cfg.ground_mix:
            out_mix = grounding_step_loss(ref, cfg, ground_head, mix_rng, mix_answers, kmax=1, n_videos=4,
                                          video_index=10_000_000 + 4 * step, batch=cfg.ground_mix_batch)
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
        parts = dict(res.parts, **mix_parts, gnorm=float(gn), lr=opt.param_groups[0]["lr"], step=step,
                     t=round(time.time() - t0, 1))
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
    log_path.write_text(json.dumps({
        "config": asdict(cfg), **({"from_stage1": str(from_stage1)} if from_stage1 is not None else {}),
        **({"stage1_sha256": stage1_sha256} if stage1_sha256 is not None else {}),
        "sam_steps_done": len(sam_history), "steps_done": step + 1,
        "sam_seconds": round(sam_seconds, 1), "train_seconds": round(wall, 1),
        "sam_history": sam_history, "history": history,
        **({"encoder_history": encoder_history} if cfg.encoder_steps else {}),
        **({"clip_history": clip_history, "pre_seconds": round(pre_seconds, 1)}
           if cfg.clip_steps or cfg.ground_steps else {}),
        **({"ground_history": ground_history} if cfg.ground_steps else {}),
        **({"motion_history": pre.motion_history} if cfg.motion_steps else {})}))
    if cfg.finetune_steps:
        from .finetune import finetune

        ref, ft_history, ft_seconds = finetune(cfg, out, out, progress=progress, log=log, vision_tower=vision_tower)
        add_finetune_log(log_path, ft_history, ft_seconds)
    return ref, history


def add_finetune_log(log_path: Path, history: list[dict], seconds: float, src: str | None = None) -> None:
    d = json.loads(log_path.read_text()) if log_path.is_file() else {}
    d.update(finetune_history=history, finetune_seconds=round(seconds, 1),
             **({"finetune_from": src} if src is not None else {}))
    log_path.write_text(json.dumps(d))


# ---------------------------------------------------------------------------------------------
# Held-out evaluation (reference.segment_video, scored with evalkit)
# ---------------------------------------------------------------------------------------------
def evaluate_checkpoint(glus_dir, clip_dir, data: list[tuple[str, str]], *, use_memory: bool = True,
                        threads: int = 2, progress: bool = False, limit: int | None = None) -> dict:
    """J&F of reference.segment_video (offline, GLUS's loop) on held-out MeViS-layout sets."""
    from evalkit.heldout import score

    from reference.inference import segment_video
    from reference.loader import load

    torch.set_num_threads(threads)
    ref = load(glus_dir, clip_dir)
    counts = {"seg": 0, "steps": 0}

    def segment(frames, texts):
        out = []
        for text in texts:
            res = segment_video(ref, frames, text, use_memory=use_memory)
            counts["seg"] += sum(r.is_seg for r in res.frames)
            counts["steps"] += len(res.frames)
            out.append(res.masks)
        return out

    r = score(segment, data, limit=limit, progress=progress, desc="reference")
    r["seg_token_rate"] = counts["seg"] / max(1, counts["steps"])
    return r


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
# The shipped models' recipes, by name: `--recipe NAME` stands for these flags (flags given after
# it on the command line, or anywhere, still win). v4 = run R1 of models/glus-tiny/TRAINING.md.
RECIPES = {
    "glus-tiny-v3": [],
    "glus-tiny-v4": ("--shape small4 --locate --clip-steps 12000 --clip-fine-weight 20 "
                     "--ground-steps 1200 --ground-single-steps 1200 --ground-weight 20 --ground-mix 10 "
                     "--stage2-llm-scale 0.1 --motion-steps 2750 --pointer-from 1200 --motion-context "
                     "--motion-stage2-weight 1 --motion-ground-weight 20 --pointer-weight 1 "
                     "--pointer-stage2-weight 1 --pointer-below --sam-steps 4400").split(),
}
# v5 = v4, then stage 3 (reference.finetune) on v4's saved weights (session 15)
RECIPES["glus-tiny-v5"] = RECIPES["glus-tiny-v4"] + "--finetune-steps 1200 --finetune-early 0.5 --finetune-lr-scale 0.3".split()


def main(argv=None) -> None:
    a, cfg = parse_args(argv)
    out = Path(a.out)
    t0 = time.time()
    if a.finetune_from:
        from .finetune import finetune

        src = Path(a.finetune_from)
        if not cfg.finetune_steps:
            raise SystemExit("--finetune-from needs --finetune-steps N (N > 0)")
        from reference.errors import CheckpointError

        try:
            ref, hist, seconds = finetune(cfg, src, out, progress=not a.no_progress, vision_tower=a.vision_tower,
                                          log=print if a.no_progress else None)
        except CheckpointError as e:
            raise SystemExit(f"--finetune-from {src}: {e}") from None
        if (src / "train_log.json").is_file() and src.resolve() != out.resolve():
            shutil.copy2(src / "train_log.json", out / "train_log.json")
        add_finetune_log(out / "train_log.json", hist, seconds, str(src))
    else:
        ref, hist = train(cfg, out, progress=not a.no_progress, vision_tower=a.vision_tower,
                          log=print if a.no_progress else None, from_stage1=a.from_stage1)
    print(f"trained {len(hist)} steps in {time.time() - t0:.0f} s → {out / 'glus'}, {out / 'clip'}")
    if a.eval:
        from .data import write_heldout

        eh, _, ew = a.eval_size.partition("x")
        from runtime.paths import cache_dir

        data_dir = (Path(a.eval_data) if a.eval_data else
                    cache_dir() / f"heldout-{a.eval_videos}x{a.eval_frames}-{a.eval_size}")
        data = write_heldout(data_dir, a.eval_videos, a.eval_frames, (int(eh), int(ew)))
        results = {}
        for name, mem in (("offline", True), ("no_memory", False)):
            t1 = time.time()
            r = evaluate_checkpoint(out / "glus", out / "clip", data, use_memory=mem, threads=a.threads)
            r["seconds"] = round(time.time() - t1, 1)
            results[name] = r
            print(f"held-out {name}: J {r['J']:.4f} F {r['F']:.4f} J&F {r['JF']:.4f} "
                  f"({r['n_expressions']} expressions, [SEG] rate {r['seg_token_rate']:.3f})")
        (out / "eval.json").write_text(json.dumps(results, indent=1))


def parse_args(argv=None) -> tuple[argparse.Namespace, TrainConfig]:
    """The command line → (its namespace, the TrainConfig it asks for)."""
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m reference.train", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output directory (gets glus/ and clip/)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--steps", type=int, default=d.steps, help="GLUS training steps (stage 2)")
    p.add_argument("--sam-steps", type=int, default=d.sam_steps,
                   help="SAM2 pretraining steps (stage 1)")
    p.add_argument("--freeze-sam-steps", type=int, default=d.freeze_sam_steps)
    p.add_argument("--mask-warmup", type=int, default=d.mask_warmup,
                   help="stage 2's first steps that train the LLM side only (no mask losses)")
    p.add_argument("--point-until", type=int, default=d.point_until,
                   help="[SEG] bootstrap loss decays to 0 at this stage-2 step (0: off)")
    p.add_argument("--minutes", type=float, default=None, help="stop after this wall time (not reproducible)")
    p.add_argument("--shape", choices=sorted(TRAIN_SHAPES), default=d.shape)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--exprs", type=int, default=d.exprs, help="expressions per sample")
    p.add_argument("--query-frames", type=int, default=d.n_query)
    p.add_argument("--frames", type=str, default=f"{d.frames_min}-{d.frames_max}",
                   help="training video length range, e.g. 8-16")
    p.add_argument("--size", type=str, default=f"{d.size[0]}x{d.size[1]}")
    p.add_argument("--no-contrastive", action="store_true", help="train without the contrastive loss")
    p.add_argument("--contrastive-warmup-weight", type=float, default=d.contrastive_weight_warmup,
                   help="contrastive weight during the [SEG] bootstrap (until --point-until); "
                        "GLUS's own weight (0.1) applies after it")
    p.add_argument("--no-memory", action="store_true", help="train without the memory bank")
    p.add_argument("--sam-hard-weight", type=float, default=d.sam_hard_weight,
                   help="stage 1: sampling weight of expressions colour alone cannot resolve")
    p.add_argument("--dense-weight", type=float, default=d.dense_weight,
                   help="per-cell colour/shape/velocity supervision of SAM2's features in stage 1 "
                        "(reference.dense_aux), this weight; 0: off")
    p.add_argument("--encoder-steps", type=int, default=d.encoder_steps,
                   help="stage 0: SAM2's image encoder alone learns per-cell colour and "
                        "shape for this many steps before stage 1 (reference.dense_aux)")
    p.add_argument("--clip-fine-weight", type=float, default=d.clip_fine_weight,
                   help="stage 0b: weight of the per-token regression of where in its strip objects are (0: off)")
    p.add_argument("--clip-steps", type=int, default=d.clip_steps,
                   help="stage 0b: CLIP alone learns per-token colour, shape and position "
                        "(reference.grounding)")
    p.add_argument("--ground-steps", type=int, default=d.ground_steps,
                   help="stage 1b: the LLM learns to say where the described object is")
    p.add_argument("--ground-single-steps", type=int, default=d.ground_single_steps,
                   help="stage 1b: this many first steps on one frame (then up to --ground-frames)")
    p.add_argument("--ground-frames", type=int, default=d.ground_frames)
    p.add_argument("--ground-weight", type=float, default=d.ground_weight,
                   help="stage 2: weight of the same location loss on the [SEG] position")
    p.add_argument("--ground-mix", type=float, default=d.ground_mix,
                   help="stage 2 also takes one varied one-frame grounding batch per step, x this weight")
    p.add_argument("--stage2-llm-scale", type=float, default=d.stage2_llm_scale,
                   help="stage 2's rate for the LLM body, projector and CLIP, as a fraction of the LLM rate")
    p.add_argument("--motion-steps", type=int, default=d.motion_steps,
                   help="stage 1c: the LLM, over GLUS's prompt, learns each query-frame token's object "
                        "motion and the target's location (reference.motion)")
    p.add_argument("--motion-weight", type=float, default=d.motion_weight,
                   help="stage 1c: weight of the per-token motion loss")
    p.add_argument("--motion-ground-weight", type=float, default=d.motion_ground_weight,
                   help="stage 1c: x the [SEG] position's centre regression")
    p.add_argument("--motion-context", action="store_true",
                   help="stage 1c: also ask context frames 2-4 for their tokens' motion, at a quarter of the "
                        "LLM's depth (the query frames at half of it)")
    p.add_argument("--motion-stage2-weight", type=float, default=d.motion_stage2_weight,
                   help="stage 2: weight of the same per-token motion loss (0: off)")
    p.add_argument("--pointer-weight", type=float, default=d.pointer_weight,
                   help="stage 1c: x the pick as a CE over the current frame's tokens (reference.motion.PointerHead)")
    p.add_argument("--pointer-stage2-weight", type=float, default=d.pointer_stage2_weight,
                   help="stage 2: x the same pointer CE from the [SEG] position")
    p.add_argument("--pointer-below", action="store_true",
                   help="point from the input of the LLM's last layer, so that layer can fetch the place into [SEG]")
    p.add_argument("--motion-batch", type=int, default=d.motion_batch,
                   help=f"stage 1c: prompts per step, spread over its {d.motion_videos} videos")
    p.add_argument("--pointer-from", type=int, default=d.pointer_from,
                   help="stage 1c: steps before the pointer and --motion-ground-weight switch on (a second warm-up there)")
    p.add_argument("--locate", action="store_true",
                   help="experiment: the scaffold token also encodes where the target is")
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--ckpt-every", type=int, default=d.ckpt_every)
    p.add_argument("--weights-dtype", choices=["float16", "float32"], default=d.weights_dtype)
    p.add_argument("--vision-tower", default=None,
                   help="value written to config.json's vision_tower (default: the absolute CLIP dir)")
    p.add_argument("--eval", action="store_true", help="score the result on the held-out set")
    p.add_argument("--eval-videos", type=int, default=24)
    p.add_argument("--eval-frames", type=int, default=12)
    p.add_argument("--eval-size", type=str, default="128x128")
    p.add_argument("--eval-data", default=None,
                   help="where the held-out set is written (default: the cache, shared with benchmarks.heldout)")
    p.add_argument("--keep-stage1", action="store_true",
                   help="also write OUT/stage1.pt (every weight before stage 2, for experiments)")
    p.add_argument("--from-stage1", default=None, metavar="STAGE1_PT",
                   help="development: skip stages 0b/1b/1c/0/1 and start stage 2 from a --keep-stage1 snapshot "
                        "(the same stage flags must be given)")
    p.add_argument("--finetune-steps", type=int, default=d.finetune_steps,
                   help="stage 3 (reference.finetune): GLUS's losses again on the saved checkpoint, query runs "
                        "from the video's start (0: off)")
    p.add_argument("--finetune-early", type=float, default=d.finetune_early,
                   help="stage 3: probability that a sample's query run starts at frame 0")
    p.add_argument("--finetune-lr-scale", type=float, default=d.finetune_lr_scale,
                   help="stage 3: its rates as a fraction of stage 2's")
    p.add_argument("--finetune-from", default=None, metavar="DIR",
                   help="run stage 3 alone on DIR/glus + DIR/clip (give the recipe's flags too)")
    p.add_argument("--llm-lr", type=float, default=d.llm_lr, help="peak rate of the LLM side and the scaffold (stages 1, 1b, 2)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                   help="a shipped model's flags (glus-tiny-v5: the default model); other flags override them")
    argv = sys.argv[1:] if argv is None else list(argv)
    a = p.parse_args(argv)
    if a.recipe:  # the recipe's flags first, so that the ones given explicitly override them
        a = p.parse_args(RECIPES[a.recipe] + argv)
    if not 0.0 <= a.finetune_early <= 1.0:
        p.error(f"--finetune-early is a probability, got {a.finetune_early}")
    if a.finetune_lr_scale <= 0 or a.finetune_steps < 0:
        p.error("--finetune-lr-scale must be > 0 and --finetune-steps >= 0")
    if a.motion_batch < d.motion_videos or a.motion_batch % d.motion_videos:
        p.error(f"--motion-batch must be a positive multiple of {d.motion_videos} (the videos of a stage-1c step)")
    if a.mask_warmup < 0:
        p.error("--mask-warmup must be >= 0")
    fmin, _, fmax = a.frames.partition("-")
    h, _, w = a.size.partition("x")
    cfg = TrainConfig(
        shape=a.shape, seed=a.seed, steps=a.steps, minutes=a.minutes, lr=a.lr, warmup=a.warmup,
        exprs=a.exprs, n_query=a.query_frames, frames_min=int(fmin), frames_max=int(fmax or fmin),
        size=(int(h), int(w)), contrastive=not a.no_contrastive, memory=not a.no_memory,
        threads=a.threads, ckpt_every=a.ckpt_every, weights_dtype=a.weights_dtype,
        sam_steps=a.sam_steps, freeze_sam_steps=a.freeze_sam_steps, point_until=a.point_until,
        mask_warmup=a.mask_warmup, motion_batch=a.motion_batch,
        keep_stage1=a.keep_stage1, contrastive_weight_warmup=a.contrastive_warmup_weight,
        locate=a.locate, sam_hard_weight=a.sam_hard_weight, dense_weight=a.dense_weight,
        encoder_steps=a.encoder_steps, clip_steps=a.clip_steps, clip_fine_weight=a.clip_fine_weight, ground_steps=a.ground_steps,
        ground_single_steps=a.ground_single_steps, ground_frames=a.ground_frames,
        ground_weight=a.ground_weight, llm_lr=a.llm_lr, ground_mix=a.ground_mix,
        stage2_llm_scale=a.stage2_llm_scale, motion_steps=a.motion_steps, motion_weight=a.motion_weight,
        motion_stage2_weight=a.motion_stage2_weight, motion_context=a.motion_context,
        motion_ground_weight=a.motion_ground_weight,
        pointer_weight=a.pointer_weight, pointer_stage2_weight=a.pointer_stage2_weight, pointer_below=a.pointer_below,
        pointer_from=a.pointer_from, finetune_steps=a.finetune_steps, finetune_early=a.finetune_early,
        finetune_lr_scale=a.finetune_lr_scale,
    )
    return a, cfg


if __name__ == "__main__":
    main()
