"""Turn a GLUS checkpoint into an engine directory that `runtime.GlusEngine` runs without torch.

    python -m export.build [--checkpoint DIR --clip DIR] --precision {fp32,fp16,int8}
                           [--backend onnxruntime|tensorrt] [--out DIR] [--force]

Stages: load the reference → export each graph (vision, llm, sam_image, memory_attention,
mask_decoder, memory_encoder) and check it against the PyTorch module on fresh random inputs →
quantize the LLM and SAM2's image encoder (int8) → constant arrays, tokenizer.json → manifest.json, written last and
atomically. A re-run reuses every graph whose recipe (checkpoint content, graph code, library
versions, precision) and file hash are unchanged.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.manifest import MANIFEST, REQUIRED_GRAPHS, SCHEMA_VERSION, sha256_file

from .onnx_utils import fresh_inputs

PRECISIONS = ("fp32", "fp16", "int8")
# What an int8 build quantizes by default: the two largest per-frame costs once the prefix is
# cached (medium model, CPU: LLM window and SAM2 image encoder); the mask decoder, memory
# attention/encoder and CLIP stay fp32.
INT8_GRAPHS = ("llm", "sam_image")
# Every threshold a build checks, in one place; a graph that misses one is not written into
# the engine (BuildError names it and its figure).
FP32_PARITY_MAX = 1e-4  # max relative error of each fp32 graph against PyTorch, fresh inputs
FP16_PARITY_MAX = 5e-2  # the same for fp16 graphs, measured on CUDA
SAM_INT8_COSINE_MIN = 0.999  # int8 SAM2 image encoder: every output's cosine to fp32
LLM_INT8_COSINE_MIN = 0.99  # int8 LLM: [SEG] embedding cosine to fp32 on the model's own prompts
# The batched LLM graph (--batched-llm) is checked row by row against the "llm" graph's call for
# that window alone (export/llm_batched.batched_row_parity). fp32: within FP32_PARITY_MAX (rows
# come out bit-identical). int8 is quantized with the LLM's method; dynamic int8 quantizes
# activations per tensor, which couples the rows: on the medium model a batched row's [SEG] has
# cosine 0.9982 to its one-window int8 call on this check (0.9997 on a synthetic video's
# prompts, benchmarks/results/llm-batch-medium.md), and 0.9982 to fp32, where the one-window
# int8 calls have 0.9980: batching moves an answer less than int8 does. So a batched int8 row is
# held to the int8 LLM's own bar against fp32 (LLM_INT8_COSINE_MIN), and the manifest records
# that rows are not bit-identical (rows_bit_identical), with the figures.
# --int8-method auto: dynamic int8 (MatMulInteger, per-tensor activations) is the fastest on x86
# CPUs and passes on the small models; at LLaMA-7B's width (4096) its per-tensor activation
# quantization drifts ([SEG] cosine 0.988 at glus-7b --llm-layers 2, random weights), while
# 8-bit block-32 weight-only MatMulNBits (int8 compute per block) holds 0.9993: the build takes
# the first that passes. On trained weights dynamic int8 fails harder (SmolLM2-135M, 50 GLUS
# prompts: last-hidden cosine 0.94 per-tensor and per-channel; nbits8 block 32: 0.9994;
# benchmarks/results/quant-smollm2.md), so from LLaMA-7B's width up auto goes straight to
# nbits8: a 7B's dynamic-int8 attempt would cost a full quantization and check of a 27 GB graph
# only to be refused.
LLM_INT8_AUTO = ("dynamic-int8", "nbits8")
LLM_INT8_WIDE = 4096  # hidden size from which auto skips dynamic int8


# Where llm.onnx is exported (build(llm_process=...)). auto: in a child process from 1 GiB of fp32
# LLM weights (a 1-layer slice of LLaMA-7B is 1.4 GB; the tiny and medium models are far below).
LLM_PROCESSES = ("auto", "child", "same")
LLM_CHILD_FROM_BYTES = 1 << 30


def resolve_llm_process(llm_process: str, precision: str, weight_bytes: int) -> str:
    """ "child" or "same" for build(llm_process=...): auto picks the child from LLM_CHILD_FROM_BYTES
    of fp32 LLM weights, except for fp16 (its parity re-runs the PyTorch LLM on CUDA, here)."""
    if llm_process != "auto":
        return llm_process
    return "child" if precision != "fp16" and weight_bytes >= LLM_CHILD_FROM_BYTES else "same"


def llm_graph_modules(model) -> tuple:
    """What the "llm" graph holds of the PyTorch model: decoder layers, final norm, lm_head and
    the [SEG] head (embed_tokens stays outside: the engine keeps it as an array)."""
    return (model.llm.model.layers, model.llm.model.norm, model.llm.lm_head, model.text_hidden_fcs)


def llm_weight_bytes(model) -> int:
    """fp32 bytes of what the "llm" graph holds."""
    return sum(4 * p.numel() for mod in llm_graph_modules(model) for p in mod.parameters())


def llm_int8_candidates(int8_method: str, hidden_size: int) -> tuple[str, ...]:
    """The int8 methods a build tries for the LLM, in order."""
    if int8_method != "auto":
        return (int8_method,)
    if hidden_size >= LLM_INT8_WIDE:
        return tuple(m for m in LLM_INT8_AUTO if m != "dynamic-int8")
    return LLM_INT8_AUTO


BACKENDS = ("onnxruntime", "tensorrt")
WORK = ".build"  # inside OUT while a build runs (Builder)
STATE = "state.json"
# What remove_stale may delete: the kinds of file a build writes (never a user's other files).
BUILD_FILES = (".build_state.json", "tokenizer.json", MANIFEST + ".tmp")
BUILD_SUFFIXES = (".onnx", ".npy", ".npz")
# Source files whose change must invalidate exported graphs.
RECIPE_SOURCES = ("export", "kernels", "reference/model.py", "reference/sam.py")
REPO = Path(__file__).resolve().parent.parent


class BuildError(Exception):
    """A user error in the build's inputs: printed as one line, exit code 2."""


