"""Train a small GLUS on synthetic referring videos, the way GLUS trains (model/GLUS.py), on a CPU.

    python -m training.train --out DIR --recipe glus-tiny-v5 --eval   # the default model (~3 h 20 min, 2 cores)
    python -m training.train --out DIR [--seed 0] [--steps N] [--sam-steps N]
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
   (training.dense_aux; from scratch the decoder's per-cell selection never learns shape
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
GLUS gets pretrained: 0b CLIP (`--clip-steps`, training.grounding), 1b the LLM's grounding
(`--ground-steps`) and 1c the LLM's motion and pointer (`--motion-steps`, training.motion), and
after stage 2 a stage 3 (`--finetune-steps`, training.finetune): GLUS's losses again on the saved
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
import os
import shutil
import sys
import time
from pathlib import Path

# Two OpenMP threads on two cores shared with other jobs: spinning workers waste most of the
# CPU (measured: 4x slower per step); sleep instead. Only effective before torch starts.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from reference.errors import CheckpointError
from runtime.paths import cache_dir

from .config import RECIPES, TRAIN_SHAPES, TrainConfig
from .data import write_heldout
from .evaluate import evaluate_checkpoint
from .finetune import add_finetune_log, finetune
from .stages import train


def main(argv=None) -> None:
    a, cfg = parse_args(argv)
    out = Path(a.out)
    t0 = time.time()
    if a.finetune_from:
        src = Path(a.finetune_from)
        if not cfg.finetune_steps:
            raise SystemExit("--finetune-from needs --finetune-steps N (N > 0)")
        try:
            _, hist, seconds = finetune(cfg, src, out, progress=not a.no_progress, vision_tower=a.vision_tower,
                                          log=print if a.no_progress else None)
        except CheckpointError as e:
            raise SystemExit(f"--finetune-from {src}: {e}") from None
        if (src / "train_log.json").is_file() and src.resolve() != out.resolve():
            shutil.copy2(src / "train_log.json", out / "train_log.json")
        add_finetune_log(out / "train_log.json", hist, seconds, str(src))
    else:
        _, hist = train(cfg, out, progress=not a.no_progress, vision_tower=a.vision_tower,
                          log=print if a.no_progress else None, from_stage1=a.from_stage1)
    print(f"trained {len(hist)} steps in {time.time() - t0:.0f} s → {out / 'glus'}, {out / 'clip'}")
    if a.eval:
        eh, _, ew = a.eval_size.partition("x")
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
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n")[0])
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
                        "(training.dense_aux), this weight; 0: off")
    p.add_argument("--encoder-steps", type=int, default=d.encoder_steps,
                   help="stage 0: SAM2's image encoder alone learns per-cell colour and "
                        "shape for this many steps before stage 1 (training.dense_aux)")
    p.add_argument("--clip-fine-weight", type=float, default=d.clip_fine_weight,
                   help="stage 0b: weight of the per-token regression of where in its strip objects are (0: off)")
    p.add_argument("--clip-steps", type=int, default=d.clip_steps,
                   help="stage 0b: CLIP alone learns per-token colour, shape and position "
                        "(training.grounding)")
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
                        "motion and the target's location (training.motion)")
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
                   help="stage 1c: x the pick as a CE over the current frame's tokens (training.motion.PointerHead)")
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
                   help="stage 3 (training.finetune): GLUS's losses again on the saved checkpoint, query runs "
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
