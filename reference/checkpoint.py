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
            return dst + key[len(src) :]
    return None


def to_checkpoint_key(key: str) -> str | None:
    for src, dst in PREFIXES:
        if key.startswith(dst):
            return src + key[len(dst) :]
    return None


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"weight file missing: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 (a corrupt or truncated file, whatever the reader raises: say which)
        raise CheckpointError(f"cannot read weight file {path}: {e}") from None


class WeightFile:
    """One weight file read one tensor at a time: its keys and shapes from the header, each
    tensor's bytes only when asked for, so that loading a 7B never holds the whole checkpoint
    (14 GB in bf16) beside the model. .safetensors: safe_open, opened for each tensor and closed
    again, because the file stays mapped while it is open and every page read through the map
    stays in the process's resident set until it is unmapped. .bin: torch.load with mmap (a
    zip-format file; an old pickle-only file is read whole), mapped until its last tensor is
    taken: at most one shard's pages (clean, file-backed: the kernel can drop them) beside the
    model."""

    def __init__(self, path: Path):
        if not path.is_file():
            raise CheckpointError(f"weight file missing: {path}")
        self.path = path
        try:
            if path.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(path), framework="pt") as st:
                    self._shapes = {k: tuple(st.get_slice(k).get_shape()) for k in st.keys()}
                self._st = True
                self._tensors = None
            else:
                self._st = None
                try:
                    self._tensors = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError:  # not a zip-format file: no mmap
                    self._tensors = torch.load(path, map_location="cpu", weights_only=True)
                self._shapes = {k: tuple(v.shape) for k, v in self._tensors.items()}
        except CheckpointError:
            raise
        except Exception as e:  # noqa: BLE001 (a corrupt or truncated file: say which)
            raise CheckpointError(f"cannot read weight file {path}: {e}") from None

    def keys(self):
        return self._shapes.keys()

    def shape(self, key: str) -> tuple[int, ...]:
        return self._shapes[key]

    def tensor(self, key: str) -> torch.Tensor:
        try:
            if self._st is None:
                return self._tensors[key]
            from safetensors import safe_open

            with safe_open(str(self.path), framework="pt") as st:
                return st.get_tensor(key)
        except Exception as e:  # noqa: BLE001 (a truncated file: say which tensor)
            raise CheckpointError(f"cannot read {key} from weight file {self.path}: {e}") from None

    def close(self) -> None:
        self._st = self._tensors = None


class LazyState:
    """The state dict of a checkpoint directory, key → (shape, tensor on demand), over all its
    shards; a file is closed once every one of its tensors has been taken (`take`)."""

    def __init__(self, directory: str | Path):
        self.files = [WeightFile(f) for f in weight_files(Path(directory))]
        self.where: dict[str, WeightFile] = {}
        self._left = {id(f): len(f.keys()) for f in self.files}
        for f in self.files:
            dup = self.where.keys() & f.keys()
            if dup:
                raise CheckpointError(f"{f.path} repeats keys of another shard: {sorted(dup)[:5]}")
            self.where.update(dict.fromkeys(f.keys(), f))

    def keys(self):
        return self.where.keys()

    def shape(self, key: str) -> tuple[int, ...]:
        return self.where[key].shape(key)

    def take(self, key: str) -> torch.Tensor:
        f = self.where[key]
        t = f.tensor(key)
        self._left[id(f)] -= 1
        if self._left[id(f)] == 0:
            f.close()
        return t

    def skip(self, key: str) -> None:
        """A key that is not loaded counts as taken."""
        f = self.where[key]
        self._left[id(f)] -= 1
        if self._left[id(f)] == 0:
            f.close()


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
    raise CheckpointError(f"no weights in {directory}: expected one of {', '.join(SINGLE_FILES + INDEX_FILES)}")


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


def load_glus_weights(model, state, load_fuser_gamma: bool = False) -> dict:
    """Load a GLUS state dict (a dict of tensors, or a LazyState read tensor by tensor) into every
    non-CLIP parameter of `model`, strictly: every key and shape is checked before any is copied.

    Returns a small report: which keys were deliberately not loaded and why.
    """
    if not isinstance(state, LazyState):
        state = _Eager(state)
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith("clip.")}
    mapped, unexpected, wrong_shape, skipped = {}, [], [], []
    for key in state.keys():
        shape = state.shape(key)
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
        if tuple(shape) != tuple(expected[target].shape):
            wrong_shape.append(f"{key}: file {tuple(shape)} vs model {tuple(expected[target].shape)}")
            continue
        mapped[target] = key
    never_loaded = {k for k in expected if FUSER_GAMMA.match(to_checkpoint_key(k) or "") and not load_fuser_gamma}
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
    for key in skipped:
        state.skip(key)
    with torch.no_grad():
        for target, key in mapped.items():
            expected[target].copy_(state.take(key))
    return {"skipped": sorted(skipped), "fuser_gamma_loaded": load_fuser_gamma}


class _Eager:
    """A plain dict of tensors seen through LazyState's interface."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors

    def keys(self):
        return self.tensors.keys()

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.tensors[key].shape)

    def take(self, key: str) -> torch.Tensor:
        return self.tensors[key]

    def skip(self, key: str) -> None:
        pass


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
    state: dict[str, torch.Tensor],
    directory: str | Path,
    fmt: str = "safetensors",
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
        part = {k: state[k] for k in keys[i * chunk : (i + 1) * chunk]}
        write(part, directory / name)
        weight_map.update({k: name for k in part})
        paths.append(directory / name)
    total = sum(v.numel() * v.element_size() for v in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / f"{base}.{ext}.index.json").write_text(json.dumps(index, indent=2))
    return paths
