"""What the benchmark tests share: run settings, the models (lazily loaded), the synthetic set."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from . import models

MODELS = ("tiny", "medium")
# The synthetic-set drift also runs on the shipped trained model, where J&F against the ground
# truth means something (random models: only the drift against the reference does).
DRIFT_MODELS = (*MODELS, models.TRAINED)
EXPRESSION = "the red circle moving left"  # stage benchmarks (the same one flops.py counts)


@dataclass(frozen=True)
class Settings:
    """Sizes of one run: the default set fits 10 minutes on a 2-core CPU; --benchmark-full is longer."""

    full: bool
    e2e_frames: int  # frames of the end-to-end video (both models)
    e2e_repeats: int  # interleaved repeats per variant
    frame_size: tuple[int, int]  # H, W of every synthetic frame
    synth_videos: int
    synth_frames: int
    synth_expressions_per_video: int | None  # None: all
    drift_models: tuple[str, ...]  # models whose J&F drift runs on the synthetic set
    stream_frames: int  # long-stream memory test (tiny model)
    stage_budget_s: float  # timed seconds per stage benchmark (rounds = budget / one call)

    @property
    def mode(self) -> str:
        return "full" if self.full else "default"


def settings(full: bool) -> Settings:
    if full:
        return Settings(
            True,
            e2e_frames=24,
            e2e_repeats=7,
            frame_size=(96, 128),
            synth_videos=4,
            synth_frames=24,
            synth_expressions_per_video=3,
            drift_models=DRIFT_MODELS if models.has_trained() else MODELS,
            stream_frames=1000,
            stage_budget_s=3.0,
        )
    return Settings(
        False,
        e2e_frames=8,
        e2e_repeats=5,
        frame_size=(96, 128),
        synth_videos=3,
        synth_frames=12,
        synth_expressions_per_video=2,
        drift_models=(models.TRAINED,) if models.has_trained() else ("tiny",),
        stream_frames=300,
        stage_budget_s=1.0,
    )


class ModelBench:
    """One benchmark model: checkpoint, reference, engines and FLOP counts, each made on first use."""

    def __init__(self, name: str):
        self.name = name
        self._engines: dict = {}
        self._stages: dict = {}

    @cached_property
    def dirs(self) -> tuple[Path, Path]:
        return models.checkpoint(self.name)

    @cached_property
    def tokenizer(self):
        from reference.tokenizer import load_tokenizer

        return load_tokenizer(self.dirs[0])

    @cached_property
    def reference(self):
        import reference

        return reference.load(*self.dirs)

    def engine_dir(self, precision: str) -> Path:
        return models.engine_dir(self.name, precision)

    def engine(self, precision: str):
        if precision not in self._engines:
            from runtime import GlusEngine

            self._engines[precision] = GlusEngine.load(self.engine_dir(precision))  # spin=False
        return self._engines[precision]

    def stages(self, precision: str):
        """The engine's graphs as runtime.stages.Stages, for the per-stage benchmarks."""
        if precision not in self._stages:
            from runtime.stages import Stages

            self._stages[precision] = Stages.load(self.engine_dir(precision))
        return self._stages[precision]

    @cached_property
    def flops(self):
        from .flops import shape_flops

        return shape_flops(self.name, self.tokenizer, models.cache_root())

    def describe(self) -> dict:
        """The shape (from reference.make_tiny.SHAPES) and parameter counts by part."""
        from reference.make_tiny import SHAPES

        spec = SHAPES[self.name]
        return {**{k: spec[k] for k in ("llama", "clip", "sam2")}, "params": param_counts(*self.dirs)}


def param_counts(glus_dir: Path, clip_dir: Path) -> dict[str, int]:
    """Parameters by part, read from the safetensors headers (nothing loaded)."""
    from safetensors import safe_open

    parts = {"llm": 0, "projector+seg_head": 0, "sam2": 0, "clip_vision": 0}
    for f in sorted(Path(glus_dir).glob("*.safetensors")):
        with safe_open(str(f), "np") as st:
            for k in st.keys():
                n = int(np.prod(st.get_slice(k).get_shape()))
                if k.startswith("model.visual_model."):
                    parts["sam2"] += n
                elif k.startswith(("model.mm_projector.", "model.text_hidden_fcs.")):
                    parts["projector+seg_head"] += n
                else:
                    parts["llm"] += n
    for f in sorted(Path(clip_dir).glob("*.safetensors")):
        with safe_open(str(f), "np") as st:
            parts["clip_vision"] += sum(
                int(np.prod(st.get_slice(k).get_shape())) for k in st.keys() if k.startswith("vision_model.")
            )
    return parts


# ---- synthetic data ---------------------------------------------------------------------------
def synth_dataset(videos: int, frames: int, size: tuple[int, int], seed: int = 0, split: str = "valid_u"):
    """evalkit.synth's MeViS-layout set, written once under the cache (keyed by its generator)."""
    from evalkit.formats import load_dataset
    from evalkit.synth import generate

    h = hashlib.sha256(f"{videos}:{frames}:{size}:{seed}:{split}".encode())
    for f in sorted((models.REPO / "evalkit").rglob("*.py")):
        h.update(f.read_bytes())
    root = models.cache_root() / f"synth-{h.hexdigest()[:16]}"
    done = root / ".complete"
    if not done.is_file():
        generate(root, videos, frames, size, seed, split)
        done.write_text("ok\n")
    return load_dataset("mevis", root, split)


def video_frames(dataset, video: str) -> list[np.ndarray]:
    from PIL import Image

    return [np.array(Image.open(dataset.image_path(video, f)).convert("RGB")) for f in dataset.frames(video)]


def gt_masks(dataset, expression) -> list[np.ndarray]:
    return [dataset.gt_mask(expression, i) for i in range(len(expression.frames))]


def synth_video(frames: int, size: tuple[int, int], seed: int = 1):
    """One in-memory synthetic video: (frames, first expression's text, its GT masks)."""
    from evalkit.synth import make_video

    v = make_video(seed, 0, frames, size)
    ann, exp = v.annotation, v.expressions[0]
    gts = []
    for t in range(frames):
        m = np.zeros(size, bool)
        for o in exp.obj_ids:
            if ann.objects[o][t] is not None:
                m |= ann.objects[o][t]
        gts.append(m)
    return list(ann.images), exp.text, gts
