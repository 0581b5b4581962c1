"""Read and write GLUS weights in the released on-disk layout.

`save_pretrained` of the merged GLUS model wrote `pytorch_model.bin` (transformers 4.31) or
`model.safetensors`, possibly sharded with an `*.index.json`. Keys: `model.embed_tokens.*`,
`model.layers.N.*`, `model.norm.*`, `lm_head.*`, `model.mm_projector.*`,
`model.text_hidden_fcs.0.{0,2}.*`, `model.visual_model.*` (SAM2). No CLIP keys.

Loading is all-or-nothing: a missing or unexpected key or a wrong shape raises CheckpointError
naming it; nothing is left at its random initial value except what GLUS itself never loads
(see FUSER_GAMMA below).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from .errors import CheckpointError

SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")

# GLUS's loader (transformers 4.31) renames keys containing "gamma" to "weight", so these two
# layer-scale tensors are dropped and keep their constructor value (1e-6). Every published GLUS
# number was made that way; `load_fuser_gamma=True` loads the saved values instead.
FUSER_GAMMA = re.compile(r"^model\.visual_model\.memory_encoder\.fuser\.layers\.\d+\.gamma$")
# Older LLaMA checkpoints store the rotary inverse frequencies; they are recomputed from the config.
IGNORED = re.compile(r"\.rotary_emb\.inv_freq$")

PREFIXES = (  # checkpoint prefix → attribute of reference.model.GlusModel
    ("model.mm_projector.", "mm_projector."),
    ("model.text_hidden_fcs.", "text_hidden_fcs."),
    ("model.visual_model.", "sam."),
    ("model.", "llm.model."),
    ("lm_head.", "llm.lm_head."),
)


def to_module_key(key: str) -> str | None:
    for src, dst in PREFIXES:
        if key.startswith(src):
            return dst + key[len(src):]
    return None


def to_checkpoint_key(key: str) -> str | None:
    for src, dst in PREFIXES:
        if key.startswith(dst):
            return src + key[len(dst):]
    return None


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"weight file missing: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or truncated file: say which
        raise CheckpointError(f"cannot read weight file {path}: {e}") from None


def weight_files(directory: Path) -> list[Path]:
    """The weight files of a checkpoint directory, from its index if it is sharded."""
    for name in INDEX_FILES:
        index = directory / name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise CheckpointError(f"bad shard index {index}: {e!r}") from None
            shards = sorted(set(weight_map.values()))
            missing = [s for s in shards if not (directory / s).is_file()]
            if missing:
                raise CheckpointError(f"{index} names missing shard files: {', '.join(missing)}")
            return [directory / s for s in shards]
    for name in SINGLE_FILES:
        if (directory / name).is_file():
            return [directory / name]
    raise CheckpointError(
        f"no weights in {directory}: expected one of {', '.join(SINGLE_FILES + INDEX_FILES)}"
    )


def read_state_dict(directory: str | Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for f in weight_files(Path(directory)):
        part = _read_file(f)
        dup = state.keys() & part.keys()
        if dup:
            raise CheckpointError(f"{f} repeats keys of another shard: {sorted(dup)[:5]}")
        state.update(part)
    return state


def _listing(keys, n=8) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_glus_weights(model, state: dict[str, torch.Tensor], load_fuser_gamma: bool = False) -> dict:
    """Load a GLUS state dict into every non-CLIP parameter of `model`, strictly.

    Returns a small report: which keys were deliberately not loaded and why.
    """
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith("clip.")}
    mapped, unexpected, wrong_shape, skipped = {}, [], [], []
    for key, tensor in state.items():
        if IGNORED.search(key):
            skipped.append(key)
            continue
        if FUSER_GAMMA.match(key) and not load_fuser_gamma:
            skipped.append(key)
            continue
        target = to_module_key(key)
        if target is None or target not in expected:
            unexpected.append(key)
            continue
        if tuple(tensor.shape) != tuple(expected[target].shape):
            wrong_shape.append(f"{key}: file {tuple(tensor.shape)} vs model {tuple(expected[target].shape)}")
            continue
        mapped[target] = tensor
    never_loaded = {
        k for k in expected if FUSER_GAMMA.match(to_checkpoint_key(k) or "") and not load_fuser_gamma
    }
    missing = [to_checkpoint_key(k) or k for k in expected if k not in mapped and k not in never_loaded]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if wrong_shape:
        problems.append(f"wrong shapes: {_listing(wrong_shape, 4)}")
    if problems:
        raise CheckpointError("GLUS checkpoint does not match the model: " + "; ".join(problems))
    # Tensor by tensor into the model's own tensors (copy_ casts bf16/fp16 to the model's dtype):
    # a converted copy of the whole state dict would hold a 7B's weights a third time (27 GB).
    with torch.no_grad():
        for k, v in mapped.items():
            expected[k].copy_(v)
    return {"skipped": sorted(skipped), "fuser_gamma_loaded": load_fuser_gamma}


def glus_state_dict(model) -> dict[str, torch.Tensor]:
    """The model's weights under GLUS's checkpoint key names (CLIP excluded: it has its own dir)."""
    out = {}
    for k, v in model.state_dict().items():
        if k.startswith("clip."):
            continue
        ck = to_checkpoint_key(k)
        if ck is None:
            raise KeyError(f"no checkpoint name for {k}")
        out[ck] = v.detach().contiguous().clone()
    return out


def save_glus_weights(
    state: dict[str, torch.Tensor], directory: str | Path, fmt: str = "safetensors",
    shards: int = 1,
) -> list[Path]:
    """Write weights as transformers does: one file, or `shards` files plus an index."""
    if fmt not in ("safetensors", "bin"):
        raise ValueError(f"unknown weight format {fmt!r}: use 'safetensors' or 'bin'")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    keys = list(state)
    base = "model" if fmt == "safetensors" else "pytorch_model"
    ext = "safetensors" if fmt == "safetensors" else "bin"

    def write(part: dict, path: Path):
        if fmt == "safetensors":
            from safetensors.torch import save_file

            save_file(part, str(path), metadata={"format": "pt"})
        else:
            torch.save(part, path)

    if shards <= 1:
        path = directory / f"{base}.{ext}"
        write(state, path)
        return [path]
    paths, weight_map = [], {}
    chunk = -(-len(keys) // shards)
    for i in range(shards):
        name = f"{base}-{i + 1:05d}-of-{shards:05d}.{ext}"
        part = {k: state[k] for k in keys[i * chunk:(i + 1) * chunk]}
        write(part, directory / name)
        weight_map.update({k: name for k in part})
        paths.append(directory / name)
    total = sum(v.numel() * v.element_size() for v in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / f"{base}.{ext}.index.json").write_text(json.dumps(index, indent=2))
    return paths
