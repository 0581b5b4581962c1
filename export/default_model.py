"""The project's default model: what `export.build` and `runtime.segment` use without --checkpoint.

It is the small GLUS trained by `python -m training.train` and shipped in models/glus-tiny
(see models/glus-tiny/TRAINING.md). A tree without it falls back to the seeded tiny random GLUS
written by `reference.make_tiny` (seed 0) into a cache directory, built on first use.
"""

from __future__ import annotations

from pathlib import Path

from runtime.paths import cache_dir, default_engine_dir

__all__ = ["SHIPPED", "cache_dir", "default_checkpoint", "default_engine_dir"]

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "models" / "glus-tiny"  # the trained default model


def default_checkpoint() -> tuple[Path, Path]:
    """(glus_dir, clip_dir) of the default model, writing the tiny random one if needed."""
    if (SHIPPED / "glus" / "config.json").is_file():
        return SHIPPED / "glus", SHIPPED / "clip"
    out = cache_dir() / "tiny-random-seed0"
    glus_dir, clip_dir = out / "glus", out / "clip"
    done = out / ".complete"
    if not done.is_file():
        from reference.make_tiny import make_tiny

        make_tiny(out, seed=0)
        done.write_text("ok\n")
    return glus_dir, clip_dir
