"""The shipped default model can never be silently replaced by a random one: a plain,
non-editable install (which copies the packages, not models/) has no default model, and the
build says so with the mend instead of building an engine from anything else."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from export.default_model import SHIPPED, default_checkpoint

REPO = Path(__file__).resolve().parent.parent


def test_the_source_tree_has_the_trained_model():
    glus, clip = default_checkpoint()
    assert glus == SHIPPED / "glus" and (glus / "config.json").is_file() and clip.is_dir()


def test_a_non_editable_install_refuses_to_build_a_default_engine(tmp_path):
    # Built from a copy of the project (its packages and pyproject.toml): setuptools writes its
    # build/ and egg-info beside the sources it builds.
    src = tmp_path / "src"
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(
            ".git", "models", "build", "*.egg-info", "__pycache__", ".ruff_cache", ".gpu-wheels", "shared"
        ),
    )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    py = venv / "bin" / "python"
    r = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-deps", str(src)], capture_output=True, text=True, check=False
    )
    if r.returncode:
        pytest.skip(f"pip could not build the project here (no build backend reachable): {r.stderr[-300:]}")
    where = subprocess.run(
        [str(py), "-c", "import export; print(export.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(venv) in where  # the installed copy, not the source tree
    out = tmp_path / "engine"
    r = subprocess.run(
        [str(py), "-m", "export.build", "--precision", "fp32", "--out", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 2, r.stderr
    assert "the default model is not beside the installed package" in r.stderr
    assert "--checkpoint DIR --clip DIR" in r.stderr and "pip install -e ." in r.stderr
    assert not (out / "manifest.json").exists()
