"""Synthetic generator: determinism, layouts, truthful metadata, unambiguous expressions."""

from __future__ import annotations

import hashlib
import json
import time

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_api

from benchmarks.synth import main as synth_main
from evalkit.formats import load_dataset
from evalkit.synth import COLOURS, MOTIONS, PLURAL_SHAPES, SHAPES, generate, make_video, parse_size, resolve

# pycocotools' own numpy-2 deprecation noise when the tests decode RLEs directly
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SIZE = (64, 80)


def tree_digest(root):
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    summary = generate(out, videos=6, frames=10, size=SIZE, seed=11, formats=("mevis", "ytvos"))
    return out, summary


def test_same_seed_same_bytes(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate(a, 3, 6, SIZE, seed=4, formats=("mevis", "ytvos"))
    generate(b, 3, 6, SIZE, seed=4, formats=("mevis", "ytvos"))
    generate(c, 3, 6, SIZE, seed=5, formats=("mevis", "ytvos"))
    da, db, dc = tree_digest(a), tree_digest(b), tree_digest(c)
    assert da == db
    assert len(da) > 3 * 6 * 2  # jpgs + pngs + json files
    jpgs = [k for k in da if k.endswith(".jpg")]
    assert any(da[k] != dc.get(k) for k in jpgs)


def test_video_does_not_depend_on_video_count():
    v_small = make_video(9, 1, 6, SIZE)
    v_again = make_video(9, 1, 6, SIZE)
    assert np.array_equal(np.stack(v_small.annotation.images), np.stack(v_again.annotation.images))
    assert v_small.meta == v_again.meta


def test_layout_and_frames(dataset_dir):
    out, s = dataset_dir
    assert s.videos == [f"synth_{i:05d}" for i in range(6)]
    img_dir = out / "valid_u" / "JPEGImages" / "synth_00000"
    names = sorted(p.name for p in img_dir.iterdir())
    assert names == [f"{i:05d}.jpg" for i in range(10)]
    with Image.open(img_dir / "00000.jpg") as im:
        assert im.format == "JPEG" and im.size == (SIZE[1], SIZE[0]) and im.mode == "RGB"
    assert (out / "valid_u" / "meta_expressions.json").is_file()
    assert (out / "valid_u" / "mask_dict.json").is_file()
    assert (out / "meta_expressions" / "valid_u" / "meta_expressions.json").is_file()
    assert (out / "valid_u" / "Annotations" / "synth_00003" / "00009.png").is_file()
    assert s.meta_path == out / "valid_u" / "synth_meta.json"


def test_both_layouts_hold_the_same_masks(dataset_dir):
    out, _ = dataset_dir
    mevis = load_dataset("mevis", out, "valid_u")
    ytvos = load_dataset("ytvos", out, "valid_u")
    yt = {(e.video, e.exp_id): e for e in ytvos.expressions}
    single = [e for e in mevis.expressions if len(e.obj_ids) == 1]
    assert {(e.video, e.exp_id) for e in single} == set(yt)
    for e in single[:12]:
        for i in range(len(e.frames)):
            assert np.array_equal(mevis.gt_mask(e, i), ytvos.gt_mask(yt[(e.video, e.exp_id)], i))


def _meta(out):
    return json.loads((out / "valid_u" / "synth_meta.json").read_text())


def test_metadata_vocabulary(dataset_dir):
    out, s = dataset_dir
    meta = _meta(out)
    assert meta["size"] == list(SIZE) and meta["frames"] == 10 and meta["seed"] == 11
    assert meta["vocabulary"]["colours"] == list(COLOURS)
    for v in meta["videos"].values():
        assert 3 <= len(v["objects"]) <= 5
        for o in v["objects"]:
            assert o["colour"] in COLOURS and o["shape"] in SHAPES and o["motion"] in MOTIONS
            assert len(o["trajectory"]) == 10
    assert s.n_objects == sum(len(v["objects"]) for v in meta["videos"].values())
    assert s.n_expressions == sum(len(v["expressions"]) for v in meta["videos"].values())


def _motion_from_trajectory(traj):
    """Name the motion from the positions alone (independent of the generator's labels)."""
    p = np.asarray(traj)
    d = np.diff(p, axis=0)
    moving = np.abs(d).sum(axis=1) > 1e-6
    if not moving.any():
        return "still"
    if moving[0] and not moving[-1] and not moving[np.argmin(moving) :].any():
        return "stop"
    for axis, (neg, pos) in ((0, ("left", "right")), (1, ("up", "down"))):
        if np.all(np.abs(d[:, 1 - axis]) < 1e-6):
            s = np.sign(d[:, axis])
            if np.all(s < 0):
                return neg
            if np.all(s > 0):
                return pos
            if (s[:-1] * s[1:] < 0).any():
                return "bounce"
    return "other"


def test_motion_labels_match_trajectories(dataset_dir):
    out, _ = dataset_dir
    for v in _meta(out)["videos"].values():
        for o in v["objects"]:
            assert _motion_from_trajectory(o["trajectory"]) == o["motion"], o


def test_every_expression_denotes_exactly_its_targets(dataset_dir):
    out, _ = dataset_dir
    meta = _meta(out)
    n_multi = 0
    for vid, v in meta["videos"].items():
        objs = v["objects"]
        texts = [e["exp"] for e in v["expressions"].values()]
        assert len(set(texts)) == len(texts), vid
        for exp_id, e in v["expressions"].items():
            attrs = e["attributes"]
            targets = set(e["obj_ids"])
            # independent check: targets share every mentioned attribute, every other object
            # differs in a mentioned colour or shape, or has a plainly different motion label.
            for o in objs:
                same = all(attrs[k] is None or o[k] == attrs[k] for k in ("colour", "shape", "motion"))
                assert same == (o["obj_id"] in targets), (vid, exp_id, o)
            assert resolve(objs, attrs) == sorted(targets)
            # the text says what the attributes say
            text = e["exp"]
            assert text.startswith("the ")
            if attrs["colour"]:
                assert attrs["colour"] in text
            if attrs["shape"]:
                noun = PLURAL_SHAPES[attrs["shape"]] if len(targets) > 1 else attrs["shape"]
                assert noun in text.split()
            assert any(c in text for c in COLOURS) == bool(attrs["colour"])
            n_multi += len(targets) > 1
    assert n_multi >= 1


def test_distractor_needs_the_video(dataset_dir):
    # Each video has a pair of same-shape objects; shape alone never names one of them.
    out, _ = dataset_dir
    for v in _meta(out)["videos"].values():
        shapes = [o["shape"] for o in v["objects"]]
        assert any(shapes.count(s) >= 2 for s in shapes)
        for e in v["expressions"].values():
            a = e["attributes"]
            if len(e["obj_ids"]) == 1 and a["colour"] is None and a["motion"] is None:
                assert shapes.count(a["shape"]) == 1


def test_masks_are_visible_parts_and_colours_are_true(dataset_dir):
    out, _ = dataset_dir
    meta = _meta(out)
    mevis = json.loads((out / "valid_u" / "meta_expressions.json").read_text())["videos"]
    mask_dict = json.loads((out / "valid_u" / "mask_dict.json").read_text())
    for vid, v in list(meta["videos"].items())[:3]:
        objs = {o["obj_id"]: o for o in v["objects"]}
        anno = {}
        for e in mevis[vid]["expressions"].values():
            for o, a in zip(e["obj_id"], e["anno_id"]):
                anno[o] = a
        for t in range(10):
            img = np.asarray(Image.open(out / "valid_u" / "JPEGImages" / vid / f"{t:05d}.jpg"), dtype=np.float64)
            cover = np.zeros(SIZE, dtype=np.int32)
            for o, a in anno.items():
                rle = mask_dict[str(a)][t]
                if rle is None:
                    assert objs[o]["visible_pixels"][t] == 0
                    continue
                m = mask_api.decode(rle).astype(bool)
                assert m.sum() == objs[o]["visible_pixels"][t]
                cover += m
                if m.sum() >= 60:  # named colour is the closest palette colour to the mean pixel
                    mean = img[m].mean(axis=0)
                    nearest = min(COLOURS, key=lambda c: np.sum((np.array(COLOURS[c]) * 0.86 - mean) ** 2))
                    assert nearest == objs[o]["colour"], (vid, t, o, mean)
            assert cover.max() <= 1  # visible parts never overlap


def test_generation_is_fast(tmp_path):
    start = time.perf_counter()
    s = generate(tmp_path, videos=10, frames=24, size=(256, 256), seed=0)
    took = time.perf_counter() - start
    assert len(s.videos) == 10
    assert took < 15, f"generation took {took:.1f}s"


def test_bad_arguments():
    with pytest.raises(ValueError, match="frames must be at least"):
        generate("/nonexistent", 1, 2, SIZE)
    with pytest.raises(ValueError, match="formats"):
        generate("/nonexistent", 1, 6, SIZE, formats=("coco",))
    with pytest.raises(ValueError, match="HxW"):
        parse_size("256")
    assert parse_size("120x160") == (120, 160)


def test_cli(tmp_path, capsys):
    rc = synth_main(
        [str(tmp_path / "d"), "--videos", "2", "--frames", "6", "--size", "48x64", "--seed", "3", "--format", "both"]
    )
    assert rc == 0
    assert "wrote 2 videos x 6 frames at 48x64" in capsys.readouterr().out
    assert (tmp_path / "d" / "valid_u" / "Annotations").is_dir()
    assert synth_main([str(tmp_path / "e"), "--size", "48by64"]) == 1
    assert "error: size must look like HxW" in capsys.readouterr().err