# ---- hashing -------------------------------------------------------------------------------
def dir_hash(directory: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in directory.rglob("*") if p.is_file()):
        h.update(f.relative_to(directory).as_posix().encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()


def code_hash() -> str:
    h = hashlib.sha256()
    for src in RECIPE_SOURCES:
        p = REPO / src
        files = sorted(p.rglob("*.py")) if p.is_dir() else [p]
        for f in files:
            h.update(f.relative_to(REPO).as_posix().encode())
            h.update(f.read_bytes())
    import onnx
    import onnxruntime
    import torch
    import transformers

    for mod in (torch, transformers, onnx, onnxruntime):
        h.update(f"{mod.__name__}={mod.__version__}".encode())
    return h.hexdigest()


# ---- parity --------------------------------------------------------------------------------
def graph_parity(spec, path: Path, seed: int, providers=None, release=None) -> dict:
    """PyTorch's outputs first, then ONNX Runtime's on the same fresh inputs. release(), if given,
    runs in between: the caller drops the PyTorch weights there, so that the two copies of a 7B
    LLM (27 GB each in fp32) need not be resident together."""
    import torch

    inputs = fresh_inputs(spec.inputs, seed)
    with torch.no_grad():
        want = spec.module(*inputs.values())
    want = want if isinstance(want, (tuple, list)) else (want,)
    want = [w.float().numpy() for w in want]
    if release is not None:
        release()
    return ort_parity(spec.outputs, path, inputs, want, providers)


def ort_parity(outputs: list[str], path: Path, inputs: dict, want: list[np.ndarray], providers=None) -> dict:
    """ONNX Runtime's outputs of the graph at path on inputs, against PyTorch's (want)."""
    from .onnx_utils import ort_session, rel_error, run_ort

    got = run_ort(ort_session(path, providers=providers), inputs)
    errors = {n: rel_error(g, w) for n, g, w in zip(outputs, got, want)}
    return {"max_rel_error": max(errors.values()), "per_output": errors}


def release_llm_weights(model) -> int:
    """Drop what the "llm" graph has taken over from the PyTorch model (decoder layers, final
    norm, lm_head, [SEG] head: to the meta device); returns their bytes. The memory comes back
    only where nothing else holds those storages: after an in-process dynamo export its IR still
    does (benchmarks/export_memory measures it), which is why a large LLM is exported in a child
    process (export/llm_process.py). What the build still reads stays: embed_tokens (the
    embedding array, the int8 check's prompts) and the configs."""
    freed = 0
    for mod in llm_graph_modules(model):
        freed += sum(p.numel() * p.element_size() for p in mod.parameters() if not p.is_meta)
        mod.to("meta")
    gc.collect()  # what only a reference cycle still held
    return freed


def int8_output_cosines(spec, fp32_path: Path, int8_path: Path, seed: int) -> dict:
    """Per-output cosine of an int8 graph against its fp32 graph on the same fresh inputs."""
    from .onnx_utils import cosine, ort_session, run_ort

    inputs = fresh_inputs(spec.inputs, seed)
    a = run_ort(ort_session(fp32_path), inputs)
    b = run_ort(ort_session(int8_path), inputs)
    return {n: cosine(x, y) for n, x, y in zip(spec.outputs, a, b)}


def llm_seg_cosines(ref, fp32_path: Path, int8_path: Path, steps: int = 5) -> list[float]:
    """[SEG] embedding cosine int8 vs fp32 on the model's own prompts (steps 1..steps)."""
    import torch

    from runtime import rules

    from .onnx_utils import cosine, ort_session

    m, tok = ref.model, ref.tokenizer
    cfg = m.llm.config
    kvh = cfg.num_key_value_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    g = torch.Generator().manual_seed(7)
    feeds = []
    for step in range(1, steps + 1):
        past = [rules.ANSWER_SEG] * min(step - 1, rules.NUM_QUERY - 1)
        ids = tok.encode_prompt(rules.prompt_text("the red circle moving left", past))
        n_img = ids.count(rules.IMAGE_TOKEN_INDEX)
        with torch.no_grad():
            emb = m.embed_prompt(ids, torch.randn(n_img, 64, cfg.hidden_size, generator=g) * 0.5)
        feeds.append(
            {
                "inputs_embeds": emb.numpy(),
                "position_ids": np.arange(emb.shape[1], dtype=np.int64)[None],
                "past_kv": np.zeros((cfg.num_hidden_layers, 2, 1, kvh, 0, hd), np.float32),
            }
        )
    # One session at a time: a 7B's fp32 and int8 sessions together would hold 1.25x its weights.
    outputs = []
    for path in (fp32_path, int8_path):
        session = ort_session(path)
        outputs.append([session.run(["seg_embedding"], f)[0] for f in feeds])
        del session
    return [cosine(a, b) for a, b in zip(*outputs)]


# ---- the build ---------------------------------------------------------------------------
class Builder:
    """The build's bookkeeping. While a build runs, OUT/.build/ holds its state (what each file
    was made from) and the fp32 graphs that the engine replaces (an int8 build's fp32 llm and
    sam_image, every fp32 graph of an fp16 build): they are inputs of the quantization, not
    parts of the engine. A finished build keeps its state in the manifest ("build") and removes
    .build/, so the engine directory holds exactly the files its manifest names."""

    def __init__(
        self,
        out: Path,
        precision: str,
        backend: str,
        force: bool,
        progress: bool,
        replaced: set[str] = frozenset(),
        previous: dict | None = None,
    ):
        self.out, self.precision, self.backend = out, precision, backend
        self.force, self.progress = force, progress
        self.work = out / WORK
        self.replaced = set(replaced)
        self.state_path = self.work / STATE
        self.state = {}
        if not force:
            if self.state_path.is_file():  # an interrupted build's
                try:
                    self.state = json.loads(self.state_path.read_text())
                except json.JSONDecodeError:
                    self.state = {}
            elif previous:
                self.state = dict(previous)
        self.timings: dict[str, float] = {}

    def log(self, msg: str) -> None:
        if self.progress:
            from tqdm import tqdm

            tqdm.write(msg)  # keeps the progress bar intact

    def dir_for(self, name: str) -> Path:
        """Where graph `name`'s fp32 file goes: .build/ when the engine replaces it."""
        return self.work if name in self.replaced else self.out

    def save_state(self) -> None:
        self.work.mkdir(exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=1))
        os.replace(tmp, self.state_path)

    def known(self, name: str, key: str) -> bool:
        """A record made from the same recipe (its file may be gone: a check's figures)."""
        entry = self.state.get(name)
        return bool(entry and entry["key"] == key)

    def cached(self, name: str, key: str) -> bool:
        """A record made from the same recipe whose file is still there, unchanged."""
        if not self.known(name, key):
            return False
        entry = self.state[name]
        f = self.path_of(name)
        return f.is_file() and sha256_file(f) == entry["sha256"]

    def path_of(self, name: str) -> Path:
        """Where the recorded file of `name` is (a reused fp32 graph may sit in OUT itself)."""
        entry = self.state[name]
        return self.out / entry.get("dir", ".") / entry["file"]

    def record(self, name: str, key: str, file: str, directory: Path | None = None, **extra) -> dict:
        directory = directory or self.out
        entry = {"key": key, "file": file, "sha256": sha256_file(directory / file), **extra}
        if directory != self.out:
            entry["dir"] = str(directory.relative_to(self.out))
        self.state[name] = entry
        self.save_state()
        return entry


