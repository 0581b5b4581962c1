"""J&F of predicted masks against a referring-video dataset's ground truth.

python -m benchmarks.evaluate --format mevis --root DATA/mevis --split valid_u --pred PRED \
    [--csv OUT.csv] [--missing {error,empty}] [--workers N]

--root is the dataset's own folder (the one holding valid_u/, meta_expressions/, JPEGImages/ ...).
Predictions are PNGs at PRED/<video>/<exp_id>/<frame>.png. Scores follow the MeViS protocol:
mean over each expression's frames, then mean over expressions; ReVOS adds its subsets and an
overall score that is the mean of the referring and reasoning subsets.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from evalkit.formats import DEFAULT_SPLITS, FORMATS, FormatError, MissingPredictionError, load_dataset
from evalkit.scoring import MISSING_POLICIES, EvaluationResult, evaluate


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--format", required=True, choices=FORMATS, help="dataset layout")
    p.add_argument("--root", required=True, type=Path, help="dataset folder, e.g. DATA/mevis")
    p.add_argument(
        "--split",
        default=None,
        help="split name (default: " + ", ".join(f"{k} {v}" for k, v in DEFAULT_SPLITS.items()) + ")",
    )
    p.add_argument("--pred", required=True, type=Path, help="prediction folder <pred>/<video>/<exp_id>/<frame>.png")
    p.add_argument("--csv", type=Path, default=None, help="write per-expression scores here")
    p.add_argument("--json", type=Path, default=None, help="write the summary here")
    p.add_argument(
        "--missing",
        choices=MISSING_POLICIES,
        default="error",
        help="a missing prediction frame is an error (default) or scored as an empty mask",
    )
    p.add_argument("--workers", type=int, default=1, help="processes scoring expressions in parallel")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def format_table(result: EvaluationResult) -> str:
    rows = [(name, s) for name, s in result.subsets.items()] + [("overall", result.overall)]
    width = max(len(n) for n, _ in rows)
    lines = [f"{'':<{width}}  {'expressions':>11}  {'J':>7}  {'F':>7}  {'J&F':>7}"]
    for name, s in rows:
        lines.append(f"{name:<{width}}  {s.n_expressions:>11}  {s.J:>7.4f}  {s.F:>7.4f}  {s.JF:>7.4f}")
    return "\n".join(lines)


def write_csv(path: Path, result: EvaluationResult, with_subset: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        header = ["video", "exp_id", "J", "F", "J&F", "n_frames", "n_missing"] + (["subset"] if with_subset else [])
        w.writerow(header)
        for s in result.expressions:
            row = [s.video, s.exp_id, f"{s.J:.10g}", f"{s.F:.10g}", f"{s.JF:.10g}", s.n_frames, s.n_missing]
            w.writerow(row + ([s.subset or ""] if with_subset else []))


def summary_dict(result: EvaluationResult, fmt: str, split: str) -> dict:
    def d(s):
        return {"J": s.J, "F": s.F, "J&F": s.JF, "expressions": s.n_expressions}

    return {
        "format": fmt,
        "split": split,
        "overall": d(result.overall),
        "subsets": {k: d(v) for k, v in result.subsets.items()},
        "missing_frames": result.n_missing_frames,
    }


def run(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
    dataset = load_dataset(args.format, args.root, args.split)
    result = evaluate(dataset, args.pred, missing=args.missing, progress=not args.no_progress, workers=args.workers)
    n_frames = sum(s.n_frames for s in result.expressions)
    print(f"{args.format} {dataset.split}: {len(result.expressions)} expressions, {n_frames} frames")
    print(format_table(result))
    if result.n_missing_frames:
        print(
            f"warning: {result.n_missing_frames} of {n_frames} prediction frames were missing "
            "and scored as empty masks",
            file=sys.stderr,
        )
    if args.csv is not None:
        write_csv(args.csv, result, with_subset=bool(result.subsets))
        print(f"per-expression scores: {args.csv}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary_dict(result, args.format, dataset.split), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except MissingPredictionError as e:
        print(f"error: {e} (use --missing empty to score missing frames as empty masks)", file=sys.stderr)
    except (FileNotFoundError, FormatError, ValueError, KeyError, OSError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
