"""MeViS layout.

<root>/<split>/JPEGImages/<video>/<frame>.jpg
<root>/<split>/meta_expressions.json  {"videos": {vid: {"expressions": {exp_id: {"exp", "obj_id": [int],
                                        "anno_id": [int]}}, "frames": [names]}}}
<root>/<split>/mask_dict.json         {str(anno_id): [RLE or null per frame]}  (absent for `valid`)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .common import Expression, VideoAnnotation
from .maskdict import MaskDictDataset, MaskDictWriter

DEFAULT_SPLIT = "valid_u"


def mevis_paths(root: Path, split: str) -> dict[str, Path]:
    base = Path(root) / split
    return {
        "meta": base / "meta_expressions.json",
        "mask_dict": base / "mask_dict.json",
        "images": base / "JPEGImages",
    }


class MevisDataset(MaskDictDataset):
    format = "mevis"

    def __init__(self, root: Path, split: str = DEFAULT_SPLIT) -> None:
        p = mevis_paths(root, split)
        super().__init__(root, split, p["meta"], p["mask_dict"], p["images"])


def load_mevis(root: Path, split: str = DEFAULT_SPLIT) -> MevisDataset:
    return MevisDataset(root, split)


class MevisWriter(MaskDictWriter):
    def __init__(self, root: Path, split: str = DEFAULT_SPLIT) -> None:
        p = mevis_paths(root, split)
        super().__init__(p["meta"], p["mask_dict"], p["images"])


def write_mevis(root: Path, split: str, videos: Sequence[VideoAnnotation], expressions: Sequence[Expression]) -> None:
    with MevisWriter(root, split) as w:
        for v in videos:
            w.add_video(v, [e for e in expressions if e.video == v.name])
