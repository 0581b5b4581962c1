"""Ref-DAVIS17 as GLUS reads and scores it.

Same files as Ref-YouTube-VOS (dataset/davis17.py in GLUS):
<root>/meta_expressions/<split>/meta_expressions.json, <root>/<split>/JPEGImages,
<root>/<split>/Annotations/<video>/<frame>.png (palette, pixel value = object id),
scored with the MeViS protocol (every expression, all frames, mean of per-expression means).

GLUS' own evaluator (utils/eval_davis.py) can instead take a mask_dict holding one RLE list
per expression, keyed by a counter over sorted videos then sorted expression ids. When the
Annotations folder is absent and <root>/<split>/mask_dict.json exists, that is used.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from .common import Expression, FormatError, VideoAnnotation, read_json, write_jpegs, write_json
from .maskdict import decode_rle, encode_rle
from .ytvos import PaletteDataset, PaletteWriter, palette_paths

DEFAULT_SPLIT = "valid"


class DavisDataset(PaletteDataset):
    format = "davis"

    def __init__(self, root: Path, split: str = DEFAULT_SPLIT) -> None:
        super().__init__(root, split)
        self.mask_dict_path = Path(root) / split / "mask_dict.json"
        self._mask_dict: dict | None = None
        self._anno_of: dict[tuple[str, str], int] = {}
        if not self.annotation_root.is_dir() and self.mask_dict_path.is_file():
            md = read_json(self.mask_dict_path)
            if not isinstance(md, dict):
                raise FormatError(f"{self.mask_dict_path}: expected an object keyed by expression counter")
            self._mask_dict = md
            self._anno_of = glus_expression_counter(self.expressions)

    @property
    def gt_source(self) -> str:
        return "mask_dict" if self._mask_dict is not None else "annotations"

    @property
    def has_gt(self) -> bool:
        return self._mask_dict is not None or self.annotation_root.is_dir()

    def _object_masks(self, expression: Expression, frame_index: int) -> Iterable[np.ndarray | None]:
        if self._mask_dict is None:
            yield from super()._object_masks(expression, frame_index)
            return
        key = str(self._anno_of[(expression.video, expression.exp_id)])
        entry = self._mask_dict.get(key)
        if not isinstance(entry, list) or len(entry) != len(expression.frames):
            raise FormatError(
                f"{self.mask_dict_path}: entry {key} (expression {expression.video}/{expression.exp_id}) "
                f"must list one RLE or null per frame ({len(expression.frames)})"
            )
        rle = entry[frame_index]
        yield None if rle is None else decode_rle(rle, f"{self.mask_dict_path} entry {key} frame {frame_index}")

    def _find_size(self, video: str) -> tuple[int, int]:
        if self._mask_dict is not None:
            for e in self.expressions_of(video):
                for rle in self._mask_dict.get(str(self._anno_of[(video, e.exp_id)]), []) or []:
                    if isinstance(rle, dict) and "size" in rle:
                        return int(rle["size"][0]), int(rle["size"][1])
            size = self._image_size(video)
            if size is None:
                raise FormatError(f"cannot tell the frame size of video {video}: no mask and no image")
            return size
        return super()._find_size(video)


def glus_expression_counter(expressions: Sequence[Expression]) -> dict[tuple[str, str], int]:
    """GLUS eval_davis numbering: a counter over sorted video names, then sorted exp ids (as strings)."""
    by_video: dict[str, list[str]] = {}
    for e in expressions:
        by_video.setdefault(e.video, []).append(e.exp_id)
    out = {}
    n = 0
    for vid in sorted(by_video):
        for exp_id in sorted(by_video[vid]):
            out[(vid, exp_id)] = n
            n += 1
    return out


def load_davis(root: Path, split: str = DEFAULT_SPLIT) -> DavisDataset:
    return DavisDataset(root, split)


DavisWriter = PaletteWriter


def write_davis(root: Path, split: str, videos: Sequence[VideoAnnotation], expressions: Sequence[Expression]) -> None:
    with DavisWriter(root, split) as w:
        for v in videos:
            w.add_video(v, [e for e in expressions if e.video == v.name])


def write_davis_mask_dict(
    root: Path, split: str, videos: Sequence[VideoAnnotation], expressions: Sequence[Expression]
) -> None:
    """The GLUS eval_davis variant: meta_expressions + <split>/mask_dict.json (one RLE list per
    expression, numbered by `glus_expression_counter`), no Annotations folder."""
    by_name = {v.name: v for v in videos}
    meta: dict[str, dict] = {}
    for v in videos:
        v.validate()
        meta[v.name] = {"expressions": {}, "frames": list(v.frames)}
    for e in expressions:
        if e.video not in by_name:
            raise ValueError(f"expression {e.video}/{e.exp_id} refers to an unknown video")
        if len(e.obj_ids) != 1:
            raise ValueError(f"expression {e.video}/{e.exp_id}: this layout holds one object an expression")
        meta[e.video]["expressions"][e.exp_id] = {"exp": e.text, "obj_id": str(e.obj_ids[0])}
    mask_dict = {}
    for (vid, exp_id), n in glus_expression_counter(expressions).items():
        exp = next(e for e in expressions if e.video == vid and e.exp_id == exp_id)
        masks = by_name[vid].objects[exp.obj_ids[0]]
        mask_dict[str(n)] = [None if m is None or not np.any(m) else encode_rle(m) for m in masks]
    paths = palette_paths(root, split)
    write_json(paths["meta"], {"videos": meta})
    write_json(Path(root) / split / "mask_dict.json", mask_dict)
    for v in videos:
        if v.images is not None:
            write_jpegs(paths["images"] / v.name, v.frames, v.images)
