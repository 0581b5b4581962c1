"""evalkit.heldout: scoring a segmenter on synthetic sets, and the static / motion split."""

from __future__ import annotations

import json

import numpy as np
import pytest

from evalkit import synth
from evalkit.formats import load_dataset
from evalkit.heldout import expression_kinds, expression_needs, needs_from_per_expression, score


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("heldout")
    synth.generate(root, 3, 6, (48, 64), seed=11, split="s11")
    return [(str(root), "s11")]


def _gt_segmenter(data):
    ds = load_dataset("mevis", *data[0])
    by_text = {}
    for e in ds.expressions:
        by_text[(e.video, e.text)] = [ds.gt_mask(e, i) for i in range(len(e.frames))]
    calls = []

    def segment(frames, texts):
        video = next(
            v
            for v in ds.videos()
            if (v, texts[0]) in by_text and len(ds.frames(v)) == len(frames) and all((v, t) in by_text for t in texts)
        )
        calls.append(video)
        return [by_text[(video, t)] for t in texts]

    return segment, calls


def test_perfect_and_empty_segmenters(data):
    seg, calls = _gt_segmenter(data)
    r = score(seg, data)
    assert r["JF"] == pytest.approx(1.0) and r["n_expressions"] == len(r["per_expression"])
    assert len(calls) == 3  # one call per video, all its expressions at once
    empty = score(lambda frames, texts: [[np.zeros(f.shape[:2], bool) for f in frames] for _ in texts], data)
    assert empty["J"] < 0.1  # J = 1 only on the few frames where the target is hidden (DAVIS rule)
    assert empty["static"]["n"] + empty["motion"]["n"] == empty["n_expressions"]


def test_expression_kinds_follow_the_attributes(data):
    root, split = data[0]
    kinds = expression_kinds(root, split)
    meta = json.loads((__import__("pathlib").Path(root) / split / "synth_meta.json").read_text())
    assert set(kinds.values()) <= {"static", "motion"}
    for video, v in meta["videos"].items():
        for exp_id, e in v["expressions"].items():
            a = e["attributes"]
            if a.get("colour") is None and a.get("shape") is None:
                # nothing static named: only the motion can pick the target out of 3+ objects
                assert kinds[(video, exp_id)] == "motion"
            if a.get("motion") is None:  # no motion word: colour/shape must name it alone
                assert kinds[(video, exp_id)] == "static"


def test_expression_needs_split_static_by_colour_and_shape(data):
    root, split = data[0]
    kinds, needs = expression_kinds(root, split), expression_needs(root, split)
    meta = json.loads((__import__("pathlib").Path(root) / split / "synth_meta.json").read_text())
    assert needs.keys() == kinds.keys() and set(needs.values()) <= {"colour", "shape", "motion"}
    for video, v in meta["videos"].items():
        colours = {o["obj_id"]: o["colour"] for o in v["objects"]}
        for exp_id, e in v["expressions"].items():
            need = needs[(video, exp_id)]
            assert (need == "motion") == (kinds[(video, exp_id)] == "motion")
            c = e["attributes"].get("colour")
            if need == "colour":  # the colour word alone picks out exactly the targets
                assert c is not None and {o for o, x in colours.items() if x == c} == set(e["obj_ids"])
            if need == "shape" and c is None:
                assert e["attributes"].get("shape") is not None
    # the pair shares a shape, so some expression in 3 videos needs more than colour
    assert {"colour", "motion"} <= set(needs.values())


def test_score_reports_the_needs_split(data):
    seg, _ = _gt_segmenter(data)
    r = score(seg, data)
    assert sum(x["n"] for x in r["needs"].values()) == r["n_expressions"]
    assert r["needs"]["motion"]["n"] == r["motion"]["n"]
    assert all(x["JF"] == pytest.approx(1.0) for x in r["needs"].values())


def test_needs_split_from_stored_per_expression_scores(data):
    empty = score(lambda frames, texts: [[np.zeros(f.shape[:2], bool) for f in frames] for _ in texts], data)
    again = needs_from_per_expression(empty, data)
    for need, x in empty["needs"].items():
        assert again[need]["n"] == x["n"]
        assert again[need]["JF"] == pytest.approx(x["JF"], abs=1e-4)


def test_benchmark_cli_writes_and_rewrites_its_report(data, tmp_path, monkeypatch):
    """python -m benchmarks.heldout: a fresh run writes .json/.md with the colour / shape split;
    --report-only rewrites them from the stored results and keeps the measurement date."""

    import benchmarks.heldout as H

    root, _split = data[0]
    import training.data as TD

    monkeypatch.setattr(TD, "write_heldout", lambda *a, **k: data)
    empty = lambda frames, texts: [[np.zeros(f.shape[:2], bool) for f in frames] for _ in texts]  # noqa: E731
    monkeypatch.setattr(H, "reference_segmenter", lambda *a, **k: empty)
    out = tmp_path / "out"
    args = ["--model", str(tmp_path / "m"), "--data", root, "--out", str(out)]
    assert H.main(args + ["--ablation", f"x={tmp_path}", "--only", "reference offline, x"]) == 0
    stored = json.loads((out / "heldout-m.json").read_text())
    r = stored["results"]["reference offline, x"]
    assert r["needs"]["motion"]["n"] == r["motion"]["n"]
    assert "static: shape needed" in (out / "heldout-m.md").read_text()
    fresh = r.pop("needs")  # as stored before the split existed
    stored["meta"]["date"] = "2000-01-01T00:00:00"
    (out / "heldout-m.json").write_text(json.dumps(stored))
    assert H.main(args + ["--report-only"]) == 0
    again = json.loads((out / "heldout-m.json").read_text())
    assert again["meta"]["date"] == "2000-01-01T00:00:00"
    rebuilt = again["results"]["reference offline, x"]["needs"]
    assert rebuilt.keys() == fresh.keys()
    assert all(rebuilt[k]["JF"] == pytest.approx(fresh[k]["JF"], abs=1e-4) for k in fresh)
    assert "2000-01-01" in (out / "heldout-m.md").read_text()
