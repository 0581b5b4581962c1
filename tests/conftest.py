"""Shared fixtures: one tiny GLUS checkpoint per test session, and small synthetic videos."""

from __future__ import annotations

import numpy as np
import pytest


def moving_square_video(n: int = 6, h: int = 48, w: int = 64, seed: int = 0) -> list[np.ndarray]:
    """A textured background with a red square moving right: cheap, deterministic frames."""
    rng = np.random.default_rng(seed)
    bg = rng.integers(0, 120, (h, w, 3), dtype=np.uint8)
    frames = []
    for t in range(n):
        f = bg.copy()
        x = 4 + 5 * t
        f[10:30, x : x + 20] = (220, 30, 30)
        frames.append(f)
    return frames


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    from reference.make_tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture(scope="session")
def tiny_ref(tiny_dirs):
    import reference

    return reference.load(*tiny_dirs)


@pytest.fixture
def video():
    return moving_square_video()


@pytest.fixture(scope="session")
def tiny_engine_dir(tiny_dirs, tmp_path_factory):
    """fp32 engine directory of the tiny checkpoint, built once per session."""
    from export.build import build

    out = tmp_path_factory.mktemp("engine-fp32")
    build(*tiny_dirs, precision="fp32", out=out, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_engine(tiny_engine_dir):
    from runtime import GlusEngine

    return GlusEngine.load(tiny_engine_dir)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


@pytest.fixture(scope="session")
def tiny_int8_engine_dir(tiny_dirs, tmp_path_factory):
    from export.build import build

    out = tmp_path_factory.mktemp("engine-int8")
    build(*tiny_dirs, precision="int8", out=out, progress=False)
    return out
