"""What a training run is: the model sizes it trains, TrainConfig (every stage's steps, rates and
loss weights) and the shipped models' recipes."""

from __future__ import annotations

from dataclasses import dataclass

from .data import TRAIN_DATA_SEED_BASE

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
# A 4-layer LLM: room for training.motion's two token layers (context frames after layer 1, query
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
    # training.dense_aux: stage 0, the image encoder alone on per-cell colour / shape (steps,
    # lr), then the same head (+ velocity on the memory-conditioned map) x dense_weight in
    # stage 1; experiment F, shipped in session 4: held-out shape 0.364 -> 0.548, J&F 0.650
    encoder_steps: int = 4000
    encoder_lr: float = 1e-3
    dense_weight: float = 0.5
    dense_grid: int = 16
    keep_stage1: bool = False  # also write OUT/stage1.pt (every weight before stage 2)
    # training.grounding (session 6): stage 0b, CLIP alone on per-token colour / shape /
    # position; stage 1b, the LLM says where the described object is (one frame for the first
    # ground_single_steps, then up to ground_frames consecutive frames); ground_weight: the same
    # head on the [SEG] position in stage 2
    clip_steps: int = 0
    clip_lr: float = 1e-3
    clip_fine_weight: float = 0.0  # stage 0b: x MSE of the sub-strip object cover (training.grounding.clip_fine_cover)
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
    # training.motion (session 8): stage 1c, the LLM over GLUS's prompt learns each query-frame
    # token's object motion (middle layer, x motion_weight) and the target's location ([SEG]
    # position); motion_stage2_weight keeps the token loss in stage 2
    motion_steps: int = 0
    motion_weight: float = 1.0
    motion_ground_weight: float = 1.0  # stage 1c: x the [SEG] centre's MSE (session 10: x20 lets the place follow the pointer)
    motion_stage2_weight: float = 0.0
    motion_context: bool = False  # stage 1c also asks context frames 2-4, at a lower layer (training.motion)
    motion_expr_weight: float = 3.0  # stage 1c draws expressions that need the motion this much more often
    # training.motion.PointerHead (session 10): the pick as a CE over the current frame's tokens
    # from the [SEG] position, x pointer_weight in stage 1c, x pointer_stage2_weight in stage 2
    pointer_weight: float = 0.0
    pointer_stage2_weight: float = 0.0
    # point from the input of the LLM's last layer (hidden_states[-2]), so that layer can fetch
    # what the [SEG] position points at (the target's tokens, their place) into the [SEG] state
    pointer_below: bool = False
    # stage 1c's first pointer_from steps run without the pointer and with the centre x1, then the
    # rest with both, the rate warmed up again (training.motion.pretrain_motion; 0: one phase)
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
    # training.finetune (stage 3, session 15): GLUS's losses again on the saved checkpoint, the query
    # run starting at frame 0 with probability finetune_early, at finetune_lr_scale x stage 2's rates
    finetune_steps: int = 0
    finetune_early: float = 0.5
    finetune_lr_scale: float = 0.3

    @property
    def train_data_seed(self) -> int:
        return TRAIN_DATA_SEED_BASE + self.seed


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
# v5 = v4, then stage 3 (training.finetune) on v4's saved weights (session 15)
RECIPES["glus-tiny-v5"] = RECIPES["glus-tiny-v4"] + "--finetune-steps 1200 --finetune-early 0.5 --finetune-lr-scale 0.3".split()