def llm_int8_key(recipe: str, method: str, accuracy_level: int) -> str:
    return hashlib.sha256(f"{recipe}:llm:int8:{method}:{accuracy_level}".encode()).hexdigest()


def llm_batched_int8_key(recipe: str, method: str, accuracy_level: int) -> str:
    return hashlib.sha256(f"{llm_int8_key(recipe, method, accuracy_level)}:batched".encode()).hexdigest()


def sam_int8_key(recipe: str) -> str:
    return hashlib.sha256(f"{recipe}:sam_image:int8:dynamic-int8".encode()).hexdigest()


def int8_result_cached(b: Builder, recipe: str, name: str, methods: tuple[str, ...], accuracy_level: int) -> bool:
    """Whether graph `name`'s int8 result for this recipe is in place, so that its fp32 graph
    need not be exported again: for the LLM, every method before the chosen one is on record as
    refused and the chosen one's file is unchanged; for the batched LLM, also its own file."""
    if name == "sam_image":
        return b.cached("sam_image_int8", sam_int8_key(recipe))
    method = cached_llm_int8_method(b, recipe, methods, accuracy_level)
    if name == "llm_batched":
        key = llm_batched_int8_key(recipe, method, accuracy_level) if method else ""
        return method is not None and b.cached(f"llm_batched_int8_{method}", key)
    return method is not None


def cached_llm_int8_method(b: Builder, recipe: str, methods: tuple[str, ...], accuracy_level: int) -> str | None:
    """The int8 method the LLM took for this recipe, if on record with its file unchanged."""
    for method in methods:
        entry_name, key = f"llm_int8_{method}", llm_int8_key(recipe, method, accuracy_level)
        if not b.known(entry_name, key):
            return None
        if min(b.state[entry_name]["seg_cosines"]) >= LLM_INT8_COSINE_MIN:
            return method if b.cached(entry_name, key) else None
    return None


def remove_stale(out: Path, manifest: dict) -> list[str]:
    """Files a build makes that this engine's manifest does not name (an earlier build's, of
    another precision or graph set): removed. Only the build's own kinds of file are touched."""
    named = {MANIFEST}
    for section in ("graphs", "arrays"):
        for entry in manifest[section].values():
            named.add(entry["file"])
            named.update(e["file"] for e in entry.get("external_data", []))
    named.add(manifest["tokenizer"]["file"])
    gone = []
    for f in sorted(out.iterdir()):
        if (
            f.is_file()
            and f.name not in named
            and (f.name in BUILD_FILES or f.suffix in BUILD_SUFFIXES or f.name.endswith(".onnx.data"))
        ):
            f.unlink()
            gone.append(f.name)
    return gone


def io_signature(path: Path) -> dict:
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def describe(values):
        out = []
        for v in values:
            t = v.type.tensor_type
            shape = [d.dim_param or d.dim_value for d in t.shape.dim]
            out.append(
                {"name": v.name, "shape": shape, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name}
            )
        return out

    return {"inputs": describe(model.graph.input), "outputs": describe(model.graph.output)}


def external_files(path: Path) -> list[dict]:
    side = path.with_name(path.name + ".data")
    return [{"file": side.name, "sha256": sha256_file(side)}] if side.is_file() else []


