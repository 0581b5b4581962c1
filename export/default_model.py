"""The project's default model: what `export.build` and `runtime.segment` use without --checkpoint.

It is the small GLUS trained by `python -m training.train` and shipped in the source tree's
models/glus-tiny (see models/glus-tiny/TRAINING.md). An install without the source tree (a
plain, non-editable `pip install .` copies the packages, not models/) has no default model: the
build then says so and how to mend it, rather than building an engine from anything else.
"""

from __future__ import annotations

from pathlib import Path

from runtime.paths import cache_dir, default_engine_dir

__all__ = ["SHIPPED", "DefaultModelMissing", "cache_dir", "default_checkpoint", "default_engine_dir"]

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "models" / "glus-tiny"  # the trained default model


class DefaultModelMissing(FileNotFoundError):
    """No default model beside the package: the message says how to get one."""


def default_checkpoint() -> tuple[Path, Path]:
    """(glus_dir, clip_dir) of the shipped default model."""
    if (SHIPPED / "glus" / "config.json").is_file() and (SHIPPED / "clip").is_dir():
        return SHIPPED / "glus", SHIPPED / "clip"
    raise DefaultModelMissing(
        f"the default model is not beside the installed package (looked for {SHIPPED}): an install"
        " without the source tree carries no model. Install from a checkout with `pip install -e .`"
        " (the default model lies in its models/glus-tiny), or name a checkpoint: --checkpoint DIR"
        " --clip DIR"
    )
