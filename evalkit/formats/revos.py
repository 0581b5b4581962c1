"""ReVOS layout (as GLUS reads it).

<root>/JPEGImages/<video>/<frame>.jpg
<root>/meta_expressions_<split>_.json  like MeViS, plus "type_id" per expression:
                                        0 = referring, 1 = reasoning (others are reported apart)
<root>/mask_dict.json                  one file for every split, keyed by anno_id
The overall score is the mean of the referring and reasoning subsets.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .common import Expression, FormatError, VideoAnnotation
from .maskdict import MaskDictDataset, MaskDictWriter

DEFAULT_SPLIT = "valid"
SUBSETS = {0: "referring", 1: "reasoning"}
TYPE_IDS = {name: tid for tid, name in SUBSETS.items()}
# Subsets whose mean forms the overall ReVOS score.
OVERALL_SUBSETS = ("referring", "reasoning")


def revos_paths(root: Path, split: str) -> dict[str, Path]:
    root = Path(root)
    return {
        "meta": root / f"meta_expressions_{split}_.json",
        "mask_dict": root / "mask_dict.json",
        "images": root / "JPEGImages",
    }


def _subset_of(meta_path: Path):
    def subset(exp: dict, vid: str, exp_id: str) -> str:
        if "type_id" not in exp:
            raise FormatError(f"{meta_path}: ReVOS expression {vid}/{exp_id} has no type_id")
        try:
            tid = int(exp["type_id"])
        except (TypeError, ValueError):
            raise FormatError(f"{meta_path}: type_id of {vid}/{exp_id} is not an integer: {exp['type_id']!r}") from None
        return SUBSETS.get(tid, f"type_{tid}")

    return subset


class RevosDataset(MaskDictDataset):
    format = "revos"
    overall_subsets = OVERALL_SUBSETS

    def __init__(self, root: Path, split: str = DEFAULT_SPLIT) -> None:
        p = revos_paths(root, split)
        super().__init__(root, split, p["meta"], p["mask_dict"], p["images"], subset_of=_subset_of(p["meta"]))


def load_revos(root: Path, split: str = DEFAULT_SPLIT) -> RevosDataset:
    return RevosDataset(root, split)


class RevosWriter(MaskDictWriter):
    """Adds to an existing mask_dict.json (shared by the splits) instead of replacing it."""

    def __init__(self, root: Path, split: str = DEFAULT_SPLIT) -> None:
        p = revos_paths(root, split)
        super().__init__(p["meta"], p["mask_dict"], p["images"], type_ids=TYPE_IDS, merge_mask_dict=True)


def write_revos(root: Path, split: str, videos: Sequence[VideoAnnotation], expressions: Sequence[Expression]) -> None:
    with RevosWriter(root, split) as w:
        for v in videos:
            w.add_video(v, [e for e in expressions if e.video == v.name])
