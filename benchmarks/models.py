"""The benchmark models and their engines, built once and cached on disk, keyed by content.

    checkpoint("medium") -> (glus_dir, clip_dir)        reference.make_tiny's shape, seed 0
    checkpoint("trained") -> (glus_dir, clip_dir)       the shipped trained default (models/glus-tiny)
    engine_dir("medium", "int8") -> engine directory    export.build of that checkpoint

Cache: $GLUS_BENCH_CACHE, else <export.default_model.cache_dir()>/bench. A key is a hash of
the code that writes the thing (reference/, export/, kernels/, this file, library versions),
so a code change rebuilds and an unchanged tree reuses: a warm run builds nothing.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SEED = 0
# What the checkpoint depends on, and what the engine depends on besides the checkpoint.
_REFERENCE_MODEL = (
    *(
        f"reference/{f}.py"
        for f in ("make_tiny", "model", "sam", "config", "checkpoint", "loader", "tokenizer", "preprocess")
    ),
    "runtime/rules.py",
)
CHECKPOINT_SOURCES = (*_REFERENCE_MODEL, "benchmarks/models.py")
ENGINE_SOURCES = (*_REFERENCE_MODEL, "export", "kernels", "runtime/manifest.py")


def cache_root() -> Path:
    env = os.environ.get("GLUS_BENCH_CACHE")
    if env:
        return Path(env)
    from export.default_model import cache_dir

    return cache_dir() / "bench"


def _hash_sources(h, sources) -> None:
    for src in sources:
        p = REPO / src
        for f in sorted(p.rglob("*.py")) if p.is_dir() else [p]:
            h.update(f.relative_to(REPO).as_posix().encode())
            h.update(f.read_bytes())


def _versions() -> str:
    import onnx
    import onnxruntime
    import torch
    import transformers

    return ";".join(f"{m.__name__}={m.__version__}" for m in (torch, transformers, onnx, onnxruntime))


TRAINED = "trained"  # the shipped trained default model, benchmarked as it is


def has_trained() -> bool:
    from export.default_model import SHIPPED

    return (SHIPPED / "glus" / "config.json").is_file()


def checkpoint_key(shape: str, seed: int = SEED) -> str:
    h = hashlib.sha256(f"{shape}:{seed}:{_versions()}".encode())
    if shape == TRAINED:
        from export.default_model import SHIPPED

        for f in sorted(p for p in SHIPPED.rglob("*") if p.is_file() and p.parent.name in ("glus", "clip")):
            h.update(f.name.encode() + f.read_bytes())
    _hash_sources(h, CHECKPOINT_SOURCES)
    return h.hexdigest()[:16]


def checkpoint(shape: str, seed: int = SEED) -> tuple[Path, Path]:
    """(glus_dir, clip_dir) of make_tiny's `shape`, written on first use; "trained": the shipped model."""
    if shape == TRAINED:
        from export.default_model import SHIPPED

        if not has_trained():
            raise FileNotFoundError(f"no trained model shipped at {SHIPPED}")
        return SHIPPED / "glus", SHIPPED / "clip"
    out = cache_root() / f"{shape}-seed{seed}-{checkpoint_key(shape, seed)}"
    done = out / ".complete"
    if not done.is_file():
        from reference.make_tiny import make_tiny

        shutil.rmtree(out, ignore_errors=True)
        glus_dir, clip_dir = make_tiny(out, seed=seed, shape=shape)
        if shape != "tiny":  # make_tiny conditions the tiny model's head itself
            condition_random(glus_dir, clip_dir)
        done.write_text("ok\n")
    return out / "glus", out / "clip"


def condition_random(glus_dir: Path, clip_dir: Path, offset: float = 0.1, n_probe: int = 8) -> None:
    """Make a random (non-tiny) model behave a little like a trained one, in two ways.

    1. A shared direction in every token's input (text embeddings and mm_projector's bias, a
       per-entry offset `offset`), as trained LLMs' anisotropic hidden states have. Why: with
       isotropic random inputs and near-uniform attention, the attention output of position t
       averages t random value vectors and shrinks like 1/sqrt(t), so o_proj's input spans 20x
       between the first and the last positions; dynamic int8's per-tensor activation scale then
       drowns the last position ([SEG] cosine 0.978 on the medium model, below export.build's
       0.99 gate). With the shared direction the averages no longer vanish (cosine ~0.996).
    2. The [SEG] row of lm_head along the mean final hidden state of prompts built from
       synthetic frames, or [SEG] never wins and the reference skips SAM2 entirely (make_tiny's
       own helper does this for the tiny shape only, with random image tokens).
    """
    import torch

    import reference
    from evalkit.synth import make_video
    from reference.checkpoint import glus_state_dict, save_glus_weights
    from reference.preprocess import clip_pixels
    from runtime import rules

    ref = reference.load(glus_dir, clip_dir, load_fuser_gamma=True)  # keep the saved gammas
    m, tok = ref.model, ref.tokenizer
    d = m.cfg.hidden_size
    u = torch.randn(d, generator=torch.Generator().manual_seed(3))
    u = u / u.norm() * offset * d**0.5  # per-entry RMS = offset
    frames = make_video(seed=123, index=0, frames=rules.NUM_CONTEXT + rules.NUM_QUERY, size=(96, 128)).annotation.images
    with torch.no_grad():
        m.llm.model.embed_tokens.weight += u
        m.mm_projector.bias += u
        tokens = m.encode_clip(torch.stack([clip_pixels(ref.clip_processor, f) for f in frames]))
        hs = []
        for k in range(n_probe):
            past = [rules.ANSWER_SEG] * (k % rules.NUM_QUERY)
            ids = tok.encode_prompt(rules.prompt_text("the red circle moving left", past))
            n_img = ids.count(rules.IMAGE_TOKEN_INDEX)
            hs.append(m.seg_embedding(ids, tokens.roll(k, 0)[:n_img]).hidden)
        mean = torch.stack(hs).mean(0)
        w = m.llm.lm_head.weight
        w[tok.seg_id] = mean / mean.norm() * w.norm(dim=1).mean() * 3.0
    save_glus_weights(glus_state_dict(m), glus_dir)


def engine_key(shape: str, precision: str, seed: int = SEED) -> str:
    h = hashlib.sha256(f"{checkpoint_key(shape, seed)}:{precision}:{_versions()}".encode())
    _hash_sources(h, ENGINE_SOURCES)
    return h.hexdigest()[:16]


def engine_dir(shape: str, precision: str, seed: int = SEED, batched_llm: bool = False) -> Path:
    """An engine directory of the shape's checkpoint; built (or reused) on first use.
    batched_llm: an engine of its own that also has the batched LLM graph (--batched-llm)."""
    from export.build import build

    glus_dir, clip_dir = checkpoint(shape, seed)
    out = cache_root() / f"{shape}-seed{seed}-engine-{precision}{'-batched' if batched_llm else ''}"
    stamp = out / ".bench_key"
    key = engine_key(shape, precision, seed) + (":batched" if batched_llm else "")
    if stamp.is_file() and stamp.read_text() == key and (out / "manifest.json").is_file():
        return out
    if not (out / "manifest.json").is_file() and (precision != "fp32" or batched_llm):
        # Seed the directory with an engine's graphs and its manifest, which holds the build
        # state (the fp32 engine, or for a batched fp32 engine the plain one): export.build then
        # reuses every graph of the same recipe and only exports or quantizes what is new.
        seed_dir = engine_dir(shape, "fp32", seed, batched_llm=batched_llm and precision != "fp32")
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(seed_dir, out, ignore=shutil.ignore_patterns(".bench_key"))
    stamp.unlink(missing_ok=True)
    build(glus_dir, clip_dir, precision=precision, out=out, progress=False, batched_llm=batched_llm)
    stamp.write_text(key)
    return out


def engine_bytes(path: Path) -> int:
    """Bytes of the files an engine's manifest uses (an int8 directory also keeps the fp32
    llm.onnx it was quantized from: not part of the engine)."""
    import json

    path = Path(path)
    m = json.loads((path / "manifest.json").read_text())
    files = ["manifest.json", m["tokenizer"]["file"]]
    for g in m["graphs"].values():
        files += [g["file"], *(e["file"] for e in g["external_data"])]
    files += [a["file"] for a in m["arrays"].values()]
    return sum((path / f).stat().st_size for f in set(files))
