"""Write a seeded random GLUS in exactly the released on-disk layout.

    python -m reference.make_tiny OUT [--seed 0] [--format safetensors|bin] [--shards N]
    python -m reference.make_tiny OUT --shape glus-7b [--llm-layers N]   # real widths, random weights

`--shape glus-7b` has GLUS-A's widths: LLaMA-7B (hidden 4096, MLP 11008, 32 heads, vocab 32003),
CLIP ViT-L/14 at 224 and the sam2 package's own sam2_hiera_l.yaml at 1024 (what GLUS builds),
bf16 and sharded with an index as released. `--llm-layers N` keeps every width and cuts the
LLM's depth to N layers: N = 2..4 fits a 24 GiB CPU machine (32 layers need ~27 GB for the
fp32 initialisation alone).

OUT/glus: config.json (flat LLaMA + mm_* keys, model_type llava), weights under GLUS's key names,
the slow LLaMA tokenizer files (a sentencepiece model trained here) with [SEG], <im_start>,
<im_end> added, and the SAM2 YAML it is built from. OUT/clip: an openai/clip-vit layout
(CLIPModel weights, config.json, preprocessor_config.json).
"""

from __future__ import annotations

import argparse
import json
import shutil
from importlib import resources
from pathlib import Path

import torch

# name → (LLaMA, CLIP vision, SAM2) sizes
SHAPES = {
    "tiny": {
        "llama": dict(
            hidden_size=128,
            intermediate_size=344,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=2048,
        ),
        "clip": dict(
            hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, projection_dim=32
        ),
        "sam2": dict(
            image_size=256,
            embed_dim=32,
            stages=[1, 2, 2, 1],
            global_att_blocks=[4],
            num_heads=1,
            mem_layers=2,
            mem_ffn=512,
        ),
        "dtype": torch.float32,
    },
    # Benchmarks: per-frame FLOPs of the reference loop split like GLUS-7B's (~70% LLM, 10% the
    # 8 CLIP encodes, 20% SAM2; see benchmarks/flops.py), small enough for a 2-core CPU.
    "medium": {
        "llama": dict(
            hidden_size=768,
            intermediate_size=2048,
            num_hidden_layers=4,
            num_attention_heads=12,
            num_key_value_heads=12,
            max_position_embeddings=2048,
        ),
        "clip": dict(
            hidden_size=128, intermediate_size=512, num_hidden_layers=5, num_attention_heads=4, projection_dim=64
        ),
        "sam2": dict(
            image_size=256,
            embed_dim=80,
            stages=[1, 2, 4, 1],
            global_att_blocks=[5],
            num_heads=2,
            mem_layers=2,
            mem_ffn=1024,
        ),
        "dtype": torch.float32,
    },
    "glus-7b": {
        "llama": dict(
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            max_position_embeddings=2048,
        ),
        "clip": dict(
            hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, projection_dim=768
        ),
        "sam2": None,  # the package's own sam2_hiera_l.yaml, as GLUS
        "dtype": torch.bfloat16,
    },
}
LLAMA_7B_VOCAB = 32003  # 32000 + [SEG], <im_start>, <im_end>


