"""In-memory representation shared by every dataset layout, plus small I/O helpers."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image


class FormatError(ValueError):
    """A dataset or prediction file exists but its content is not what the layout requires."""


@dataclass(frozen=True)
class Expression:
    """One referring expression: a sentence naming one or more objects of a video.

    obj_ids are the objects it refers to (ground truth is the union of their masks);
    anno_ids are the MeViS/ReVOS annotation ids of those objects (empty for PNG layouts);
    subset names the ReVOS expression type ("referring", "reasoning"), None elsewhere.
    """

    video: str
    exp_id: str
    text: str
    obj_ids: tuple[int, ...]
    frames: tuple[str, ...]
    anno_ids: tuple[int, ...] = ()
    subset: str | None = None


@dataclass
class VideoAnnotation:
    """Ground truth of one video, the input of the writers.

    objects maps obj_id to one entry per frame: a bool HxW mask, or None when the object
    is absent from that frame. images, when given, are RGB uint8 HxWx3 frames written as JPEG.
    """

    name: str
    frames: list[str]
    size: tuple[int, int]
    objects: dict[int, list[np.ndarray | None]] = field(default_factory=dict)
    images: Sequence[np.ndarray] | None = None

    def validate(self) -> None:
        h, w = self.size
        for obj_id, masks in self.objects.items():
            if len(masks) != len(self.frames):
                raise ValueError(
                    f"video {self.name}: object {obj_id} has {len(masks)} masks for {len(self.frames)} frames"
                )
            for i, m in enumerate(masks):
                if m is not None and np.shape(m) != (h, w):
                    raise ValueError(
                        f"video {self.name}: object {obj_id} frame {i} mask has shape {np.shape(m)}, expected {(h, w)}"
                    )
        if self.images is not None and len(self.images) != len(self.frames):
            raise ValueError(f"video {self.name}: {len(self.images)} images for {len(self.frames)} frames")


class Dataset:
    """A referring-video dataset seen through one layout.

    Subclasses fill `expressions`, `_frames` (video -> frame names, in annotation order) and
    implement `_object_masks`; everything else is shared.
    """

    format: str = "base"
    # Subsets whose mean is the overall score (ReVOS); None: mean over all expressions.
    overall_subsets: tuple[str, ...] | None = None

    def __init__(self, root: Path, split: str) -> None:
        self.root = Path(root)
        self.split = split
        self.expressions: list[Expression] = []
        self._frames: dict[str, list[str]] = {}
        self._sizes: dict[str, tuple[int, int]] = {}

    # --- structure -------------------------------------------------------------------
    def videos(self) -> list[str]:
        return list(self._frames)

    def frames(self, video: str) -> list[str]:
        try:
            return list(self._frames[video])
        except KeyError:
            raise KeyError(f"unknown video {video!r} in {self.format} dataset {self.root}") from None

    def expressions_of(self, video: str) -> list[Expression]:
        return [e for e in self.expressions if e.video == video]

    def image_path(self, video: str, frame: str) -> Path:
        return self.image_root / video / f"{frame}.jpg"

    @property
    def image_root(self) -> Path:
        return self.root / self.split / "JPEGImages"

    @property
    def has_gt(self) -> bool:
        return True

    # --- ground truth ----------------------------------------------------------------
    def frame_size(self, video: str) -> tuple[int, int]:
        """(H, W) of the video's ground truth."""
        if video not in self._sizes:
            self._sizes[video] = self._find_size(video)
        return self._sizes[video]

    def gt_mask(self, expression: Expression, frame_index: int) -> np.ndarray:
        """Bool HxW ground truth of an expression at one frame: union of its objects."""
        if not self.has_gt:
            raise FileNotFoundError(f"{self.format} dataset {self.root} split {self.split} has no ground truth")
        n = len(expression.frames)
        if not 0 <= frame_index < n:
            raise IndexError(f"frame index {frame_index} outside 0..{n - 1} for {expression.video}/{expression.exp_id}")
        masks = self._object_masks(expression, frame_index)
        size = self.frame_size(expression.video)
        out = np.zeros(size, dtype=bool)
        for m in masks:
            if m is None:
                continue
            if m.shape != size:
                raise FormatError(
                    f"{expression.video} frame {expression.frames[frame_index]}: ground-truth mask is "
                    f"{m.shape[0]}x{m.shape[1]}, other frames are {size[0]}x{size[1]}"
                )
            out |= m
        return out

    def _object_masks(self, expression: Expression, frame_index: int) -> Iterable[np.ndarray | None]:
        raise NotImplementedError

    def _find_size(self, video: str) -> tuple[int, int]:
        raise NotImplementedError

    def _image_size(self, video: str) -> tuple[int, int] | None:
        frames = self._frames.get(video) or []
        for frame in frames[:1]:
            path = self.image_path(video, frame)
            if path.is_file():
                with Image.open(path) as im:
                    return im.height, im.width
        return None


# --- helpers -----------------------------------------------------------------------------
def read_json(path: Path) -> object:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise FormatError(f"malformed JSON in {path}: {e}") from None
    except UnicodeDecodeError as e:
        raise FormatError(f"{path} is not UTF-8 JSON: {e}") from None


def write_json(path: Path, obj: object) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, separators=(",", ":"))


def videos_section(meta: object, path: Path) -> dict:
    """The {"videos": {...}} mapping of a meta_expressions file, checked."""
    if not isinstance(meta, dict) or not isinstance(meta.get("videos"), dict):
        raise FormatError(f'{path}: expected an object with a "videos" mapping')
    return meta["videos"]


def video_entry(videos: dict, vid: str, path: Path) -> tuple[list[str], dict]:
    """(frames, expressions) of one video entry, checked."""
    entry = videos[vid]
    if not isinstance(entry, dict):
        raise FormatError(f"{path}: video {vid!r} is not an object")
    frames = entry.get("frames")
    exps = entry.get("expressions")
    if not isinstance(frames, list) or not all(isinstance(f, str) for f in frames):
        raise FormatError(f'{path}: video {vid!r} needs a "frames" list of names')
    if not isinstance(exps, dict):
        raise FormatError(f'{path}: video {vid!r} needs an "expressions" mapping')
    return frames, exps


def expression_text(exp: object, vid: str, exp_id: str, path: Path) -> str:
    if not isinstance(exp, dict) or not isinstance(exp.get("exp"), str):
        raise FormatError(f'{path}: expression {vid}/{exp_id} needs an "exp" string')
    return exp["exp"]


def int_list(value: object, what: str, path: Path) -> tuple[int, ...]:
    """Accept an int, a numeric string, or a list of them (the datasets mix all three)."""
    items = value if isinstance(value, list) else [value]
    try:
        return tuple(int(v) for v in items)
    except (TypeError, ValueError):
        raise FormatError(f"{path}: {what} must be integer ids, got {value!r}") from None


def write_jpegs(image_dir: Path, frames: Sequence[str], images: Sequence[np.ndarray], quality: int = 95) -> None:
    image_dir = Path(image_dir)
    image_dir.mkdir(parents=True, exist_ok=True)
    for name, img in zip(frames, images):
        img = np.ascontiguousarray(img, dtype=np.uint8)
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"frame {name}: expected an HxWx3 RGB image, got shape {img.shape}")
        Image.fromarray(img).save(image_dir / f"{name}.jpg", quality=quality)


def davis_palette() -> list[int]:
    """The 256-colour PASCAL/DAVIS palette (bit-interleaved), flat [r, g, b, ...]."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal
