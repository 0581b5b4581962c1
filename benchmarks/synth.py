"""Write a synthetic referring-video dataset with exact ground truth.

python -m benchmarks.synth OUT --videos N --frames T --size HxW --seed S \
    [--split valid_u] [--format mevis|ytvos|both]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from evalkit.synth import generate, parse_size


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.synth", description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="output dataset folder")
    p.add_argument("--videos", type=int, default=10)
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--size", default="256x256", help="frame size HxW")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="valid_u")
    p.add_argument("--format", choices=("mevis", "ytvos", "both"), default="mevis")
    p.add_argument(
        "--expressions-per-object", type=int, default=2, help="single-object expressions per object (at most)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    formats = ("mevis", "ytvos") if args.format == "both" else (args.format,)
    try:
        size = parse_size(args.size)
        start = time.perf_counter()
        s = generate(
            args.out, args.videos, args.frames, size, args.seed, args.split, formats, args.expressions_per_object
        )
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    took = time.perf_counter() - start
    print(
        f"wrote {len(s.videos)} videos x {s.frames} frames at {s.size[0]}x{s.size[1]} to {s.out_dir} "
        f"({', '.join(s.formats)}, split {s.split}) in {took:.1f}s"
    )
    print(f"{s.n_objects} objects, {s.n_expressions} expressions ({s.n_multi_object} multi-object)")
    print(f"metadata: {s.meta_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
