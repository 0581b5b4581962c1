"""Dataset-level J&F in the MeViS protocol.

Per frame J and F -> per expression the mean over all its frames -> the mean over
expressions (not pooled over frames); J&F = (J + F) / 2. ReVOS reports each expression
type apart and its overall score is the mean of the referring and reasoning subsets.
"""

from __future__ import annotations

import multiprocessing as mp
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .formats.common import Dataset, Expression, FormatError
from .formats.predictions import MissingPredictionError, prediction_path, read_prediction
from .metrics import BOUND_TH, boundary_f, region_similarity

MISSING_POLICIES = ("error", "empty")


@dataclass(frozen=True)
class ExpressionScore:
    video: str
    exp_id: str
    J: float
    F: float
    n_frames: int
    n_missing: int = 0
    subset: str | None = None

    @property
    def JF(self) -> float:
        return (self.J + self.F) / 2


@dataclass(frozen=True)
class Summary:
    J: float
    F: float
    n_expressions: int

    @property
    def JF(self) -> float:
        return (self.J + self.F) / 2


@dataclass
class EvaluationResult:
    expressions: list[ExpressionScore]
    overall: Summary
    subsets: dict[str, Summary] = field(default_factory=dict)
    n_missing_frames: int = 0


def score_expression(
    dataset: Dataset,
    expression: Expression,
    pred_root: Path,
    missing: str = "error",
    bound_th: float = BOUND_TH,
) -> ExpressionScore:
    """Mean J and F over every frame of one expression, at the ground truth's resolution."""
    if missing not in MISSING_POLICIES:
        raise ValueError(f"missing must be one of {MISSING_POLICIES}, got {missing!r}")
    if not expression.frames:
        raise FormatError(f"expression {expression.video}/{expression.exp_id} has no frames")
    js, fs = [], []
    n_missing = 0
    for i, frame in enumerate(expression.frames):
        gt = dataset.gt_mask(expression, i)
        try:
            pred = read_prediction(pred_root, expression.video, expression.exp_id, frame)
        except MissingPredictionError:
            if missing == "error":
                raise
            pred = np.zeros_like(gt)
            n_missing += 1
        if pred.shape != gt.shape:
            raise FormatError(
                f"prediction {prediction_path(pred_root, expression.video, expression.exp_id, frame)} is "
                f"{pred.shape[0]}x{pred.shape[1]}, ground truth is {gt.shape[0]}x{gt.shape[1]}"
            )
        js.append(region_similarity(gt, pred))
        fs.append(boundary_f(gt, pred, bound_th))
    return ExpressionScore(
        expression.video,
        expression.exp_id,
        float(np.mean(js)),
        float(np.mean(fs)),
        len(expression.frames),
        n_missing,
        expression.subset,
    )


def summarize(scores: list[ExpressionScore]) -> Summary:
    """Mean of per-expression means."""
    if not scores:
        return Summary(float("nan"), float("nan"), 0)
    return Summary(float(np.mean([s.J for s in scores])), float(np.mean([s.F for s in scores])), len(scores))


def _overall(scores: list[ExpressionScore], overall_subsets) -> tuple[Summary, dict[str, Summary]]:
    if overall_subsets is None:
        return summarize(scores), {}
    names = sorted({s.subset for s in scores if s.subset is not None})
    subsets = {n: summarize([s for s in scores if s.subset == n]) for n in names}
    parts = [subsets[n] for n in overall_subsets if n in subsets]
    if not parts:
        raise FormatError(f"no expression belongs to the subsets {list(overall_subsets)}")
    overall = Summary(
        float(np.mean([p.J for p in parts])),
        float(np.mean([p.F for p in parts])),
        sum(p.n_expressions for p in parts),
    )
    return overall, subsets


# Worker state for the fork pool: the dataset is inherited, not pickled.
_WORKER: dict = {}


def _score_index(i: int) -> ExpressionScore:
    w = _WORKER
    return score_expression(w["dataset"], w["dataset"].expressions[i], w["pred_root"], w["missing"], w["bound_th"])


def evaluate(
    dataset: Dataset,
    pred_root: str | Path,
    missing: str = "error",
    progress: bool = False,
    workers: int = 1,
    bound_th: float = BOUND_TH,
) -> EvaluationResult:
    """Score every expression of `dataset` against predictions under `pred_root`."""
    pred_root = Path(pred_root)
    if missing not in MISSING_POLICIES:
        raise ValueError(f"missing must be one of {MISSING_POLICIES}, got {missing!r}")
    if not pred_root.is_dir():
        raise FileNotFoundError(f"prediction folder not found: {pred_root}")
    if not dataset.has_gt:
        raise FileNotFoundError(f"{dataset.format} split {dataset.split!r} at {dataset.root} has no ground truth")
    if not dataset.expressions:
        raise FormatError(f"{dataset.format} split {dataset.split!r} at {dataset.root} has no expressions")

    n = len(dataset.expressions)
    bar = tqdm(total=n, desc="evaluating", unit="exp", disable=not progress)
    scores: list[ExpressionScore] = []
    try:
        if workers > 1 and n > 1:
            _WORKER.update(dataset=dataset, pred_root=pred_root, missing=missing, bound_th=bound_th)
            with mp.get_context("fork").Pool(workers) as pool:
                for s in pool.imap(_score_index, range(n), chunksize=max(1, n // (workers * 16))):
                    scores.append(s)
                    bar.update()
        else:
            for e in dataset.expressions:
                scores.append(score_expression(dataset, e, pred_root, missing, bound_th))
                bar.update()
    finally:
        bar.close()
        _WORKER.clear()

    overall, subsets = _overall(scores, getattr(dataset, "overall_subsets", None))
    return EvaluationResult(scores, overall, subsets, sum(s.n_missing for s in scores))
