"""evalkit.failmodes: per-frame outcomes on look-alike twins, and the [SEG] read-out test."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evalkit import synth
from evalkit.failmodes import OUTCOMES, frame_outcome, pick_by_probe, summarize, twin_cases


def _box(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_frame_outcomes_by_hand():
    target, twin = _box(20, 40, 5, 15, 2, 12), _box(20, 40, 5, 15, 25, 35)  # 100 px each
    assert frame_outcome(target, target, twin) == "right"
    assert frame_outcome(twin, target, twin) == "swap"
    assert frame_outcome(target | twin, target, twin) == "merge"  # IoU 0.5 with each: still a merge
    assert frame_outcome(np.zeros_like(target), target, twin) == "miss"
    assert frame_outcome(_box(20, 40, 0, 4, 14, 22), target, twin) == "other"
    assert frame_outcome(target, target, np.zeros_like(twin)) == "absent"  # twin out of view
    # 6 of the target's 10 columns and 6 of the twin's: covers >= half of both, IoU 60/200 each
    assert frame_outcome(_box(20, 40, 5, 15, 6, 12) | _box(20, 40, 5, 15, 25, 31), target, twin) == "merge"
    # IoU with the target exactly 0.5 counts as right
    assert frame_outcome(_box(20, 40, 5, 15, 2, 22), target, twin) == "right"


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 8), st.integers(1, 8), st.integers(1, 8), st.integers(1, 8), st.integers(0, 3))
def test_union_of_both_is_right_or_merge_and_each_alone_is_itself(th, tw, oh, ow, gap):
    """Disjoint boxes: the target alone is right, the twin alone is swap, both together merge,
    whichever is larger (the union's IoU with the larger one is >= 0.5)."""
    target = _box(10, 30, 0, th, 0, tw)
    twin = _box(10, 30, 0, oh, 10 + gap, 10 + gap + ow)
    assert frame_outcome(target, target, twin) == "right"
    assert frame_outcome(twin, target, twin) == "swap"
    assert frame_outcome(target | twin, target, twin) == "merge"


def test_summarize_counts_shares_and_leaves_absent_frames_out():
    s = summarize([["right", "merge", "absent"], ["right", "swap", "right"]])
    assert s["frames"] == 5
    assert (
        s["right"] == pytest.approx(3 / 5) and s["merge"] == pytest.approx(1 / 5) and s["swap"] == pytest.approx(1 / 5)
    )
    assert s["other"] == 0 and s["miss"] == 0
    assert s["by_frame"]["right"] == [1.0, 0.0, 1.0]  # frame 2: only the second case counts
    assert s["by_frame"]["merge"] == [0.0, 0.5, 0.0]
    assert set(s["by_frame"]) == set(OUTCOMES)


def test_twin_cases_pair_same_colour_and_shape_objects_with_their_own_expressions(tmp_path):
    synth.generate(tmp_path, 4, 5, (48, 64), seed=5, split="s5")
    meta = json.loads((tmp_path / "s5" / "synth_meta.json").read_text())["videos"]
    cases = twin_cases(tmp_path, "s5")
    assert cases  # the generator always draws a same-shape pair; some share the colour too
    for c in cases:
        v = meta[c.video]
        objs = {o["obj_id"]: o for o in v["objects"]}
        (t,), (o,) = v["expressions"][c.exp_id]["obj_ids"], v["expressions"][c.twin_exp_id]["obj_ids"]
        assert t != o and (objs[t]["colour"], objs[t]["shape"]) == (objs[o]["colour"], objs[o]["shape"])
        np.testing.assert_allclose(c.target_xy, objs[t]["trajectory"])
        np.testing.assert_allclose(c.twin_xy, objs[o]["trajectory"])
        assert c.target_xy.shape == (5, 2)


def test_the_read_out_finds_an_embedding_that_holds_the_place_and_not_one_that_does_not():
    rng = np.random.default_rng(0)
    n = 400
    target = rng.uniform(0, 128, (n, 2))
    twin = rng.uniform(0, 128, (n, 2))
    groups = np.repeat(["a", "b"], n // 2)
    mix = rng.normal(size=(2, 16))
    knows = target @ mix + rng.normal(scale=0.5, size=(n, 16))  # the target's place, linearly
    assert pick_by_probe(knows, target, twin, groups).mean() > 0.95
    # symmetric in the two objects: the read-out cannot tell which is asked for
    blind = (target + twin) @ mix + rng.normal(scale=0.5, size=(n, 16))
    assert 0.35 < pick_by_probe(blind, target, twin, groups).mean() < 0.65
    with pytest.raises(ValueError, match="two groups"):
        pick_by_probe(knows, target, twin, np.zeros(n))


def test_the_benchmark_finds_the_merges_of_a_segmenter_that_merges_every_other_frame(tmp_path, monkeypatch):
    """python -m benchmarks.failmodes end to end, on a stand-in for the reference that returns
    the target on even frames and both twins on odd ones, with a [SEG] that holds the target's
    place on even frames and the twins' midpoint on odd ones: the report must say so."""
    from types import SimpleNamespace

    import benchmarks.failmodes as FM
    import reference
    import training.data as TD
    from evalkit.formats import load_dataset
    from evalkit.heldout import _frames

    data = []
    for seed in (5, 6):
        synth.generate(tmp_path / "data", 5, 6, (48, 64), seed=seed, split=f"s{seed}")
        data.append((str(tmp_path / "data"), f"s{seed}"))
    known = {}
    for root, split in data:
        ds = load_dataset("mevis", root, split)
        for c in twin_cases(root, split):
            exprs = {e.exp_id: e for e in ds.expressions_of(c.video)}
            key = (exprs[c.exp_id].text, _frames(ds, c.video)[0].tobytes())
            known[key] = (ds, exprs[c.exp_id], exprs[c.twin_exp_id], c)
    rng = np.random.default_rng(0)

    def fake_segment_video(ref, frames, text):
        ds, e, o, c = known[(text, frames[0].tobytes())]
        masks, segs = [], []
        for f in range(len(frames)):
            t, w = ds.gt_mask(e, f), ds.gt_mask(o, f)
            odd = f % 2 == 1
            masks.append(t | w if odd else t)
            place = (c.target_xy[f] + c.twin_xy[f]) / 2 if odd else c.target_xy[f]
            segs.append(np.concatenate([place, rng.normal(scale=0.1, size=6)]))
        return SimpleNamespace(masks=masks, frames=[SimpleNamespace(seg_embedding=s) for s in segs])

    monkeypatch.setattr(TD, "write_heldout", lambda *a, **k: data)
    monkeypatch.setattr(reference, "load", lambda *a, **k: None)
    monkeypatch.setattr(reference, "segment_video", fake_segment_video)
    out = tmp_path / "out"
    assert FM.main(["--model", str(tmp_path / "m"), "--out", str(out), "--threads", "1"]) == 0
    got = json.loads((out / "failmodes-m.json").read_text())
    cases = got["cases"]
    assert len(cases) == len(known) and {c["split"] for c in cases} == {"s5", "s6"}
    seen = [o for c in cases for o in c["outcomes"] if o != "absent"]
    even = [o for c in cases for f, o in enumerate(c["outcomes"]) if o != "absent" and f % 2 == 0]
    assert set(even) == {"right"}
    assert got["summary"]["right"] == pytest.approx(len(even) / len(seen))
    assert got["summary"]["merge"] == pytest.approx(1 - len(even) / len(seen))
    assert got["summary"]["by_frame"]["merge"][1] == 1.0 and got["summary"]["by_frame"]["right"][0] == 1.0
    assert got["probe"]["right"] > 0.9 and got["probe"]["merge"] < 0.75
    assert "| merge |" in (out / "failmodes-m.md").read_text()
