"""GLUS's config.json: a flat LLaMA config plus the LLaVA/GLUS keys (`mm_*`, `out_dim`, ...).

`AutoConfig` maps `model_type: "llava"` to transformers' own (nested) LlavaConfig, which is the
wrong class for GLUS checkpoints, so the JSON is parsed here and a `LlamaConfig` built from it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .errors import CheckpointError

# Keys GLUS adds to the LLaMA config; they do not belong to LlamaConfig.
GLUS_KEYS = (
    "mm_hidden_size",
    "mm_vision_select_layer",
    "mm_vision_tower",
    "vision_tower",
    "mm_use_im_start_end",
    "mm_use_im_patch_token",
    "mm_vision_select_feature",
    "out_dim",
    "train_mask_decoder",
    "sam2_config",
)
REQUIRED_KEYS = (
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_hidden_layers",
    "vocab_size",
    "mm_hidden_size",
    "out_dim",
)
# GLUS is run with sam2's hiera-L config; a tiny checkpoint names its own YAML (relative path).
DEFAULT_SAM2_CONFIG = "configs/sam2/sam2_hiera_l.yaml"


@dataclass
class GlusConfig:
    """What the reference needs to build GLUS, read from a checkpoint directory."""

    raw: dict
    directory: Path
    mm_hidden_size: int
    mm_vision_select_layer: int
    out_dim: int
    vision_tower: str | None
    sam2_config: str
    llama_kwargs: dict = field(default_factory=dict)

    @property
    def hidden_size(self) -> int:
        return int(self.raw["hidden_size"])

    @property
    def vocab_size(self) -> int:
        return int(self.raw["vocab_size"])

    def llama_config(self):
        from transformers import LlamaConfig

        return LlamaConfig(**self.llama_kwargs)

    def sam2_config_path(self) -> Path:
        """The YAML file SAM2 is built from: inside the sam2 package, or next to config.json."""
        local = self.directory / self.sam2_config
        if local.is_file():
            return local
        packaged = resources.files("sam2") / self.sam2_config
        if packaged.is_file():
            return Path(str(packaged))
        raise CheckpointError(
            f"SAM2 config {self.sam2_config!r} found neither in {self.directory} nor in the sam2 package"
        )


def read_config(directory: str | Path) -> GlusConfig:
    directory = Path(directory)
    path = directory / "config.json"
    if not directory.is_dir():
        raise CheckpointError(f"GLUS checkpoint directory not found: {directory}")
    if not path.is_file():
        raise CheckpointError(f"GLUS checkpoint has no config.json: {path}")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise CheckpointError(f"{path} lacks required keys: {', '.join(missing)}")
    if raw["model_type"] != "llava":
        raise CheckpointError(f"{path}: model_type is {raw['model_type']!r}; a GLUS checkpoint has model_type 'llava'")
    for key in (
        "hidden_size",
        "intermediate_size",
        "num_attention_heads",
        "num_hidden_layers",
        "vocab_size",
        "mm_hidden_size",
        "out_dim",
    ):
        if not isinstance(raw[key], int) or raw[key] <= 0:
            raise CheckpointError(f"{path}: {key} must be a positive integer, got {raw[key]!r}")
    if raw["hidden_size"] % raw["num_attention_heads"]:
        raise CheckpointError(f"{path}: hidden_size is not a multiple of num_attention_heads")

    llama_kwargs = {k: v for k, v in raw.items() if k not in GLUS_KEYS and not k.startswith("_")}
    for k in ("architectures", "model_type", "transformers_version", "auto_map"):
        llama_kwargs.pop(k, None)
    # LLaMA-1-era configs have no num_key_value_heads: plain multi-head attention.
    llama_kwargs.setdefault("num_key_value_heads", raw["num_attention_heads"])
    llama_kwargs["use_cache"] = True
    return GlusConfig(
        raw=raw,
        directory=directory,
        mm_hidden_size=raw["mm_hidden_size"],
        mm_vision_select_layer=int(raw.get("mm_vision_select_layer", -2)),
        out_dim=raw["out_dim"],
        vision_tower=raw.get("vision_tower") or raw.get("mm_vision_tower"),
        sam2_config=raw.get("sam2_config", DEFAULT_SAM2_CONFIG),
        llama_kwargs=llama_kwargs,
    )
