"""Training and held-out data: synthetic referring videos (evalkit.synth).

Training videos are drawn on the fly, `evalkit.synth.make_video(seed, index, ...)` with a
training seed and an increasing index, so no video is ever repeated; each frame goes through
the same JPEG (quality 95, PIL) round trip as the frames `evalkit.synth.generate` writes for
evaluation. The held-out set is written to disk with `evalkit.synth.generate` from other seeds.

A training sample is what one GLUS training item is (dataset/refer_video_seg_dataset.py):
one video, several expressions of it, 4 context frames (one random frame in each quarter of
the video, or the inference rule's frames), and a run of consecutive query frames.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from evalkit import synth
from runtime import rules

# Training data seeds are offset from the run seed; held-out data uses seeds no run draws from.
TRAIN_DATA_SEED_BASE = 1000
HELDOUT_SEEDS = (424242, 535353)


def jpeg_roundtrip(img: np.ndarray, quality: int = 95) -> np.ndarray:
    """What evalkit.formats.common.write_jpegs stores, read back as RGB."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img, dtype=np.uint8)).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.array(im.convert("RGB"))


@dataclass
class TrainVideo:
    name: str
    frames: list[np.ndarray]  # RGB uint8, H x W x 3
    objects: dict[int, np.ndarray]  # obj_id -> bool [T, H, W] (visible part)
    expressions: list[tuple[str, tuple[int, ...]]]  # (normalized expression, target obj_ids)
    pair: tuple[int, int]  # the same-shape distractor pair (obj_ids 1 and 2 in evalkit.synth)
    attributes: list[dict] = field(default_factory=list)  # per expression: colour/shape/motion
    objects_meta: list[dict] = field(default_factory=list)  # synth_meta's objects (colour, shape, motion)

    def needs(self, i: int) -> str:
        """ "colour" | "shape" | "motion": what expression i needs (evalkit's held-out split)."""
        return synth.expression_need(self.objects_meta, self.attributes[i], self.expressions[i][1])

    def target(self, obj_ids: tuple[int, ...]) -> np.ndarray:
        """bool [T, H, W]: union of the objects' masks (MeViS: ground truth of a multi-object expression)."""
        out = np.zeros_like(next(iter(self.objects.values())))
        for o in obj_ids:
            out |= self.objects[o]
        return out


def make_train_video(seed: int, index: int, frames: int, size: tuple[int, int]) -> TrainVideo:
    v = synth.make_video(seed, index, frames, size, per_object=2)
    ann = v.annotation
    h, w = ann.size
    objects = {}
    for obj_id, masks in ann.objects.items():
        objects[obj_id] = np.stack([m if m is not None else np.zeros((h, w), bool) for m in masks])
    images = [jpeg_roundtrip(img) for img in ann.images]
    exprs = [(rules.normalize_expression(e.text), tuple(e.obj_ids)) for e in v.expressions]
    attrs = [dict(v.meta["expressions"][e.exp_id]["attributes"], n=len(e.obj_ids)) for e in v.expressions]
    return TrainVideo(ann.name, images, objects, exprs, (1, 2), attrs, v.meta["objects"])


@dataclass
class Sample:
    video: TrainVideo
    context: list[int]  # 4 frame indices
    query: list[int]  # consecutive frame indices (the memory-bank run)
    exprs: list[int]  # indices into video.expressions


def context_frames(rng: np.random.Generator, n: int, exact_prob: float) -> list[int]:
    """GLUS training picks one random frame in each of the C equal parts of the video; with
    probability `exact_prob` we use the inference rule instead (the middle clip)."""
    if rng.random() < exact_prob:
        return rules.context_frame_indices(n)
    idx = np.linspace(0, n, rules.NUM_CONTEXT + 1, dtype=int)
    return [int(rng.integers(idx[j], max(idx[j] + 1, idx[j + 1]))) % n for j in range(rules.NUM_CONTEXT)]


def pick_expressions(rng: np.random.Generator, video: TrainVideo, k: int) -> list[int]:
    """Up to k expressions of different targets when possible: the same-shape distractor pair
    first (most of the time), so the contrastive loss has its hard false positives in the same
    sample; positives are the same target's [SEG] embeddings at the other query frames (and a
    second expression of it when there is room)."""
    by_target: dict[tuple[int, ...], list[int]] = {}
    for i, (_, ids) in enumerate(video.expressions):
        by_target.setdefault(tuple(sorted(ids)), []).append(i)
    pair = [t for t in ((video.pair[0],), (video.pair[1],)) if t in by_target]
    rest = [t for t in by_target if t not in pair]
    rng.shuffle(rest)
    order = pair + rest if rng.random() < 0.7 else rest + pair
    chosen: list[int] = []
    for rank in range(max(len(v) for v in by_target.values())):
        for t in order:
            opts = by_target[t]
            if rank < len(opts) and len(chosen) < k:
                chosen.append(opts[(rank + int(rng.integers(len(opts)))) % len(opts)])
    return chosen


def make_sample(
    rng: np.random.Generator,
    video: TrainVideo,
    n_query: int,
    k: int,
    exact_context_prob: float = 0.5,
    early_prob: float = 0.0,
) -> Sample:
    """`early_prob`: the query run starts at frame 0 this often (else anywhere), so the windows
    of one to three frames the video's first frames get at inference are drawn more often
    (uniform starts give them ~1 in 9 samples). 0 draws exactly what it always did."""
    n = len(video.frames)
    q = min(n_query, n)
    if early_prob > 0 and rng.random() < early_prob:
        start = 0
    else:
        start = int(rng.integers(0, n - q + 1))
    return Sample(
        video,
        context_frames(rng, n, exact_context_prob),
        list(range(start, start + q)),
        pick_expressions(rng, video, k),
    )


def target_locations(video, targets: list[tuple[int, ...]], frames: list[int]):
    """Where each target is in each frame: centres [K, Q, O, 2], (x, y) in [0, 1], the centroid
    of each of the target's O objects' visible pixels; NaN where an object is not visible (and
    in the padding of targets with fewer objects)."""
    h, w = next(iter(video.objects.values())).shape[-2:]
    n_obj = max(len(t) for t in targets)
    centres = np.full((len(targets), len(frames), n_obj, 2), np.nan, dtype=np.float32)
    for k, ids in enumerate(targets):
        for o, obj in enumerate(ids):
            for j, f in enumerate(frames):
                ys, xs = np.nonzero(video.objects[obj][f])
                if len(xs):
                    centres[k, j, o] = ((xs.mean() + 0.5) / w, (ys.mean() + 0.5) / h)
    return centres


def write_heldout(
    out_dir, videos: int, frames: int, size: tuple[int, int], seeds: tuple[int, ...] = HELDOUT_SEEDS
) -> list[tuple[str, str]]:
    """Held-out MeViS-layout sets, one split per seed; returns [(root, split)]."""
    out = []
    per = -(-videos // len(seeds))
    for k, seed in enumerate(seeds):
        split = f"heldout_{seed}"
        n = min(per, videos - k * per)
        if n <= 0:
            break
        root = Path(out_dir)
        if not (root / split / "meta_expressions.json").is_file():
            synth.generate(root, n, frames, size, seed=seed, split=split)
        out.append((str(root), split))
    return out
