"""Ref-YouTube-VOS layout (palette-PNG ground truth).

<root>/meta_expressions/<split>/meta_expressions.json  {"videos": {vid: {"expressions": {exp_id:
                                                        {"exp", "obj_id": "1"}}, "frames": [names]}}}
<root>/<split>/JPEGImages/<video>/<frame>.jpg
<root>/<split>/Annotations/<video>/<frame>.png          palette PNG, pixel value = object id
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .common import (
    Dataset,
    Expression,
    FormatError,
    VideoAnnotation,
    davis_palette,
    expression_text,
    int_list,
    read_json,
    video_entry,
    videos_section,
    write_jpegs,
    write_json,
)

DEFAULT_SPLIT = "valid"
LABEL_CACHE_SIZE = 128


def palette_paths(root: Path, split: str) -> dict[str, Path]:
    root = Path(root)
    return {
        "meta": root / "meta_expressions" / split / "meta_expressions.json",
        "annotations": root / split / "Annotations",
        "images": root / split / "JPEGImages",
    }


def read_label_png(path: str | Path) -> np.ndarray:
    """Object-id map of an annotation PNG: palette indices, or grey values for an 'L' PNG."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"annotation not found: {p}")
    try:
        with Image.open(p) as im:
            if im.mode not in ("P", "L"):
                raise FormatError(f"{p}: expected a palette or greyscale PNG of object ids, got mode {im.mode}")
            arr = np.array(im)
    except (OSError, SyntaxError) as e:
        raise FormatError(f"{p}: unreadable PNG ({e})") from None
    arr.setflags(write=False)
    return arr


class PaletteDataset(Dataset):
    """Reader for meta_expressions/<split> + <split>/Annotations palette PNGs."""

    format = "ytvos"

    def __init__(self, root: Path, split: str = DEFAULT_SPLIT) -> None:
        super().__init__(root, split)
        p = palette_paths(root, split)
        self.meta_path = p["meta"]
        self.annotation_root = p["annotations"]
        # Recently read label maps: the expressions of a video share their annotation PNGs.
        self._label_cache: OrderedDict[Path, np.ndarray] = OrderedDict()
        videos = videos_section(read_json(self.meta_path), self.meta_path)
        for vid in videos:
            frames, exps = video_entry(videos, vid, self.meta_path)
            self._frames[vid] = frames
            for exp_id, exp in exps.items():
                text = expression_text(exp, vid, exp_id, self.meta_path)
                obj_ids = int_list(exp.get("obj_id", []), f"obj_id of {vid}/{exp_id}", self.meta_path)
                self.expressions.append(Expression(vid, str(exp_id), text, obj_ids, tuple(frames)))

    @property
    def has_gt(self) -> bool:
        return self.annotation_root.is_dir()

    def annotation_path(self, video: str, frame: str) -> Path:
        return self.annotation_root / video / f"{frame}.png"

    def _labels(self, expression: Expression, frame_index: int) -> np.ndarray:
        path = self.annotation_path(expression.video, expression.frames[frame_index])
        labels = self._label_cache.get(path)
        if labels is None:
            labels = read_label_png(path)
            self._label_cache[path] = labels
            if len(self._label_cache) > LABEL_CACHE_SIZE:
                self._label_cache.popitem(last=False)
        else:
            self._label_cache.move_to_end(path)
        return labels

    def _object_masks(self, expression: Expression, frame_index: int) -> Iterable[np.ndarray | None]:
        if not expression.obj_ids:
            raise FormatError(f"{self.meta_path}: expression {expression.video}/{expression.exp_id} has no obj_id")
        labels = self._labels(expression, frame_index)
        for o in expression.obj_ids:
            yield labels == o

    def _find_size(self, video: str) -> tuple[int, int]:
        frames = self._frames[video]
        if self.has_gt and frames:
            return tuple(read_label_png(self.annotation_path(video, frames[0])).shape)
        size = self._image_size(video)
        if size is None:
            raise FormatError(f"cannot tell the frame size of video {video}: no annotation and no image")
        return size


class YtvosDataset(PaletteDataset):
    format = "ytvos"


def load_ytvos(root: Path, split: str = DEFAULT_SPLIT) -> YtvosDataset:
    return YtvosDataset(root, split)


def label_map(video: VideoAnnotation, frame_index: int) -> np.ndarray:
    """uint8 object-id map of one frame; objects must not overlap (a PNG holds one id a pixel)."""
    labels = np.zeros(video.size, dtype=np.uint8)
    for obj_id, masks in video.objects.items():
        if not 1 <= obj_id <= 255:
            raise ValueError(f"video {video.name}: object id {obj_id} does not fit a palette PNG (1..255)")
        m = masks[frame_index]
        if m is None:
            continue
        m = np.asarray(m, dtype=bool)
        if np.any(labels[m]):
            raise ValueError(
                f"video {video.name} frame {video.frames[frame_index]}: object {obj_id} overlaps another object"
            )
        labels[m] = obj_id
    return labels


class PaletteWriter:
    """Writes meta_expressions/<split> + <split>/Annotations (+ JPEG frames when given)."""

    def __init__(self, root: Path, split: str = DEFAULT_SPLIT) -> None:
        p = palette_paths(root, split)
        self.meta_path = p["meta"]
        self.annotation_root = p["annotations"]
        self.image_root = p["images"]
        self._videos: dict[str, dict] = {}
        self._palette = davis_palette()

    def add_video(self, video: VideoAnnotation, expressions: Sequence[Expression]) -> None:
        video.validate()
        if video.name in self._videos:
            raise ValueError(f"video {video.name} added twice")
        exps = {}
        for e in expressions:
            if e.video != video.name:
                raise ValueError(f"expression {e.video}/{e.exp_id} added with video {video.name}")
            if len(e.obj_ids) != 1:
                raise ValueError(
                    f"expression {e.video}/{e.exp_id}: this layout holds one object an expression,"
                    f" got {list(e.obj_ids)}"
                )
            if e.obj_ids[0] not in video.objects:
                raise ValueError(f"expression {e.video}/{e.exp_id} refers to unknown object {e.obj_ids[0]}")
            exps[e.exp_id] = {"exp": e.text, "obj_id": str(e.obj_ids[0])}
        out_dir = self.annotation_root / video.name
        out_dir.mkdir(parents=True, exist_ok=True)
        for i, frame in enumerate(video.frames):
            im = Image.fromarray(label_map(video, i))
            im.putpalette(self._palette)
            im.save(out_dir / f"{frame}.png")
        self._videos[video.name] = {"expressions": exps, "frames": list(video.frames)}
        if video.images is not None:
            write_jpegs(self.image_root / video.name, video.frames, video.images)

    def close(self) -> None:
        write_json(self.meta_path, {"videos": self._videos})

    def __enter__(self) -> PaletteWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()


YtvosWriter = PaletteWriter


def write_ytvos(root: Path, split: str, videos: Sequence[VideoAnnotation], expressions: Sequence[Expression]) -> None:
    with YtvosWriter(root, split) as w:
        for v in videos:
            w.add_video(v, [e for e in expressions if e.video == v.name])