def model_constants(ref) -> dict:
    from runtime import rules

    m, tok, proc = ref.model, ref.tokenizer, ref.clip_processor
    cfg = m.llm.config
    size = proc.size.get("shortest_edge") if hasattr(proc.size, "get") else proc.size.shortest_edge
    crop = proc.crop_size
    crop_hw = [crop.get("height"), crop.get("width")] if hasattr(crop, "get") else [crop.height, crop.width]
    return {
        "clip": {
            "image_size": m.clip_image_size,
            "resize_shortest_edge": int(size),
            "crop": crop_hw,
            "mean": list(map(float, proc.image_mean)),
            "std": list(map(float, proc.image_std)),
            "resample": int(proc.resample),
        },
        "sam": {
            "image_size": m.sam_image_size,
            "mean": list(rules_imagenet()[0]),
            "std": list(rules_imagenet()[1]),
            "feat_sizes": [list(s) for s in m.feat_sizes],
            "hidden_dim": int(m.sam.hidden_dim),
            "mem_dim": int(m.sam.mem_dim),
        },
        "llm": {
            "layers": cfg.num_hidden_layers,
            "hidden": cfg.hidden_size,
            "heads": cfg.num_attention_heads,
            "kv_heads": cfg.num_key_value_heads,
            "head_dim": getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads,
            "vocab": cfg.vocab_size,
            "max_positions": cfg.max_position_embeddings,
            "rope_theta": float(rope_params(cfg)["rope_theta"]),
            "rope_type": rope_params(cfg).get("rope_type", "default"),
            "out_dim": ref.config.out_dim,
        },
        "tokens": {
            "bos": tok.bos_id,
            "eos": tok.eos_id,
            "seg": tok.seg_id,
            "im_start": tok.im_start_id,
            "im_end": tok.im_end_id,
            "image_placeholder": rules.IMAGE_TOKEN_INDEX,
        },
        "prompt": {
            "system": rules.SYSTEM,
            "answer_prefix": rules.ANSWER_PREFIX,
            "answer_seg": rules.ANSWER_SEG,
            "answer_no_seg": rules.ANSWER_NO_SEG,
            "context_sentence": rules.CONTEXT_SENTENCE,
            "question_template": rules.QUESTION_TEMPLATE,
            "image_text": rules.IMAGE_TEXT,
        },
        "num_context": rules.NUM_CONTEXT,
        "num_query": rules.NUM_QUERY,
        "mem_stride": rules.MEM_STRIDE,
        "num_maskmem": rules.NUM_MASKMEM,
        "tokens_per_image": rules.TOKENS_PER_IMAGE,
    }


def rope_params(cfg) -> dict:
    """transformers 5 keeps RoPE settings in `rope_parameters`; older configs in rope_theta."""
    params = getattr(cfg, "rope_parameters", None) or {}
    if "rope_theta" not in params:
        params = {"rope_theta": getattr(cfg, "rope_theta", 10000.0), **params}
    return params


def rules_imagenet():
    from reference.preprocess import IMAGENET_MEAN, IMAGENET_STD

    return IMAGENET_MEAN, IMAGENET_STD


def check_backend(precision: str, backend: str) -> str | None:
    """Why the requested backend/precision can't be built here (None if it can)."""
    if backend == "tensorrt" or precision == "fp16":
        import onnxruntime as ort

        from runtime.backends import tensorrt_available

        has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
        if backend == "tensorrt" and not tensorrt_available():
            return (
                "no GPU with ONNX Runtime's TensorRT provider here (pip install '.[gpu]' on a"
                " machine with an NVIDIA GPU)"
            )
        if precision == "fp16" and not has_cuda:
            return "fp16 engines need a GPU (ONNX Runtime CUDA or TensorRT); use fp32 or int8 on the CPU"
    return None


# ---- the passes of a build ---------------------------------------------------------------
@dataclass
class Pass:
    """What the passes of one build share; each pass adds its graphs, figures and files."""

    b: Builder
    ref: object
    specs: list
    recipe: str
    checkpoint: Path
    precision: str
    int8_graphs: tuple[str, ...]
    int8_method: str
    accuracy_level: int
    llm_process: str
    batched_llm: bool = False
    graphs: dict = field(default_factory=dict)
    parity: dict = field(default_factory=dict)
    arrays: dict = field(default_factory=dict)
    tokenizer: Path | None = None

    @property
    def replaced(self) -> set[str]:
        return self.b.replaced

    def spec(self, name: str):
        return next(s for s in self.specs if s.name == name)


def graph_entry(out: Path, file: str, entry: dict, precision: str, quantization) -> dict:
    """A graph's manifest entry: its file, hash, precision, how it was quantized, its side
    files and its input/output signature."""
    return {
        "file": file,
        "sha256": entry["sha256"],
        "precision": precision,
        "quantization": quantization,
        "external_data": external_files(out / file),
        **io_signature(out / file),
    }


def fresh_seed() -> int:
    return int.from_bytes(os.urandom(4), "little")


def export_pass(ctx: Pass) -> None:
    """Every graph: trace to ONNX, check against PyTorch on fresh inputs, record. The fp32
    graphs an int8 or fp16 engine replaces go to OUT/.build/ and are skipped altogether when
    what was made from them is unchanged."""
    from tqdm import tqdm

    from .onnx_utils import export_graph

    b, ref, out = ctx.b, ctx.ref, ctx.b.out
    bar = tqdm(ctx.specs, desc="export", unit="graph", disable=not b.progress)
    for spec in bar:
        bar.set_postfix_str(spec.name)
        key = hashlib.sha256(f"{ctx.recipe}:{spec.name}:fp32".encode()).hexdigest()
        file = f"{spec.name}.onnx"
        t = time.perf_counter()
        # An fp16 build re-runs each PyTorch graph for its CUDA parity; every other build is done
        # with the LLM's PyTorch weights once llm.onnx is checked.
        release = (lambda: release_llm_weights(ref.model)) if spec.name == "llm" and ctx.precision != "fp16" else None
        where = b.dir_for(spec.name)
        final_cached = (
            ctx.precision == "int8"
            and spec.name in ctx.replaced
            and int8_result_cached(
                b,
                ctx.recipe,
                spec.name,
                llm_int8_candidates(ctx.int8_method, ref.model.cfg.hidden_size),
                ctx.accuracy_level,
            )
        )
        if final_cached and spec.name == "llm" and ctx.batched_llm:
            # the batched graph's int8 check reads the fp32 llm: kept unless that is done too
            final_cached = int8_result_cached(
                b,
                ctx.recipe,
                "llm_batched",
                llm_int8_candidates(ctx.int8_method, ref.model.cfg.hidden_size),
                ctx.accuracy_level,
            )
        if b.cached(spec.name, key) or (final_cached and b.known(spec.name, key)):
            entry = b.state[spec.name]  # (final_cached: the int8 graph made from it is unchanged)
            reused = True
        else:
            seed = fresh_seed()
            if spec.name == "llm" and ctx.llm_process == "child":
                from .llm_process import LlmProcessError, export_llm_in_child

                try:
                    inputs, want = export_llm_in_child(ctx.checkpoint, Path(ref.clip_dir), where / file, seed)
                except LlmProcessError as e:
                    raise BuildError(str(e)) from None
                check = ort_parity(spec.outputs, where / file, inputs, want)
            else:
                export_graph(spec, where / file)
                check = graph_parity(spec, where / file, seed=seed, release=release)
            entry = b.record(spec.name, key, file, where, parity=check)
            reused = False
        if release is not None:
            release()  # (again, when reused or exported in a child: a no-op after the first)
        b.timings[spec.name] = time.perf_counter() - t
        ctx.parity[spec.name] = entry["parity"]
        if spec.name not in ctx.replaced:
            ctx.graphs[spec.name] = graph_entry(out, file, entry, "fp32", None)
        err = entry["parity"]["max_rel_error"]
        how = "reused" if reused else "exported"
        b.log(f"[{spec.name}] {how} in {b.timings[spec.name]:.1f}s, max rel error {err:.2e}")
        if err > FP32_PARITY_MAX:
            raise BuildError(
                f"{spec.name}: ONNX output differs from PyTorch by {err:.2e} (> {FP32_PARITY_MAX}); engine not written"
            )