def write_sam2_yaml(path: Path, s: dict) -> None:
    """sam2's hiera-t config, shrunk: smaller image, trunk and memory attention."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(str(resources.files("sam2") / "configs/sam2/sam2_hiera_t.yaml"))
    m = cfg.model
    m.image_size = s["image_size"]
    d = s["embed_dim"]
    m.image_encoder.trunk.embed_dim = d
    m.image_encoder.trunk.num_heads = s["num_heads"]
    m.image_encoder.trunk.stages = s["stages"]
    m.image_encoder.trunk.global_att_blocks = s["global_att_blocks"]
    m.image_encoder.neck.backbone_channel_list = [d * 8, d * 4, d * 2, d]
    grid = s["image_size"] // 16
    layer = m.memory_attention.layer
    layer.dim_feedforward = s["mem_ffn"]
    layer.self_attention.feat_sizes = [grid, grid]
    layer.cross_attention.feat_sizes = [grid, grid]
    m.memory_attention.num_layers = s["mem_layers"]
    OmegaConf.save(cfg, str(path))


def write_clip(out: Path, sizes: dict, seed: int, dtype) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    torch.manual_seed(seed + 1)
    vision = dict(image_size=224, patch_size=14, **{k: v for k, v in sizes.items() if k != "projection_dim"})
    text = dict(
        hidden_size=sizes["hidden_size"],
        intermediate_size=sizes["intermediate_size"],
        num_hidden_layers=2,
        num_attention_heads=sizes["num_attention_heads"],
    )
    cfg = CLIPConfig(text_config=text, vision_config=vision, projection_dim=sizes["projection_dim"])
    CLIPModel(cfg).to(dtype).save_pretrained(str(out))
    CLIPImageProcessorPil().save_pretrained(str(out))  # the openai/clip-vit defaults
    return out


def glus_config(
    tokenizer,
    spec: dict,
    vision_tower: str,
    dtype: str,
    *,
    vocab_size: int | None = None,
    sam2_config: str | None = "sam2_config.yaml",
) -> dict:
    """GLUS's config.json: a flat LLaMA config plus the LLaVA/GLUS keys, as released."""
    config = {
        "architectures": ["GLUSForCausalLM"],
        "model_type": "llava",
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "bos_token_id": tokenizer.bos_id,
        "eos_token_id": tokenizer.eos_id,
        "pad_token_id": 0,
        "torch_dtype": dtype,
        "vocab_size": vocab_size or tokenizer.vocab_size,
        **spec["llama"],
        "mm_hidden_size": spec["clip"]["hidden_size"],
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "mm_vision_tower": vision_tower,
        "vision_tower": vision_tower,
        "mm_use_im_start_end": True,
        "mm_use_im_patch_token": False,
        "out_dim": 256,
        "train_mask_decoder": True,
    }
    if sam2_config:
        config["sam2_config"] = sam2_config
    return config


def _probe_images(model, n: int, generator) -> torch.Tensor:
    """[n, 64, hidden] image tokens of piecewise-flat random pictures (like the synthetic frames)
    through the model's own CLIP and projector."""
    size = model.clip.config.image_size
    grid = torch.rand(n, 3, 4, 4, generator=generator)
    pixels = torch.nn.functional.interpolate(grid, size=(size, size), mode="nearest")
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)  # CLIP's
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    p = next(model.clip.parameters())
    return model.encode_clip(((pixels - mean) / std).to(p.device, p.dtype))


def _seg_favouring_head(model, tokenizer, n_probe: int = 6, clip_probes: bool = False) -> None:
    """Random LLM heads almost never predict [SEG]; then every mask is empty and tests see nothing.

    Point the [SEG] row of lm_head along the mean final hidden state of a few real prompts, so
    that [SEG] usually (not always) wins: both branches of GLUS's loop stay exercised.
    clip_probes: the prompts' images are pictures through the model's CLIP (which must be the
    CLIP the checkpoint is loaded with), not noise at a fixed scale. At LLaMA-7B widths noise
    probes leave the row nearly orthogonal to what real frames give (cosine ~0.01: [SEG] never
    won and SAM2 never ran); tiny keeps the noise probes its tests were written against.
    """
    from runtime import rules

    g = torch.Generator().manual_seed(123)  # on the CPU whatever the model's device: same probes
    w = model.llm.lm_head.weight
    hs = []
    for k in range(n_probe):
        past = [rules.ANSWER_SEG] * (k % rules.NUM_QUERY)
        ids = tokenizer.encode_prompt(rules.prompt_text("the red circle moving left", past))
        n_img = sum(1 for t in ids if t == rules.IMAGE_TOKEN_INDEX)
        if clip_probes:
            imgs = _probe_images(model, n_img, g)
        else:
            imgs = torch.randn(n_img, 64, model.cfg.hidden_size, generator=g).to(w.device) * 0.5
        hs.append(model.seg_embedding(ids, imgs).hidden)
    mean = torch.stack(hs).mean(0)
    scale = w.norm(dim=1).mean() * 3.0
    w[tokenizer.seg_id] = mean / mean.norm() * scale


