"""Layouts whose ground truth is a `mask_dict`: {str(anno_id): [COCO RLE or null per frame]}.

MeViS and ReVOS store one RLE list per annotated object (anno_id); an expression lists the
anno_ids of its objects and its ground truth is their union. null means the object is absent.
RLEs are pycocotools' Fortran-order encoding with `counts` as a str.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from .common import (
    Dataset,
    Expression,
    FormatError,
    VideoAnnotation,
    expression_text,
    int_list,
    read_json,
    video_entry,
    videos_section,
    write_jpegs,
    write_json,
)


def encode_rle(mask: np.ndarray) -> dict:
    """COCO RLE of a bool HxW mask, JSON-ready (counts as str)."""
    from pycocotools import mask as mask_api  # only the RLE layouts need it: pip install '.[eval]'

    rle = mask_api.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: dict, where: str) -> np.ndarray:
    """Bool HxW mask of a COCO RLE dict; `where` names it in errors."""
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise FormatError(f"{where}: expected a COCO RLE dict with 'size' and 'counts', got {type(rle).__name__}")
    from pycocotools import mask as mask_api

    try:
        with warnings.catch_warnings():
            # pycocotools' numpy-2 __array__ DeprecationWarning, harmless and once per mask
            warnings.simplefilter("ignore", DeprecationWarning)
            return mask_api.decode(rle).astype(bool)
    except Exception as e:  # noqa: BLE001 (pycocotools raises bare Exceptions/TypeErrors on bad counts)
        raise FormatError(f"{where}: undecodable RLE ({e})") from None


class MaskDictDataset(Dataset):
    """Reader for a meta_expressions file + mask_dict file (MeViS, ReVOS)."""

    format = "mevis"

    def __init__(
        self,
        root: Path,
        split: str,
        meta_path: Path,
        mask_dict_path: Path | None,
        image_root: Path,
        subset_of=None,
    ) -> None:
        super().__init__(root, split)
        self._image_root = Path(image_root)
        self.meta_path = Path(meta_path)
        self.mask_dict_path = Path(mask_dict_path) if mask_dict_path is not None else None
        self._mask_dict: dict | None = None
        videos = videos_section(read_json(self.meta_path), self.meta_path)
        if self.mask_dict_path is not None and self.mask_dict_path.is_file():
            md = read_json(self.mask_dict_path)
            if not isinstance(md, dict):
                raise FormatError(f"{self.mask_dict_path}: expected an object keyed by anno_id")
            self._mask_dict = md
        for vid in videos:
            frames, exps = video_entry(videos, vid, self.meta_path)
            self._frames[vid] = frames
            for exp_id, exp in exps.items():
                text = expression_text(exp, vid, exp_id, self.meta_path)
                obj_ids = int_list(exp.get("obj_id", []), f"obj_id of {vid}/{exp_id}", self.meta_path)
                anno_ids: tuple[int, ...] = ()
                if self._mask_dict is not None:
                    if "anno_id" not in exp:
                        raise FormatError(f"{self.meta_path}: expression {vid}/{exp_id} has no anno_id")
                    anno_ids = int_list(exp["anno_id"], f"anno_id of {vid}/{exp_id}", self.meta_path)
                    self._check_annos(anno_ids, len(frames), f"{vid}/{exp_id}")
                subset = subset_of(exp, vid, exp_id) if subset_of is not None else None
                self.expressions.append(Expression(vid, str(exp_id), text, obj_ids, tuple(frames), anno_ids, subset))

    def _check_annos(self, anno_ids: Sequence[int], n_frames: int, name: str) -> None:
        for a in anno_ids:
            entry = self._mask_dict.get(str(a))
            if entry is None:
                raise FormatError(f"{self.mask_dict_path}: anno_id {a} of expression {name} is missing")
            if not isinstance(entry, list) or len(entry) != n_frames:
                got = len(entry) if isinstance(entry, list) else type(entry).__name__
                raise FormatError(
                    f"{self.mask_dict_path}: anno_id {a} of expression {name} has {got} entries,"
                    f" video has {n_frames} frames"
                )

    @property
    def image_root(self) -> Path:
        return self._image_root

    @property
    def has_gt(self) -> bool:
        return self._mask_dict is not None

    def _object_masks(self, expression: Expression, frame_index: int) -> Iterable[np.ndarray | None]:
        for a in expression.anno_ids:
            rle = self._mask_dict[str(a)][frame_index]
            where = f"{self.mask_dict_path} anno_id {a} frame {frame_index}"
            yield None if rle is None else decode_rle(rle, where)

    def _find_size(self, video: str) -> tuple[int, int]:
        if self._mask_dict is not None:
            for e in self.expressions_of(video):
                for a in e.anno_ids:
                    for rle in self._mask_dict[str(a)]:
                        if isinstance(rle, dict) and "size" in rle:
                            h, w = rle["size"]
                            return int(h), int(w)
        size = self._image_size(video)
        if size is None:
            raise FormatError(f"cannot tell the frame size of video {video}: no mask and no image")
        return size


class MaskDictWriter:
    """Writes meta_expressions + mask_dict (+ JPEG frames when given), one video at a time.

    Every (video, obj_id) gets its own anno_id, counted from `anno_start`; an expression
    lists the anno_ids of its objects. `type_ids` maps Expression.subset to ReVOS' type_id.
    """

    def __init__(
        self,
        meta_path: Path,
        mask_dict_path: Path,
        image_root: Path,
        anno_start: int = 0,
        type_ids: dict[str, int] | None = None,
        merge_mask_dict: bool = False,
    ) -> None:
        self.meta_path = Path(meta_path)
        self.mask_dict_path = Path(mask_dict_path)
        self.image_root = Path(image_root)
        self.type_ids = type_ids
        self._videos: dict[str, dict] = {}
        self._mask_dict: dict[str, list] = {}
        if merge_mask_dict and self.mask_dict_path.is_file():
            existing = read_json(self.mask_dict_path)
            if not isinstance(existing, dict):
                raise FormatError(f"{self.mask_dict_path}: expected an object keyed by anno_id")
            self._mask_dict = existing
            anno_start = max([anno_start, *(int(k) + 1 for k in existing)])
        self._next_anno = anno_start

    def add_video(self, video: VideoAnnotation, expressions: Sequence[Expression]) -> None:
        video.validate()
        if video.name in self._videos:
            raise ValueError(f"video {video.name} added twice")
        anno_of: dict[int, int] = {}
        for obj_id, masks in video.objects.items():
            anno_of[obj_id] = self._next_anno
            self._mask_dict[str(self._next_anno)] = [
                None if m is None or not np.any(m) else encode_rle(m) for m in masks
            ]
            self._next_anno += 1
        exps = {}
        for e in expressions:
            if e.video != video.name:
                raise ValueError(f"expression {e.video}/{e.exp_id} added with video {video.name}")
            missing = [o for o in e.obj_ids if o not in anno_of]
            if missing:
                raise ValueError(f"expression {e.video}/{e.exp_id} refers to unknown objects {missing}")
            entry = {"exp": e.text, "obj_id": list(e.obj_ids), "anno_id": [anno_of[o] for o in e.obj_ids]}
            if self.type_ids is not None:
                if e.subset not in self.type_ids:
                    raise ValueError(
                        f"expression {e.video}/{e.exp_id}: subset {e.subset!r} not in {sorted(self.type_ids)}"
                    )
                entry["type_id"] = self.type_ids[e.subset]
            exps[e.exp_id] = entry
        self._videos[video.name] = {"expressions": exps, "frames": list(video.frames)}
        if video.images is not None:
            write_jpegs(self.image_root / video.name, video.frames, video.images)

    def close(self) -> None:
        write_json(self.meta_path, {"videos": self._videos})
        write_json(self.mask_dict_path, self._mask_dict)

    def __enter__(self) -> MaskDictWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