def fp16_pass(ctx: Pass) -> None:
    """GPU only (check_backend): every graph converted to fp16, its parity measured on CUDA."""
    from .fp16 import convert_fp16

    b, out = ctx.b, ctx.b.out
    for spec in ctx.specs:
        t = time.perf_counter()
        key = hashlib.sha256(f"{ctx.recipe}:{spec.name}:fp16".encode()).hexdigest()
        file = f"{spec.name}.fp16.onnx"
        if not b.cached(f"{spec.name}_fp16", key):
            report = convert_fp16(b.path_of(spec.name), out / file)
            check = graph_parity(
                spec, out / file, seed=fresh_seed(), providers=["CUDAExecutionProvider", "CPUExecutionProvider"]
            )
            b.record(f"{spec.name}_fp16", key, file, parity=check, report=report)
        entry = b.state[f"{spec.name}_fp16"]
        ctx.parity[f"{spec.name}_fp16"] = entry["parity"]
        ctx.graphs[spec.name] = graph_entry(out, file, entry, "fp16", entry["report"])
        b.timings[f"{spec.name}_fp16"] = time.perf_counter() - t
        err = entry["parity"]["max_rel_error"]
        b.log(f"[fp16] {spec.name}: max rel error on CUDA {err:.2e}")
        if err > FP16_PARITY_MAX:
            raise BuildError(f"{spec.name} in fp16 is off by {err:.2e} (> {FP16_PARITY_MAX})")


def sam_int8_pass(ctx: Pass) -> None:
    """SAM2's image encoder in dynamic int8; every output's cosine to the fp32 graph's."""
    from .quantize import quantize_graph

    b, out = ctx.b, ctx.b.out
    t = time.perf_counter()
    key = sam_int8_key(ctx.recipe)
    file = "sam_image.int8.onnx"
    fp32_path = b.path_of("sam_image")
    if not b.cached("sam_image_int8", key):
        with quiet_quantizer():
            report = quantize_graph(fp32_path, out / file, method="dynamic-int8")
        cos = int8_output_cosines(ctx.spec("sam_image"), fp32_path, out / file, seed=fresh_seed())
        b.record("sam_image_int8", key, file, report=report, cosines=cos)
    entry = b.state["sam_image_int8"]
    b.timings["quantize_sam_image"] = time.perf_counter() - t
    cmin = min(entry["cosines"].values())
    ctx.parity["sam_image_int8"] = {"feature_cosine_min": cmin, "cosines": entry["cosines"]}
    ctx.graphs["sam_image"] = graph_entry(out, file, entry, "int8", entry["report"])
    b.log(
        f"[quantize] sam_image dynamic-int8 in {b.timings['quantize_sam_image']:.1f}s,"
        f" feature cosine to fp32 >= {cmin:.5f}"
    )
    if cmin < SAM_INT8_COSINE_MIN:
        raise BuildError(f"int8 SAM2 image encoder feature cosine {cmin:.5f} < {SAM_INT8_COSINE_MIN}")


def llm_int8_pass(ctx: Pass) -> None:
    """The LLM in int8: "auto" takes the fastest method whose [SEG] cosine passes, tried in
    order of CPU speed (llm_int8_candidates); a method on record as refused is not retried."""
    from .quantize import quantize_graph

    b, out = ctx.b, ctx.b.out
    t = time.perf_counter()
    methods = llm_int8_candidates(ctx.int8_method, ctx.ref.model.cfg.hidden_size)
    fp32_path = b.path_of("llm")
    tried = {}
    file = "llm.int8.onnx"
    for method in methods:
        key = llm_int8_key(ctx.recipe, method, ctx.accuracy_level)
        name = f"llm_int8_{method}"
        refused = b.known(name, key) and min(b.state[name]["seg_cosines"]) < LLM_INT8_COSINE_MIN
        if not (refused or b.cached(name, key)):
            with quiet_quantizer():
                report = quantize_graph(
                    fp32_path,
                    out / file,
                    method=method,
                    **({"accuracy_level": ctx.accuracy_level} if method == "nbits8" else {}),
                )
            cos = llm_seg_cosines(ctx.ref, fp32_path, out / file)
            b.record(name, key, file, report=report, seg_cosines=cos)
        entry = b.state[name]
        tried[method] = min(entry["seg_cosines"])
        b.log(f"[quantize] llm {method}: [SEG] cosine to fp32 >= {tried[method]:.5f}")
        if tried[method] >= LLM_INT8_COSINE_MIN:
            break
    b.timings["quantize"] = time.perf_counter() - t
    cmin = min(entry["seg_cosines"])
    ctx.parity["llm_int8"] = {
        "seg_cosine_min": cmin,
        "seg_cosines": entry["seg_cosines"],
        "method": method,
        "tried": tried,
        "not_tried": [m for m in LLM_INT8_AUTO if ctx.int8_method == "auto" and m not in methods],
    }
    ctx.graphs["llm"] = graph_entry(out, file, entry, "int8", entry["report"])
    b.log(f"[quantize] llm {method} in {b.timings['quantize']:.1f}s, [SEG] cosine to fp32 >= {cmin:.5f}")
    if cmin < LLM_INT8_COSINE_MIN:
        raise BuildError(
            f"int8 LLM [SEG] cosine {cmin:.4f} < {LLM_INT8_COSINE_MIN}"
            f" ({', '.join(f'{k} {v:.4f}' for k, v in tried.items())})"
        )


