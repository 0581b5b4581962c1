"""The default engine's masks equal those stored before the runtime, reference and export were
restructured (tests/mask_digest.py says which cases and why): not one mask may move."""

from __future__ import annotations

import json

import pytest

from . import mask_digest


@pytest.fixture(scope="module")
def computed(tmp_path_factory):
    from export.default_model import SHIPPED

    if not (SHIPPED / "glus" / "config.json").is_file():
        pytest.skip("the shipped default model is not in this tree")
    return mask_digest.compute(mask_digest.build_engines(tmp_path_factory.mktemp("digest")))


@pytest.mark.parametrize("case", sorted(json.loads(mask_digest.DIGESTS.read_text())["cases"]))
def test_masks_unchanged(case, computed):
    want = json.loads(mask_digest.DIGESTS.read_text())["cases"][case]
    got = computed[case]
    moved = [i for i, (a, b) in enumerate(zip(got["areas"], want["areas"])) if a != b]
    assert len(got["areas"]) == len(want["areas"]), "a different number of masks"
    assert got["sha256"] == want["sha256"], (
        f"{case}: masks changed ({len(moved)} of {len(want['areas'])} masks have another area, first at {moved[:5]})"
    )