def shape_spec(shape: str, llm_layers: int | None = None) -> dict:
    """The sizes of `shape`, with the LLM cut to `llm_layers` layers (widths unchanged)."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}: choose from {', '.join(SHAPES)}")
    spec = SHAPES[shape]
    if llm_layers is None:
        return spec
    if not isinstance(llm_layers, int) or isinstance(llm_layers, bool) or llm_layers < 1:
        raise ValueError(f"llm_layers must be a positive integer, got {llm_layers!r}")
    return {**spec, "llama": {**spec["llama"], "num_hidden_layers": llm_layers}}


@torch.no_grad()
def make_tiny(
    out: str | Path,
    *,
    seed: int = 0,
    shape: str = "tiny",
    fmt: str = "safetensors",
    shards: int = 1,
    llm_layers: int | None = None,
) -> tuple[Path, Path]:
    """llm_layers: the LLM's depth (default: the shape's own); every width is kept."""
    from transformers import CLIPVisionConfig

    from .checkpoint import glus_state_dict, save_glus_weights
    from .config import read_config
    from .model import GlusModel
    from .tokenizer import load_tokenizer, train_tiny_tokenizer

    spec = shape_spec(shape, llm_layers)
    out = Path(out)
    glus_dir, clip_dir = out / "glus", out / "clip"
    for d in (glus_dir, clip_dir):
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)

    train_tiny_tokenizer(glus_dir)
    tokenizer = load_tokenizer(glus_dir)
    write_clip(clip_dir, spec["clip"], seed, spec["dtype"])
    vocab = tokenizer.vocab_size if shape == "tiny" else LLAMA_7B_VOCAB
    config = glus_config(
        tokenizer,
        spec,
        str(clip_dir.resolve()),
        str(spec["dtype"]).removeprefix("torch."),
        vocab_size=vocab,
        sam2_config=None,
    )
    if spec["sam2"] is not None:
        write_sam2_yaml(glus_dir / "sam2_config.yaml", spec["sam2"])
        config["sam2_config"] = "sam2_config.yaml"
    (glus_dir / "config.json").write_text(json.dumps(config, indent=2))

    torch.manual_seed(seed)
    cfg = read_config(glus_dir)
    model = GlusModel(cfg, CLIPVisionConfig.from_pretrained(str(clip_dir)))  # fp32 until saved
    # Layer scale saved != its 1e-6 init, so GLUS's gamma quirk is visible on the tiny model.
    for blk in model.sam.memory_encoder.fuser.layers:
        blk.gamma.copy_(torch.rand_like(blk.gamma) * 0.5 + 0.25)
    # Random heads almost never answer [SEG]: then every mask is empty and parity says nothing.
    # The probes run the whole LLM, so a full-depth 7B is left without them ("medium" keeps
    # the head its benchmark figures were measured with).
    if shape == "tiny" or (shape == "glus-7b" and spec["llama"]["num_hidden_layers"] <= 4):
        clip_probes = shape == "glus-7b"
        if clip_probes:  # the CLIP the checkpoint will be loaded with, not GlusModel's random one
            from transformers import CLIPVisionModel

            model.clip = CLIPVisionModel.from_pretrained(str(clip_dir), dtype=torch.float32).eval()
        _seg_favouring_head(model, tokenizer, clip_probes=clip_probes)
    model.to(spec["dtype"])
    save_glus_weights(glus_state_dict(model), glus_dir, fmt=fmt, shards=shards)
    return glus_dir, clip_dir


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m reference.make_tiny", description=__doc__.split("\n")[0])
    p.add_argument("out", help="output directory (gets glus/ and clip/)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    p.add_argument("--format", choices=["safetensors", "bin"], default="safetensors")
    p.add_argument("--shards", type=int, default=None, help="weight files (default 1; glus-7b: 2 per 7B, as released)")
    p.add_argument(
        "--llm-layers",
        type=int,
        default=None,
        metavar="N",
        help="LLM depth, keeping every width (glus-7b: 32; 2..4 fit a 24 GiB machine)",
    )
    a = p.parse_args(argv)
    if a.llm_layers is not None and a.llm_layers < 1:
        p.error(f"--llm-layers must be >= 1, got {a.llm_layers}")
    if a.shards is not None and a.shards < 1:
        p.error(f"--shards must be >= 1, got {a.shards}")
    shards = a.shards if a.shards is not None else (2 if a.shape == "glus-7b" else 1)
    glus_dir, clip_dir = make_tiny(
        a.out, seed=a.seed, shape=a.shape, fmt=a.format, shards=shards, llm_layers=a.llm_layers
    )
    print(f"GLUS checkpoint: {glus_dir}\nCLIP:            {clip_dir}")


if __name__ == "__main__":
    main()