def llm_batched_pass(ctx: Pass) -> None:
    """--batched-llm: an int8 build quantizes the batched graph with the method the LLM took;
    then every build (fp16 aside: its graphs run on CUDA) checks each batched row against the
    "llm" graph's call for that window alone, and records the figures with the graph."""
    from .llm_batched import batched_row_parity
    from .quantize import quantize_graph

    b, out = ctx.b, ctx.b.out
    t = time.perf_counter()
    name, file, quantization = "llm_batched", "llm_batched.onnx", None
    if "llm_batched" in ctx.replaced:  # int8, with the LLM quantized
        method = ctx.parity["llm_int8"]["method"]
        name, file = f"llm_batched_int8_{method}", "llm_batched.int8.onnx"
        key = llm_batched_int8_key(ctx.recipe, method, ctx.accuracy_level)
        if not b.cached(name, key):
            with quiet_quantizer():
                report = quantize_graph(
                    b.path_of("llm_batched"),
                    out / file,
                    method=method,
                    **({"accuracy_level": ctx.accuracy_level} if method == "nbits8" else {}),
                )
            # checked here, while the fp32 llm it is also held against is at hand (a rebuild that
            # reuses this file skips the fp32 graphs: export_pass)
            rows = batched_row_parity(ctx.ref, out / ctx.graphs["llm"]["file"], out / file, b.path_of("llm"))
            b.record(name, key, file, report=report, rows=rows)
        entry = b.state[name]
        quantization, rows = entry["report"], entry["rows"]
    else:
        entry = b.state[name]
        # the figures hold for this recipe (the check's code included) and these graphs' files
        rows_key = hashlib.sha256(f"{ctx.recipe}:{entry['sha256']}:{ctx.graphs['llm']['sha256']}".encode())
        if not b.known("llm_batched_rows", rows_key.hexdigest()):
            rows = batched_row_parity(ctx.ref, out / ctx.graphs["llm"]["file"], out / file)
            b.state["llm_batched_rows"] = {"key": rows_key.hexdigest(), "rows": rows}
            b.save_state()
        rows = b.state["llm_batched_rows"]["rows"]
    ctx.parity["llm_batched_rows"] = rows
    ctx.graphs["llm_batched"] = {
        **graph_entry(out, file, entry, "int8" if quantization else "fp32", quantization),
        "rows_bit_identical": rows["bit_identical"],
    }
    b.timings["llm_batched_rows"] = time.perf_counter() - t
    b.log(
        f"[llm_batched] rows vs one-window calls: bit-identical {rows['bit_identical']},"
        f" [SEG] cosine >= {rows['seg_cosine_min']:.6f}, rel error <= {rows['seg_rel_error_max']:.1e}"
        + (f", cosine to fp32 >= {rows['seg_cosine_to_fp32_min']:.5f}" if quantization else "")
    )
    if quantization is None and rows["seg_rel_error_max"] > FP32_PARITY_MAX:
        raise BuildError(
            f"llm_batched: a batched row differs from its one-window call by {rows['seg_rel_error_max']:.2e}"
            f" (> {FP32_PARITY_MAX}); engine not written"
        )
    if quantization is not None and rows["seg_cosine_to_fp32_min"] < LLM_INT8_COSINE_MIN:
        raise BuildError(
            f"int8 llm_batched: a batched row's [SEG] cosine to fp32 is {rows['seg_cosine_to_fp32_min']:.5f}"
            f" (< {LLM_INT8_COSINE_MIN}, the int8 LLM's bar; one-window int8 calls:"
            f" {rows['loop_seg_cosine_to_fp32_min']:.5f}); build without --batched-llm"
        )


def arrays_pass(ctx: Pass) -> None:
    """The constant arrays (token embeddings, SAM2's position encodings, no-memory embedding)
    and tokenizer.json."""
    from reference.tokenizer import save_fast_tokenizer

    from .llm import embedding_table
    from .sam_graphs import sam_constants

    b, out, model = ctx.b, ctx.b.out, ctx.ref.model
    t = time.perf_counter()
    for name, arr in {"embed_tokens": embedding_table(model), **sam_constants(model)}.items():
        file = f"{name}.npy"
        np.save(out / file, np.ascontiguousarray(arr, dtype=np.float32))
        ctx.arrays[name] = {
            "file": file,
            "sha256": sha256_file(out / file),
            "shape": list(arr.shape),
            "dtype": "float32",
        }
    ctx.tokenizer = save_fast_tokenizer(ctx.ref.tokenizer, out)
    b.timings["arrays+tokenizer"] = time.perf_counter() - t


@contextlib.contextmanager
def quiet_quantizer():
    """onnxruntime.quantization logs every node at INFO."""
    logging.disable(logging.INFO)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


# The build, pass by pass: (name, function, whether this build runs it).
PASSES = (
    ("export", export_pass, lambda c: True),
    ("fp16", fp16_pass, lambda c: c.precision == "fp16"),
    ("quantize sam_image", sam_int8_pass, lambda c: c.precision == "int8" and "sam_image" in c.int8_graphs),
    ("quantize llm", llm_int8_pass, lambda c: c.precision == "int8" and "llm" in c.int8_graphs),
    ("batched llm", llm_batched_pass, lambda c: c.batched_llm and c.precision != "fp16"),
    ("arrays", arrays_pass, lambda c: True),
)


