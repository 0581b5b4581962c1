"""Score a segmenter on held-out synthetic sets (MeViS layout), with a breakdown by what an
expression needs: its colour and shape alone name the target ("static"), or only the motion
tells the target from a look-alike ("motion"); static further split into "colour" (the colour
word alone names it) and "shape" (the shape is needed too).

A segmenter is any `fn(frames, texts) -> [masks per text]` (frames: RGB uint8 H x W x 3; masks:
one bool H x W per frame): the reference, the runtime offline or streaming. torch-free.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .formats import load_dataset
from .formats.predictions import write_predictions
from .scoring import evaluate, summarize
from .synth import expression_need

Segmenter = Callable[[list, list], list]


def expression_needs(root: str | Path, split: str) -> dict[tuple[str, str], str]:
    """(video, exp_id) → "colour" | "shape" | "motion" (evalkit.synth.expression_need), from the
    generator's synth_meta.json."""
    meta = json.loads((Path(root) / split / "synth_meta.json").read_text())
    return {
        (video, exp_id): expression_need(v["objects"], e["attributes"], e["obj_ids"])
        for video, v in meta["videos"].items()
        for exp_id, e in v["expressions"].items()
    }


def expression_kinds(root: str | Path, split: str) -> dict[tuple[str, str], str]:
    """(video, exp_id) → "static" (colour and shape name the target) | "motion"."""
    return {k: "motion" if n == "motion" else "static" for k, n in expression_needs(root, split).items()}


def _frames(ds, video: str) -> list[np.ndarray]:
    from PIL import Image

    return [np.asarray(Image.open(ds.image_path(video, f)).convert("RGB")) for f in ds.frames(video)]


def score(
    segment: Segmenter,
    data: Sequence[tuple[str, str]],
    *,
    limit: int | None = None,
    progress: bool = False,
    desc: str = "held-out",
) -> dict:
    """J, F, J&F over every expression of the (root, split) sets, overall and per kind."""
    all_scores, kinds, needs, per_split = [], {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for root, split in data:
            ds = load_dataset("mevis", root, split)
            for k, n in expression_needs(root, split).items():
                needs[(split, *k)] = n
                kinds[(split, *k)] = "motion" if n == "motion" else "static"
            exprs = ds.expressions[:limit] if limit else ds.expressions
            videos = list(dict.fromkeys(e.video for e in exprs))
            pred = Path(tmp) / split
            for video in tqdm(videos, desc=f"{desc} {split}", disable=not progress):
                mine = [e for e in exprs if e.video == video]
                results = segment(_frames(ds, video), [e.text for e in mine])
                for e, masks in zip(mine, results):
                    write_predictions(pred, video, e.exp_id, list(e.frames), masks)
            ds.expressions = list(exprs)
            r = evaluate(ds, pred)
            per_split[split] = {"J": r.overall.J, "F": r.overall.F, "JF": r.overall.JF, "n": r.overall.n_expressions}
            all_scores += [(split, s) for s in r.expressions]
    s = summarize([x for _, x in all_scores])
    out = {
        "J": s.J,
        "F": s.F,
        "JF": s.JF,
        "n_expressions": s.n_expressions,
        "splits": per_split,
        "per_expression": [
            (sp, x.video, x.exp_id, kinds[(sp, x.video, x.exp_id)], round(x.J, 4), round(x.F, 4))
            for sp, x in all_scores
        ],
    }
    for kind in ("static", "motion"):
        mine = [x for sp, x in all_scores if kinds[(sp, x.video, x.exp_id)] == kind]
        if mine:
            k = summarize(mine)
            out[kind] = {"J": k.J, "F": k.F, "JF": k.JF, "n": k.n_expressions}
    out["needs"] = {}
    for need in ("colour", "shape", "motion"):
        mine = [x for sp, x in all_scores if needs[(sp, x.video, x.exp_id)] == need]
        if mine:
            k = summarize(mine)
            out["needs"][need] = {"J": k.J, "F": k.F, "JF": k.JF, "n": k.n_expressions}
    return out


def needs_from_per_expression(result: dict, data: Sequence[tuple[str, str]]) -> dict:
    """The "needs" split of a score() result stored before that split existed, from its
    per-expression J and F (rounded to 4 decimals there: means within 5e-5 of score()'s)."""
    needs = {}
    for root, split in data:
        needs.update({(split, *k): v for k, v in expression_needs(root, split).items()})
    out = {}
    for need in ("colour", "shape", "motion"):
        rows = [(j, f) for sp, video, exp_id, _, j, f in result["per_expression"] if needs[(sp, video, exp_id)] == need]
        if rows:
            j, f = (float(np.mean(x)) for x in zip(*rows))
            out[need] = {"J": j, "F": f, "JF": (j + f) / 2, "n": len(rows)}
    return out
