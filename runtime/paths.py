"""Where the project keeps what it makes on a user's machine: the cache directory (GLUS_CACHE,
default ~/.cache/glus-edge) and the default engine directories in it, one per precision."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("GLUS_CACHE", Path.home() / ".cache" / "glus-edge"))


def default_engine_dir(precision: str = "int8") -> Path:
    """The engine `python -m runtime.segment` opens without --engine (export.build writes it)."""
    return cache_dir() / f"engine-default-{precision}"