def build(checkpoint=None, clip=None, *, verbose: bool = False, **kw) -> dict:
    """checkpoint → engine directory (keyword options: _build's). verbose: let the third-party
    messages export/quiet.py filters through."""
    from .quiet import quiet

    with quiet(verbose):
        return _build(checkpoint, clip, **kw)


def _build(
    checkpoint=None,
    clip=None,
    *,
    precision: str = "fp32",
    backend: str = "onnxruntime",
    out: str | Path,
    force: bool = False,
    progress: bool = True,
    int8_method: str = "auto",
    accuracy_level: int = 4,
    int8_graphs: tuple[str, ...] = INT8_GRAPHS,
    llm_process: str = "auto",
    keep_build_files: bool = False,
    batched_llm: bool = False,
) -> dict:
    """int8_graphs: which graphs an int8 build quantizes; "llm" (int8_method) and "sam_image"
    (SAM2's image encoder, dynamic-int8) are supported. llm_process: where llm.onnx is exported,
    "child" (a process of its own), "same" or "auto" (see resolve_llm_process).
    keep_build_files: keep OUT/.build/ (the fp32 graphs an int8 or fp16 engine replaces, so that
    a rebuild with another int8 method need not export them again); removed by default.
    batched_llm: also write "llm_batched" (export/llm_batched.py), the graph batch_llm=True runs."""
    if precision not in PRECISIONS:
        raise BuildError(f"unknown precision {precision!r}: choose from {', '.join(PRECISIONS)}")
    if precision == "int8" and not int8_graphs:
        raise BuildError("an int8 build needs at least one graph to quantize (--int8-graphs)")
    bad = sorted(set(int8_graphs) - set(INT8_GRAPHS))
    if bad:
        raise BuildError(f"cannot quantize {', '.join(bad)}: int8 graphs are {', '.join(INT8_GRAPHS)}")
    if llm_process not in LLM_PROCESSES:
        raise BuildError(f"unknown llm_process {llm_process!r}: choose from {', '.join(LLM_PROCESSES)}")
    if llm_process == "child" and precision == "fp16":
        raise BuildError(
            "an fp16 build checks the PyTorch LLM on CUDA in this process: llm_process='child'"
            " is for fp32 and int8 builds"
        )
    if backend not in BACKENDS:
        raise BuildError(f"unknown backend {backend!r}: choose from {', '.join(BACKENDS)}")
    why = check_backend(precision, backend)
    if why and precision == "fp16":
        raise BuildError(why)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise BuildError(f"cannot write to output directory {out}: {e.strerror or e}") from None
    if checkpoint is None:
        from .default_model import DefaultModelMissing, default_checkpoint

        try:
            checkpoint, default_clip = default_checkpoint()
        except DefaultModelMissing as e:
            raise BuildError(str(e)) from None
        clip = clip or default_clip
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        raise BuildError(f"checkpoint directory not found: {checkpoint}")

    # An old manifest must not outlive a rebuild that may stop half way; what it says each file
    # was made from lets the rebuild reuse them.
    previous = None
    if (out / MANIFEST).is_file():
        try:
            previous = json.loads((out / MANIFEST).read_text()).get("build")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            previous = None
    (out / MANIFEST).unlink(missing_ok=True)
    replaced = set(int8_graphs) if precision == "int8" else set(REQUIRED_GRAPHS) if precision == "fp16" else set()
    if batched_llm and "llm" in replaced:  # quantized or converted as the LLM is
        replaced.add("llm_batched")
    b = Builder(out, precision, backend, force, progress, replaced=replaced, previous=previous)
    t_all = time.perf_counter()

    import reference
    from reference.errors import CheckpointError

    t = time.perf_counter()
    try:
        ref = reference.load(checkpoint, clip)
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        raise BuildError(str(e)) from None
    b.timings["load"] = time.perf_counter() - t
    source_key = hashlib.sha256((dir_hash(checkpoint) + dir_hash(ref.clip_dir)).encode()).hexdigest()
    recipe = hashlib.sha256((source_key + code_hash()).encode()).hexdigest()
    b.log(f"[load] {checkpoint} + {ref.clip_dir} in {b.timings['load']:.1f}s")

    from .llm import llm_spec
    from .sam_graphs import sam_specs
    from .vision import vision_spec

    specs = [vision_spec(ref.model), llm_spec(ref.model), *sam_specs(ref.model)]
    if batched_llm:
        from .llm_batched import llm_batched_spec

        # Before "llm": the build drops the PyTorch LLM's weights once llm.onnx is checked.
        specs.insert(1, llm_batched_spec(ref.model))
    # Where llm.onnx is exported and its PyTorch side of the parity computed: in a child process
    # that exits (what the dynamo exporter keeps of a 7B comes back to the system), with this
    # process's own PyTorch LLM dropped before anything is exported; or here, as for the small
    # models, where a child's start-up (torch, the checkpoint again) would cost more than it saves.
    llm_process = resolve_llm_process(llm_process, precision, llm_weight_bytes(ref.model))
    if batched_llm and llm_process == "child":
        raise BuildError(
            "--batched-llm exports the batched graph in this process, from the PyTorch LLM that"
            " llm_process='child' leaves out of it (LLMs from 1 GiB of fp32 weights): use"
            " --llm-process same, or build without --batched-llm"
        )
    if llm_process == "child":
        release_llm_weights(ref.model)
    ctx = Pass(
        b=b,
        ref=ref,
        specs=specs,
        recipe=recipe,
        checkpoint=checkpoint,
        precision=precision,
        int8_graphs=tuple(int8_graphs),
        int8_method=int8_method,
        accuracy_level=accuracy_level,
        llm_process=llm_process,
        batched_llm=batched_llm,
    )
    from tqdm import tqdm

    for name, run, wanted in PASSES:
        if not wanted(ctx):
            continue
        if run is export_pass:  # a bar of its own, one step per graph
            run(ctx)
            continue
        with tqdm(total=1, desc=name, unit="pass", disable=not progress) as bar:
            run(ctx)
            bar.update(1)
    graphs, parity, array_entries, tok_path = ctx.graphs, ctx.parity, ctx.arrays, ctx.tokenizer

    trt = None
    if backend == "tensorrt":
        if why:
            b.log(f"[tensorrt] skipped: {why}. The ONNX Runtime engine is complete.")
            trt = {"built": False, "reason": why}
        else:
            from .tensorrt import build_engines

            trt = build_engines(out, graphs, precision)

    manifest = {
        "schema": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "precision": precision,
        "source": {
            "checkpoint": str(checkpoint.resolve()),
            "clip": str(Path(ref.clip_dir).resolve()),
            "content_sha256": source_key,
            "fuser_gamma_loaded": ref.report.get("fuser_gamma_loaded", False),
        },
        "graphs": graphs,
        "arrays": array_entries,
        "tokenizer": {"file": tok_path.name, "sha256": sha256_file(tok_path)},
        "constants": model_constants(ref),
        "parity": parity,
        "tensorrt": trt,
        "timings_s": {k: round(v, 3) for k, v in b.timings.items()},
        "build": b.state,  # what each file was made from: a rebuild reuses what is unchanged
    }
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, out / MANIFEST)  # atomic: the directory is an engine only from here on
    if not keep_build_files:
        shutil.rmtree(b.work, ignore_errors=True)
    gone = remove_stale(out, manifest)
    if gone:
        b.log(f"[clean] removed files of an earlier build: {', '.join(gone)}")
    b.timings["total"] = time.perf_counter() - t_all
    if progress:
        print_summary(out, manifest, b.timings)
    return manifest


