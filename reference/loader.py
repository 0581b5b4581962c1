"""`reference.load`: a GLUS checkpoint directory + a CLIP directory → a ready reference model."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoint import LazyState, load_glus_weights
from .config import GlusConfig, read_config
from .errors import CheckpointError
from .model import GlusModel


@dataclass
class GlusReference:
    model: GlusModel
    tokenizer: object  # reference.tokenizer.GlusTokenizer
    clip_processor: object  # transformers CLIPImageProcessorPil
    config: GlusConfig
    checkpoint: Path
    clip_dir: Path
    report: dict = field(default_factory=dict)


def resolve_clip_dir(cfg: GlusConfig, clip: str | Path | None, checkpoint: Path | None = None) -> Path:
    """An explicit path wins; GLUS's config value (`vision_tower`) is only a fallback. A relative
    vision_tower is looked up from the working directory, then from the checkpoint's parent
    (the shipped model says "models/glus-tiny/clip" and must load from anywhere)."""
    candidate = clip if clip is not None else cfg.vision_tower
    if candidate is None:
        raise CheckpointError("no CLIP directory given and config.json names no vision_tower")
    path = Path(candidate)
    if clip is None and not path.is_dir() and not path.is_absolute() and checkpoint is not None:
        for base in Path(checkpoint).resolve().parents:
            if (base / path).is_dir():
                path = base / path
                break
    if not path.is_dir():
        raise CheckpointError(
            f"CLIP directory not found: {path} (pass the local CLIP ViT-L/14 directory explicitly;"
            " nothing is downloaded)"
        )
    for name in ("config.json", "preprocessor_config.json"):
        if not (path / name).is_file():
            raise CheckpointError(f"CLIP directory {path} has no {name}")
    return path


def _load_clip(clip_dir: Path, dtype: torch.dtype):
    from transformers import CLIPVisionModel
    from transformers.utils import logging as hf_logging

    # The text tower's keys in a full CLIP checkpoint are expected to go unused: don't print them.
    hf_logging.set_verbosity_error()
    try:
        clip, info = CLIPVisionModel.from_pretrained(
            str(clip_dir), local_files_only=True, output_loading_info=True, dtype=dtype
        )
    except OSError as e:
        raise CheckpointError(f"cannot load CLIP from {clip_dir}: {e}") from None
    bad = [k for k in info.get("missing_keys", [])] + [str(k) for k in info.get("mismatched_keys", [])]
    if bad:
        raise CheckpointError(f"CLIP weights in {clip_dir} do not match its config: {bad[:8]}")
    return clip.eval()


def load(
    checkpoint: str | Path,
    clip: str | Path | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    load_fuser_gamma: bool = False,
    device: str | torch.device = "cpu",
) -> GlusReference:
    """Load a GLUS checkpoint (LLaVA-style HF directory) and its CLIP vision tower, strictly.

    `load_fuser_gamma=False` reproduces GLUS's own loader, which never loads the memory
    encoder's two layer-scale tensors (see reference/checkpoint.py).
    """
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig

    from .tokenizer import load_tokenizer

    checkpoint = Path(checkpoint)
    cfg = read_config(checkpoint)
    clip_dir = resolve_clip_dir(cfg, clip, checkpoint)
    tokenizer = load_tokenizer(checkpoint)
    if tokenizer.vocab_size > cfg.vocab_size:
        raise CheckpointError(
            f"tokenizer has {tokenizer.vocab_size} tokens but the LLM only {cfg.vocab_size} embeddings"
        )
    clip_config = CLIPVisionConfig.from_pretrained(str(clip_dir), local_files_only=True)
    if clip_config.image_size // clip_config.patch_size != 16:
        raise CheckpointError(
            f"CLIP at {clip_dir} gives a {clip_config.image_size // clip_config.patch_size}² patch grid;"
            " GLUS pools a 16x16 grid (ViT-L/14 at 224) into 64 tokens"
        )
    model = GlusModel(cfg, clip_config).to(dtype)
    report = load_glus_weights(model, LazyState(checkpoint), load_fuser_gamma=load_fuser_gamma)
    model.clip = _load_clip(clip_dir, dtype)
    processor = CLIPImageProcessorPil.from_pretrained(str(clip_dir), local_files_only=True)
    model.to(device).eval()  # loaded on the CPU (strict checks), then moved: "cuda" for the GPU check
    return GlusReference(model, tokenizer, processor, cfg, checkpoint, clip_dir, report)
