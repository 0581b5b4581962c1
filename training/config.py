"""What a training run is: the model sizes it trains, TrainConfig (every stage's steps, rates and
loss weights) and the shipped models' recipes.

TrainConfig is also the command line: every field is a flag of `python -m training.train`
(training.train derives them), its name with dashes (`sam_steps` → `--sam-steps`), its type and
default the field's, its help the field's `help`. A boolean that defaults to True is turned off
with `--no-NAME`, one that defaults to False on with `--NAME`; `flag` renames a field's flag,
`flag=None` leaves it without one, and `range_to` makes one flag set two fields (`--frames
MIN-MAX`: frames_min and frames_max); `choices` and `metavar` are argparse's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .data import TRAIN_DATA_SEED_BASE

# name → LLaMA / CLIP vision / SAM2 sizes (the SAM2 keys are reference.make_tiny.write_sam2_yaml's
# plus a few more edited into the YAML by training.checkpoints.write_sam2_yaml).
TRAIN_SHAPES = {
    "small": {
        "llama": {
            "hidden_size": 128,
            "intermediate_size": 344,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 2048,
        },
        "clip": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "projection_dim": 32,
        },
        "sam2": {
            "image_size": 128,
            "embed_dim": 32,
            "stages": [1, 2, 2, 1],
            "global_att_blocks": [4],
            "num_heads": 1,
            "mem_layers": 2,
            "mem_ffn": 512,
            "fuser_layers": 0,
            "window_spec": [8, 4, 8, 4],
        },
    },
}
TRAIN_SHAPES["small256"] = {
    **TRAIN_SHAPES["small"],
    "sam2": dict(TRAIN_SHAPES["small"]["sam2"], image_size=256, window_spec=[8, 4, 14, 7]),
}
# A 4-layer LLM: room for training.motion's two token layers (context frames after layer 1, query
# frames after layer 2) below the two that match words at [SEG].
TRAIN_SHAPES["small4"] = {**TRAIN_SHAPES["small"], "llama": dict(TRAIN_SHAPES["small"]["llama"], num_hidden_layers=4)}
# For tests only: the same code path in seconds.
TRAIN_SHAPES["test"] = {
    "llama": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 2048,
    },
    "clip": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "projection_dim": 16,
    },
    "sam2": {
        "image_size": 64,
        "embed_dim": 8,
        "stages": [1, 1, 2, 1],
        "global_att_blocks": [3],
        "num_heads": 1,
        "mem_layers": 1,
        "mem_ffn": 64,
        "fuser_layers": 0,
        "window_spec": [4, 2, 2, 1],
    },
}
DEFAULT_SHAPE = "small"
# CLIP's text tower is never used by GLUS; the CLIP directory keeps a minimal one.
CLIP_TEXT = {
    "vocab_size": 64,
    "hidden_size": 32,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 1,
    "max_position_embeddings": 16,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "pad_token_id": 1,
}


def opt(default, help: str, **flag):
    """A TrainConfig field: its default, its command-line help and, in `flag`, how its flag
    differs from the rule (flag, range_to, choices, metavar: the module docstring)."""
    return field(default=default, metadata={"help": help, **flag})


@dataclass
class TrainConfig:
    shape: str = opt(DEFAULT_SHAPE, "model sizes (TRAIN_SHAPES)", choices=tuple(sorted(TRAIN_SHAPES)))
    seed: int = opt(0, "run seed: the init, every stage's draws and (offset) its training videos")
    steps: int = opt(1300, "GLUS training steps (stage 2)")
    minutes: float | None = opt(None, "stop stage 2 after this wall time (the run is then no longer reproducible)")
    frames_min: int = opt(
        8,
        "training video length range, e.g. 8-16 (one number: that length)",
        flag="--frames",
        metavar="MIN-MAX",
        range_to="frames_max",
    )
    frames_max: int = opt(16, "longest training video (set with --frames)", flag=None)
    size: tuple[int, int] = opt((128, 128), "training frame size", metavar="HxW")
    n_query: int = opt(4, "consecutive query frames per sample (the memory-bank run)", flag="--query-frames")
    exprs: int = opt(4, "expressions per sample (GLUS num_classes_per_sample: 3)")
    lr: float = opt(3e-4, "stage 2's peak rate of SAM2 (GLUS's; 1e-3 stalls SAM2's decoder from scratch)")
    min_lr_frac: float = opt(0.05, "every stage's cosine decays to this fraction of its peak rate")
    warmup: int = opt(50, "linear warm-up steps of every stage's rate")
    # stage 1: SAM2 pretraining, prompted by AttributePrompt tokens
    sam_steps: int = opt(2400, "SAM2 pretraining steps (stage 1)")
    sam_lr: float = opt(3e-4, "stage 1: peak rate of SAM2")
    sam_exprs: int = opt(6, "stage 1: expressions per sample")
    sam_memory_from: int = opt(400, "stage 1: the first steps run frame by frame, then with the memory bank")
    sam_hard_weight: float = opt(3.0, "stage 1: sampling weight of expressions colour alone cannot resolve")
    # training.dense_aux: stage 0, the image encoder alone on per-cell colour / shape, then the
    # same head (+ velocity on the memory-conditioned map) in stage 1
    encoder_steps: int = opt(
        4000,
        "stage 0: SAM2's image encoder alone learns per-cell colour and shape "
        "for this many steps before stage 1 (training.dense_aux)",
    )
    encoder_lr: float = opt(1e-3, "stage 0: peak rate")
    dense_weight: float = opt(
        0.5,
        "per-cell colour/shape/velocity supervision of SAM2's features in stage 1 "
        "(training.dense_aux), this weight; 0: off",
    )
    dense_grid: int = opt(16, "stages 0 and 1: the per-cell labels' grid (cells per side)")
    keep_stage1: bool = opt(False, "also write OUT/stage1.pt (every weight before stage 2, for experiments)")
    # training.grounding: stage 0b, CLIP alone on per-token colour / shape / position; stage 1b,
    # the LLM says where the described object is; ground_weight: the same head on the [SEG]
    # position in stage 2
    clip_steps: int = opt(0, "stage 0b: CLIP alone learns per-token colour, shape and position (training.grounding)")
    clip_lr: float = opt(1e-3, "stage 0b: peak rate")
    clip_fine_weight: float = opt(
        0.0,
        "stage 0b: weight of the per-token regression of where in its strip objects "
        "are (training.grounding.clip_fine_cover; 0: off)",
    )
    ground_steps: int = opt(0, "stage 1b: the LLM learns to say where the described object is")
    ground_single_steps: int = opt(0, "stage 1b: this many first steps on one frame (then up to --ground-frames)")
    ground_frames: int = opt(4, "stage 1b: at most this many consecutive frames per prompt")
    ground_batch: int = opt(32, "stage 1b: prompts per step")
    ground_videos: int = opt(8, "stage 1b: videos per step (--ground-batch // this many draws each)")
    ground_attr_weight: float = opt(0.1, "stage 1b: weight of the target's colour / shape CE (the first hop)")
    ground_answer_weight: float = opt(
        1.0, "stage 1b: weight of the CE on GLUS's answer text and [SEG] (so that stage 2's CE starts low)"
    )
    # Stage 2 rehearses stage 1b, as LISA/GLUS mix their datasets: stage 2's own batches come
    # from one video, which alone never (re)learns the location.
    ground_mix: float = opt(
        0.0,
        "stage 2 also takes one varied one-frame grounding batch per step "
        "(--ground-mix-batch prompts from 4 fresh videos), x this weight",
    )
    ground_mix_batch: int = opt(16, "stage 2: prompts of that grounding batch")
    # A grounded LLM (stage 1b) is fine-tuned, not rebuilt, by stage 2's big early losses.
    stage2_llm_scale: float = opt(
        1.0,
        "stage 2's rate for the LLM body, projector and CLIP, as a fraction of the LLM rate (the [SEG] head keeps it)",
    )
    ground_weight: float = opt(0.0, "stage 2: weight of the same location loss on the [SEG] position")
    # training.motion: stage 1c, the LLM over GLUS's prompt learns each query-frame token's object
    # motion (middle layer) and the target's location ([SEG] position)
    motion_steps: int = opt(
        0,
        "stage 1c: the LLM, over GLUS's prompt, learns each query-frame token's object "
        "motion and the target's location (training.motion)",
    )
    motion_weight: float = opt(1.0, "stage 1c: weight of the per-token motion loss")
    motion_ground_weight: float = opt(
        1.0, "stage 1c: x the [SEG] position's centre regression (x20 lets the place follow the pointer)"
    )
    motion_stage2_weight: float = opt(0.0, "stage 2: weight of the same per-token motion loss (0: off)")
    motion_context: bool = opt(
        False,
        "stage 1c: also ask context frames 2-4 for their tokens' motion, at a "
        "quarter of the LLM's depth (the query frames at half of it)",
    )
    motion_expr_weight: float = opt(3.0, "stage 1c: expressions that need the motion are drawn this much more often")
    # training.motion.PointerHead: the pick as a CE over the current frame's tokens from the
    # [SEG] position
    pointer_weight: float = opt(
        0.0, "stage 1c: x the pick as a CE over the current frame's tokens (training.motion.PointerHead)"
    )
    pointer_stage2_weight: float = opt(0.0, "stage 2: x the same pointer CE from the [SEG] position")
    # Pointing from the input of the LLM's last layer (hidden_states[-2]) lets that layer fetch
    # what the [SEG] position points at (the target's tokens, their place) into the [SEG] state.
    pointer_below: bool = opt(
        False, "point from the input of the LLM's last layer, so that layer can fetch the place into [SEG]"
    )
    pointer_from: int = opt(
        0,
        "stage 1c: steps before the pointer and --motion-ground-weight switch on "
        "(a second warm-up there; training.motion.pretrain_motion; 0: one phase)",
    )
    motion_videos: int = opt(8, "stage 1c: videos per step")
    motion_batch: int = opt(32, "stage 1c: prompts per step, spread evenly over its --motion-videos videos")
    llm_lr: float = opt(
        1e-3,
        "peak rate of the LLM side (CLIP, projector, LLaMA, text_hidden_fcs: from "
        "scratch, a faster rate) and the scaffold (stages 1, 1b, 1c, 2)",
    )
    weight_decay: float = opt(0.0, "AdamW's weight decay, every stage")
    grad_clip: float = opt(1.0, "gradient-norm clip, every stage")
    ce_weight: float = opt(1.0, "stage 2: weight of the token CE (GLUS's ce_loss)")
    bce_weight: float = opt(2.0, "weight of the mask BCE (GLUS's sigmoid_ce_loss)")
    dice_weight: float = opt(0.5, "weight of the mask Dice loss (GLUS's dice_loss)")
    aux_mask_weight: float = opt(0.25, "weight of the mask losses of the decoder's multimask outputs 1..3")
    iou_weight: float = opt(0.5, "weight of the decoder's IoU-head loss")
    contrastive: bool = opt(True, "the object contrastive loss on [SEG] (stages 2 and 3)")
    contrastive_weight: float = opt(0.1, "its weight (GLUS's)")
    # Stage-2 start (training.train's docstring): [SEG] output-layer init scale, LLM-only steps,
    # SAM2 frozen until, distillation towards the scaffold token (weight, decays to 0 at).
    seg_init_scale: float = opt(1.0, "stage 2: scale of the [SEG] output layer's initial weights")
    mask_warmup: int = opt(400, "stage 2's first steps that train the LLM side only (no mask losses)")
    freeze_sam_steps: int = opt(500, "stage 2: SAM2 gets no update before this step")
    point_weight: float = opt(1.0, "stage 2: initial weight of the [SEG] distillation towards the scaffold token")
    point_until: int = opt(1000, "[SEG] bootstrap loss decays to 0 at this stage-2 step (0: off)")
    contrastive_weight_warmup: float = opt(
        0.1,
        "contrastive weight during the [SEG] bootstrap (until --point-until); --contrastive-weight after it",
        flag="--contrastive-warmup-weight",
    )
    # experiment (off in the shipped model): the scaffold token also says where the target is
    # (see training.steps.AttributePrompt); stage-1 location noise
    locate: bool = opt(False, "experiment: the scaffold token also encodes where the target is")
    locate_jitter: float = opt(0.03, "with --locate, stage 1: Gaussian jitter of the target centres (image fractions)")
    locate_drop: float = opt(0.3, "with --locate, stage 1: probability of leaving the location out")
    tau: float = opt(0.07, "the contrastive loss's temperature (GLUS's)")
    bank_size: int = opt(256, "recent [SEG] embeddings kept for the contrastive loss's negatives")
    bank_negatives: int = opt(
        0, "negatives drawn from other videos' [SEG] embeddings (GLUS draws them too; 0: the same video's only)"
    )
    memory: bool = opt(True, "SAM2's memory bank in the training graph")
    exact_context_prob: float = opt(
        0.5,
        "probability that a sample's context frames are the inference rule's "
        "(else one random frame per quarter, as GLUS trains)",
    )
    threads: int = opt(2, "torch threads (training and --eval)")
    ckpt_every: int = opt(500, "stage 2: save the checkpoint every this many steps (0: only at the end)")
    weights_dtype: str = opt(
        "float16", "dtype of the saved weights (the shipped checkpoint's: float16)", choices=("float16", "float32")
    )
    # training.finetune: stage 3, GLUS's losses again on the saved checkpoint
    finetune_steps: int = opt(
        0,
        "stage 3 (training.finetune): GLUS's losses again on the saved checkpoint, "
        "query runs from the video's start (0: off)",
    )
    finetune_early: float = opt(0.5, "stage 3: probability that a sample's query run starts at frame 0")
    finetune_lr_scale: float = opt(0.3, "stage 3: its rates as a fraction of stage 2's")

    @property
    def train_data_seed(self) -> int:
        return TRAIN_DATA_SEED_BASE + self.seed

    def problems(self) -> list[str]:
        """What makes this config unrunnable, as messages naming the flags."""
        out = []
        if not 0.0 <= self.finetune_early <= 1.0:
            out.append(f"--finetune-early is a probability, got {self.finetune_early}")
        if self.finetune_lr_scale <= 0 or self.finetune_steps < 0:
            out.append("--finetune-lr-scale must be > 0 and --finetune-steps >= 0")
        if self.motion_videos < 1 or self.motion_batch < self.motion_videos or self.motion_batch % self.motion_videos:
            out.append(
                f"--motion-batch must be a positive multiple of --motion-videos ({self.motion_videos}): "
                "every stage-1c video gets the same number of prompts"
            )
        if self.mask_warmup < 0:
            out.append("--mask-warmup must be >= 0")
        return out


# The shipped models' recipes, by name: `--recipe NAME` stands for these settings (flags given
# on the command line win over them). v4 = run R1 of models/glus-tiny/TRAINING.md.
RECIPES: dict[str, dict] = {
    "glus-tiny-v3": {},
    "glus-tiny-v4": {
        "shape": "small4",
        "locate": True,
        "clip_steps": 12000,
        "clip_fine_weight": 20.0,
        "ground_steps": 1200,
        "ground_single_steps": 1200,
        "ground_weight": 20.0,
        "ground_mix": 10.0,
        "stage2_llm_scale": 0.1,
        "motion_steps": 2750,
        "pointer_from": 1200,
        "motion_context": True,
        "motion_stage2_weight": 1.0,
        "motion_ground_weight": 20.0,
        "pointer_weight": 1.0,
        "pointer_stage2_weight": 1.0,
        "pointer_below": True,
        "sam_steps": 4400,
    },
}
# v5 = v4, then stage 3 (training.finetune) on v4's saved weights
RECIPES["glus-tiny-v5"] = {
    **RECIPES["glus-tiny-v4"],
    "finetune_steps": 1200,
    "finetune_early": 0.5,
    "finetune_lr_scale": 0.3,
}