def print_summary(out: Path, manifest: dict, timings: dict) -> None:
    print(f"\nengine written to {out} (precision {manifest['precision']})")
    print(f"{'graph':<18}{'file':<24}{'MB':>8}  parity")
    for name, g in manifest["graphs"].items():
        size = sum((out / f["file"]).stat().st_size for f in [g, *g["external_data"]]) / 1e6
        p = manifest["parity"].get(name, {})
        fig = f"rel err {p['max_rel_error']:.1e}" if "max_rel_error" in p else ""
        if name == "llm" and "llm_int8" in manifest["parity"]:
            fig = f"int8, [SEG] cos >= {manifest['parity']['llm_int8']['seg_cosine_min']:.5f}"
        if name == "sam_image" and "sam_image_int8" in manifest["parity"]:
            fig = f"int8, feature cos >= {manifest['parity']['sam_image_int8']['feature_cosine_min']:.5f}"
        print(f"{name:<18}{g['file']:<24}{size:>8.2f}  {fig}")
    total = sum(f.stat().st_size for f in out.iterdir() if f.is_file() and not f.name.startswith("."))
    print(f"total {total / 1e6:.1f} MB; build time {timings['total']:.1f}s")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.build", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", help="GLUS checkpoint directory (default: the project's default model)")
    p.add_argument("--clip", help="CLIP ViT directory (default: config.json's vision_tower)")
    p.add_argument("--precision", default="fp32", help="fp32, fp16 (GPU) or int8")
    p.add_argument("--backend", default="onnxruntime", help="onnxruntime or tensorrt")
    p.add_argument(
        "--out",
        help="engine directory to write (default, for the default model: the"
        " directory runtime.segment uses, ~/.cache/glus-edge/engine-default-PRECISION)",
    )
    p.add_argument("--force", action="store_true", help="rebuild every graph, ignoring the cache")
    p.add_argument(
        "--int8-method",
        default="auto",
        choices=["auto", "dynamic-int8", "nbits8"],
        help="LLM int8: ONNX Runtime dynamic int8 (MatMulInteger, best on x86 CPUs),"
        " 8-bit weight-only MatMulNBits, or auto (default): the first of these two"
        " whose [SEG] cosine to fp32 is >= 0.99 (from hidden size 4096, as LLaMA-7B:"
        " nbits8 only)",
    )
    p.add_argument(
        "--int8-graphs",
        default=",".join(INT8_GRAPHS),
        help=f"comma-separated graphs an int8 build quantizes (default {','.join(INT8_GRAPHS)})",
    )
    p.add_argument(
        "--llm-process",
        default="auto",
        choices=LLM_PROCESSES,
        help="where llm.onnx is exported: child (a process of its own, whose memory goes back"
        " when it exits: the way to export a 7B), same, or auto (default: child from"
        " 1 GiB of fp32 LLM weights)",
    )
    p.add_argument(
        "--verbose",
        action="store_true",
        help="also show third-party messages the build filters (torch.onnx, ONNX Runtime)",
    )
    p.add_argument(
        "--keep-build-files",
        action="store_true",
        help="keep OUT/.build/ (the fp32 graphs an int8/fp16 engine replaces) for later rebuilds",
    )
    p.add_argument(
        "--accuracy-level",
        type=int,
        default=4,
        help="MatMulNBits accuracy_level (4 = int8 compute, the fast one on CPUs)",
    )
    p.add_argument(
        "--batched-llm",
        action="store_true",
        help="also write the batched LLM graph (the expressions of a frame in one call, for"
        " segment_video/stream's batch_llm=True); int8 quantizes it as the LLM",
    )
    a = p.parse_args(argv)
    if a.clip and not a.checkpoint:
        p.error("--clip needs --checkpoint")
    if a.out is None:
        if a.checkpoint:
            p.error("--out is required with --checkpoint")
        from .default_model import default_engine_dir

        a.out = str(default_engine_dir(a.precision))
    try:
        build(
            a.checkpoint,
            a.clip,
            precision=a.precision,
            backend=a.backend,
            out=a.out,
            force=a.force,
            int8_method=a.int8_method,
            accuracy_level=a.accuracy_level,
            int8_graphs=tuple(g for g in a.int8_graphs.split(",") if g),
            llm_process=a.llm_process,
            keep_build_files=a.keep_build_files,
            batched_llm=a.batched_llm,
            verbose=a.verbose,
        )
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the engine directory has no manifest and will not be used", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
