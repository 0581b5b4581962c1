"""Training computes, bit for bit, what it computed when tests/data/train_fingerprint.<CPU vendor>.json was
written (tests/train_fingerprint.py says which run and why): every logged value of the first
steps of every stage of the v5 recipe, and the weights it saves."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from . import train_fingerprint as FP

REPO = Path(__file__).resolve().parent.parent
if not FP.FINGERPRINT.is_file():
    pytest.skip(
        f"no training fingerprint stored for this CPU ({FP.FINGERPRINT.name}): write it with"
        " `python -m tests.train_fingerprint --write` from a tree whose training code is unchanged",
        allow_module_level=True,
    )
WANT = json.loads(FP.FINGERPRINT.read_text())


@pytest.fixture(scope="module")
def computed():
    # a fresh process, as --write ran: nothing another test set (threads, RNG, caches) leaks in
    r = subprocess.run(
        [sys.executable, "-m", "tests.train_fingerprint"], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads(r.stdout)


@pytest.mark.parametrize("stage", sorted(WANT["stages"]))
def test_stage_logs_the_same_numbers(stage, computed):
    want, got = WANT["stages"][stage], computed["stages"][stage]
    assert len(got) == len(want), f"{stage}: {len(got)} logged steps, {len(want)} stored"
    for step, (g, w) in enumerate(zip(got, want)):
        assert g.keys() == w.keys(), f"{stage} step {step}: keys {sorted(g.keys() ^ w.keys())} differ"
        moved = {
            k: (float.fromhex(w[k]), float.fromhex(g[k])) if isinstance(w[k], str) else (w[k], g[k])
            for k in w
            if g[k] != w[k]
        }
        assert not moved, f"{stage} step {step}: (stored, now) {moved}"


def test_saved_weights_are_the_same(computed):
    assert computed["weights_sha256"] == WANT["weights_sha256"]
