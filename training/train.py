"""Train a small GLUS on synthetic referring videos, the way GLUS trains (model/GLUS.py), on a CPU.

    python -m training.train --out DIR --recipe glus-tiny-v5 --eval   # the default model (~3 h 20 min, 2 cores)
    python -m training.train --out DIR [--seed 0] [--steps N] [--sam-steps N]
                             [--minutes M] [--no-contrastive] [--no-memory] [--eval]
                             [--encoder-steps N] [--dense-weight W] [--locate]

Every field of training.config.TrainConfig is a flag (`--help` lists them, with the field's help
and default); `--recipe NAME` stands for a shipped model's settings, and flags given explicitly
win over it.

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
import dataclasses
import json
import os
import shutil
import sys
import time
import typing
from pathlib import Path

# Two OpenMP threads on two cores shared with other jobs: spinning workers waste most of the
# CPU (measured: 4x slower per step); sleep instead. Only effective before torch starts.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from reference.errors import CheckpointError
from runtime.paths import cache_dir

from .config import RECIPES, TrainConfig
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
            _, hist, seconds = finetune(
                cfg,
                src,
                out,
                progress=not a.no_progress,
                vision_tower=a.vision_tower,
                log=print if a.no_progress else None,
            )
        except CheckpointError as e:
            raise SystemExit(f"--finetune-from {src}: {e}") from None
        if (src / "train_log.json").is_file() and src.resolve() != out.resolve():
            shutil.copy2(src / "train_log.json", out / "train_log.json")
        add_finetune_log(out / "train_log.json", hist, seconds, str(src))
    else:
        _, hist = train(
            cfg,
            out,
            progress=not a.no_progress,
            vision_tower=a.vision_tower,
            log=print if a.no_progress else None,
            from_stage1=a.from_stage1,
        )
    print(f"trained {len(hist)} steps in {time.time() - t0:.0f} s → {out / 'glus'}, {out / 'clip'}")
    if a.eval:
        eh, _, ew = a.eval_size.partition("x")
        data_dir = (
            Path(a.eval_data) if a.eval_data else cache_dir() / f"heldout-{a.eval_videos}x{a.eval_frames}-{a.eval_size}"
        )
        data = write_heldout(data_dir, a.eval_videos, a.eval_frames, (int(eh), int(ew)))
        results = {}
        for name, mem in (("offline", True), ("no_memory", False)):
            t1 = time.time()
            r = evaluate_checkpoint(out / "glus", out / "clip", data, use_memory=mem, threads=cfg.threads)
            r["seconds"] = round(time.time() - t1, 1)
            results[name] = r
            print(
                f"held-out {name}: J {r['J']:.4f} F {r['F']:.4f} J&F {r['JF']:.4f} "
                f"({r['n_expressions']} expressions, [SEG] rate {r['seg_token_rate']:.3f})"
            )
        (out / "eval.json").write_text(json.dumps(results, indent=1))


def _pair(sep: str, what: str):
    """argparse type: "A{sep}B" (or "A": A twice) → (int A, int B)."""

    def parse(text: str) -> tuple[int, int]:
        a, _, b = text.partition(sep)
        try:
            return int(a), int(b or a)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what}: {text!r}") from None

    return parse


def add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, all of it from the field (training.config says how): the
    namespace gets only the flags the command line gives (no defaults), so that they can win
    over a recipe."""
    hints = typing.get_type_hints(TrainConfig)
    group = p.add_argument_group("training settings (training.config.TrainConfig)")
    for f in dataclasses.fields(TrainConfig):
        meta = f.metadata
        flag = meta.get("flag", "--" + f.name.replace("_", "-"))
        if flag is None:
            continue
        kind, kw = hints[f.name], {"dest": f.name, "default": argparse.SUPPRESS}
        if kind is bool:
            if f.default:  # on by default: the flag turns it off
                flag = "--no-" + f.name.replace("_", "-")
                kw.update(action="store_false", help="without " + meta["help"])
            else:
                kw.update(action="store_true", help=meta["help"])
            group.add_argument(flag, **kw)
            continue
        if "range_to" in meta:
            kw["type"], shown = _pair("-", "MIN-MAX"), f"{f.default}-{getattr(TrainConfig, meta['range_to'])}"
        elif kind == tuple[int, int]:
            kw["type"], shown = _pair("x", "HxW"), "x".join(map(str, f.default))
        else:
            kw["type"] = next(t for t in (int, float, str) if kind is t or kind == t | None)
            shown = f.default
        if "choices" in meta:
            kw["choices"] = meta["choices"]
        else:  # named after the flag, not after the field
            kw["metavar"] = meta.get("metavar", flag[2:].replace("-", "_").upper())
        group.add_argument(flag, help=f"{meta['help']} (default: {shown})", **kw)


def config_from(a: argparse.Namespace) -> TrainConfig:
    """The recipe's settings (if any), then the config flags given, over TrainConfig's defaults."""
    given = {}
    for f in dataclasses.fields(TrainConfig):
        if f.name in vars(a):
            given[f.name] = getattr(a, f.name)
            if "range_to" in f.metadata:  # --frames MIN-MAX sets two fields
                given[f.name], given[f.metadata["range_to"]] = given[f.name]
    return TrainConfig(**{**RECIPES.get(a.recipe or "", {}), **given})


def parse_args(argv=None) -> tuple[argparse.Namespace, TrainConfig]:
    """The command line → (its namespace, the TrainConfig it asks for)."""
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output directory (gets glus/ and clip/)")
    p.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        default=None,
        help="a shipped model's settings (glus-tiny-v5: the default model; training.config.RECIPES); "
        "flags given explicitly win over them",
    )
    p.add_argument(
        "--vision-tower",
        default=None,
        help="value written to config.json's vision_tower (default: the CLIP dir, relative to the "
        "working directory when below it)",
    )
    p.add_argument("--eval", action="store_true", help="score the result on the held-out set")
    p.add_argument("--eval-videos", type=int, default=24)
    p.add_argument("--eval-frames", type=int, default=12)
    p.add_argument("--eval-size", type=str, default="128x128")
    p.add_argument(
        "--eval-data",
        default=None,
        help="where the held-out set is written (default: the cache, shared with benchmarks.heldout)",
    )
    p.add_argument(
        "--from-stage1",
        default=None,
        metavar="STAGE1_PT",
        help="development: skip stages 0b/1b/1c/0/1 and start stage 2 from a --keep-stage1 snapshot "
        "(the same stage flags must be given)",
    )
    p.add_argument(
        "--finetune-from",
        default=None,
        metavar="DIR",
        help="run stage 3 alone on DIR/glus + DIR/clip (give the recipe's flags too)",
    )
    p.add_argument("--no-progress", action="store_true")
    add_config_flags(p)
    a = p.parse_args(sys.argv[1:] if argv is None else list(argv))
    cfg = config_from(a)
    for problem in cfg.problems():
        p.error(problem)
    return a, cfg


if __name__ == "__main__":
    main()
