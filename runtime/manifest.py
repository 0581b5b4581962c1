"""The engine directory's manifest.json: what export.build wrote, and checking it before use.

manifest.json is written last and atomically by the build, so a directory without it (an
interrupted build) is never mistaken for an engine.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .errors import EngineDirError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
REQUIRED_GRAPHS = ("vision", "llm", "sam_image", "memory_attention", "mask_decoder", "memory_encoder")
# Graphs a build writes only when asked (export.build --batched-llm): opened on first use, so an
# engine that has one costs nothing until an option reads it.
OPTIONAL_GRAPHS = ("llm_batched",)
REQUIRED_ARRAYS = ("embed_tokens", "image_pos", "memory_pos", "no_mem_embed")


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class Manifest:
    directory: Path
    data: dict

    @property
    def graphs(self) -> dict:
        return self.data["graphs"]

    @property
    def arrays(self) -> dict:
        return self.data["arrays"]

    @property
    def constants(self) -> dict:
        return self.data["constants"]

    @property
    def precision(self) -> str:
        return self.data["precision"]

    def path(self, entry: dict) -> Path:
        return self.directory / entry["file"]

    def graph_path(self, name: str) -> Path:
        return self.path(self.graphs[name])

    def named_files(self) -> set[str]:
        """Every file the manifest names (and itself), relative to the directory."""
        names = {MANIFEST} | {entry["file"] for _, entry in _files(self.data)}
        trt = self.data.get("tensorrt") or {}
        if trt.get("cache"):
            names.add(trt["cache"])  # TensorRT's engine cache: a directory
        return names

    def unknown_files(self) -> list[str]:
        """What lies in the directory without being named by the manifest."""
        named = self.named_files()
        return sorted(p.name for p in self.directory.iterdir() if p.name not in named)


def _files(data: dict):
    for section in ("graphs", "arrays"):
        for name, entry in data[section].items():
            yield f"{section}.{name}", entry
            # Graphs over 2 GB keep their weights in a side file next to the .onnx.
            for k, extra in enumerate(entry.get("external_data", [])):
                yield f"{section}.{name}.external_data[{k}]", extra
    yield "tokenizer", data["tokenizer"]


def read_manifest(directory: str | Path, verify_hashes: bool = True) -> Manifest:
    """Read and check an engine directory; EngineDirError names the first thing wrong."""
    directory = Path(directory)
    if not directory.is_dir():
        raise EngineDirError(f"engine directory not found: {directory}")
    path = directory / MANIFEST
    if not path.is_file():
        raise EngineDirError(
            f"{directory} has no {MANIFEST}: not an engine directory, or its build did not finish"
            " (build one with: python -m export.build --out DIR)"
        )
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EngineDirError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise EngineDirError(f"{path} must hold a JSON object")
    if data.get("schema") != SCHEMA_VERSION:
        raise EngineDirError(
            f"{path} has schema {data.get('schema')!r}; this runtime reads schema {SCHEMA_VERSION}:"
            " rebuild the engine with this version of export.build"
        )
    for key in ("graphs", "arrays", "tokenizer", "constants", "precision"):
        if key not in data:
            raise EngineDirError(f"{path} lacks '{key}'")
    missing = [g for g in REQUIRED_GRAPHS if g not in data["graphs"]]
    missing += [a for a in REQUIRED_ARRAYS if a not in data["arrays"]]
    if missing:
        raise EngineDirError(f"{path} lacks entries for: {', '.join(missing)}")
    root = directory.resolve()
    for name, entry in _files(data):
        f = directory / entry["file"]
        if not isinstance(entry["file"], str) or not f.resolve().is_relative_to(root):
            raise EngineDirError(f"{name}: file {entry['file']!r} is outside the engine directory {directory}")
        if not f.is_file():
            raise EngineDirError(f"{name}: file {f} is missing")
        if verify_hashes and sha256_file(f) != entry["sha256"]:
            raise EngineDirError(f"{name}: {f} does not match its hash in the manifest (corrupt or replaced)")
    return Manifest(directory, data)
