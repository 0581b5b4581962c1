"""The checkpoint a run trains: a seeded random GLUS of the training shape, and the saved result,
in the released layout (OUT/glus with GLUS's key names, OUT/clip an openai/clip-vit directory)
that reference.load reads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from omegaconf import OmegaConf
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPVisionConfig

from reference.checkpoint import glus_state_dict, save_glus_weights
from reference.config import read_config
from reference.loader import load
from reference.make_tiny import glus_config
from reference.make_tiny import write_sam2_yaml as write_base_sam2_yaml
from reference.model import GlusModel
from reference.tokenizer import load_tokenizer, train_tiny_tokenizer

from .config import CLIP_TEXT, TRAIN_SHAPES


def write_sam2_yaml(path: Path, s: dict) -> None:
    """reference.make_tiny's SAM2 YAML for sizes `s`, with what training sets besides: the memory
    fuser's depth, hiera's attention windows, no dropout."""
    write_base_sam2_yaml(path, s)
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
    vision = dict(image_size=224, patch_size=14, **{k: v for k, v in vision_sizes.items() if k != "projection_dim"})
    cfg = CLIPConfig(text_config=CLIP_TEXT, vision_config=vision, projection_dim=vision_sizes["projection_dim"])
    clip = CLIPModel(cfg)
    if vision_state is not None:
        clip.vision_model.load_state_dict(vision_state, strict=True)
    clip.to(dtype).save_pretrained(str(clip_dir))
    CLIPImageProcessorPil().save_pretrained(str(clip_dir))


def init_checkpoint(out: Path, shape_name: str, seed: int):
    """A seeded random GLUS of the training shape, written and loaded back with reference.load."""
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


def save_checkpoint(
    ref, out: Path, shape_name: str, dtype: str = "float16", vision_tower: str | None = None
) -> tuple[Path, Path]:
    """OUT/glus + OUT/clip in the released layout (weights cast to `dtype`)."""
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
    for name in (
        "tokenizer.model",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "sam2_config.yaml",
    ):
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
