"""Dataset layouts: write -> read gives the same masks; the files look like the real ones."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_api

from evalkit.formats import (
    Expression,
    FormatError,
    MissingPredictionError,
    VideoAnnotation,
    load_dataset,
    prediction_path,
    read_prediction,
    write_davis,
    write_davis_mask_dict,
    write_mevis,
    write_prediction,
    write_revos,
    write_ytvos,
)

# pycocotools' own numpy-2 deprecation noise when the tests decode RLEs directly
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

H, W = 24, 32


def make_videos(seed=0, overlap=False):
    """Two videos of 3-4 frames; objects are random rectangles, sometimes absent (None)."""
    rng = np.random.default_rng(seed)
    videos = []
    for v, n_frames in (("vidA", 4), ("vidB", 3)):
        frames = [f"{i:05d}" for i in range(n_frames)]
        objects = {}
        for obj_id in (1, 2, 3):
            masks = []
            for i in range(n_frames):
                if (obj_id + i) % 4 == 0:
                    masks.append(None)
                    continue
                m = np.zeros((H, W), dtype=bool)
                # objects live in disjoint horizontal bands unless overlap is wanted
                band = slice(0, H) if overlap else slice((obj_id - 1) * 8, obj_id * 8)
                y0 = band.start + int(rng.integers(0, 3))
                x0, x1 = sorted(rng.integers(0, W, size=2))
                m[y0 : y0 + 5, x0 : x1 + 1] = True
                masks.append(m)
            objects[obj_id] = masks
        images = [rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8) for _ in frames]
        videos.append(VideoAnnotation(v, frames, (H, W), objects, images))
    return videos


def make_expressions(videos, multi=True):
    exps = []
    for v in videos:
        for k, obj in enumerate(v.objects):
            subset = "referring" if k % 2 == 0 else "reasoning"
            exps.append(Expression(v.name, str(k), f"object {obj} of {v.name}", (obj,), tuple(v.frames), (), subset))
        if multi:
            exps.append(Expression(v.name, "9", "objects one and three", (1, 3), tuple(v.frames), (), "reasoning"))
    return exps


def expected_mask(video, obj_ids, i):
    out = np.zeros(video.size, dtype=bool)
    for o in obj_ids:
        if video.objects[o][i] is not None:
            out |= video.objects[o][i]
    return out


def assert_round_trip(ds, videos, expressions):
    by_name = {v.name: v for v in videos}
    assert sorted(ds.videos()) == sorted(by_name)
    got = {(e.video, e.exp_id): e for e in ds.expressions}
    assert set(got) == {(e.video, e.exp_id) for e in expressions}
    for e in expressions:
        g = got[(e.video, e.exp_id)]
        assert g.text == e.text
        assert g.obj_ids == e.obj_ids
        assert g.frames == tuple(by_name[e.video].frames)
        assert ds.frames(e.video) == by_name[e.video].frames
        assert ds.frame_size(e.video) == (H, W)
        for i in range(len(g.frames)):
            m = ds.gt_mask(g, i)
            assert m.dtype == bool and m.shape == (H, W)
            assert np.array_equal(m, expected_mask(by_name[e.video], e.obj_ids, i)), (e, i)


def test_mevis_round_trip(tmp_path):
    videos, exps = make_videos(), None
    exps = make_expressions(videos)
    write_mevis(tmp_path, "valid_u", videos, exps)
    ds = load_dataset("mevis", tmp_path, "valid_u")
    assert_round_trip(ds, videos, exps)
    # images written as JPEG where the real layout keeps them
    assert ds.image_path("vidA", "00000") == tmp_path / "valid_u" / "JPEGImages" / "vidA" / "00000.jpg"
    assert ds.image_path("vidA", "00000").is_file()


def test_mevis_files_are_the_real_schema(tmp_path):
    videos = make_videos()
    exps = make_expressions(videos)
    write_mevis(tmp_path, "valid_u", videos, exps)
    meta = json.loads((tmp_path / "valid_u" / "meta_expressions.json").read_text())
    entry = meta["videos"]["vidA"]
    assert entry["frames"] == ["00000", "00001", "00002", "00003"]
    e = entry["expressions"]["9"]
    assert e["obj_id"] == [1, 3] and len(e["anno_id"]) == 2 and e["exp"] == "objects one and three"
    mask_dict = json.loads((tmp_path / "valid_u" / "mask_dict.json").read_text())
    # Decode one RLE straight with pycocotools (not through our reader): same mask, same orientation.
    anno = entry["expressions"]["0"]["anno_id"][0]
    rles = mask_dict[str(anno)]
    assert len(rles) == 4
    for i, rle in enumerate(rles):
        src = videos[0].objects[1][i]
        if src is None:
            assert rle is None
        else:
            assert isinstance(rle["counts"], str) and rle["size"] == [H, W]
            assert np.array_equal(mask_api.decode(rle).astype(bool), src)


def test_ytvos_round_trip(tmp_path):
    videos = make_videos()
    exps = make_expressions(videos, multi=False)
    write_ytvos(tmp_path, "train", videos, exps)
    ds = load_dataset("ytvos", tmp_path, "train")
    assert_round_trip(ds, videos, exps)
    meta = json.loads((tmp_path / "meta_expressions" / "train" / "meta_expressions.json").read_text())
    assert meta["videos"]["vidB"]["expressions"]["1"]["obj_id"] == "2"  # a string, as in Ref-YouTube-VOS
    png = tmp_path / "train" / "Annotations" / "vidA" / "00001.png"
    with Image.open(png) as im:
        assert im.mode == "P"
        labels = np.array(im)
    assert set(np.unique(labels)) <= {0, 1, 2, 3}
    assert np.array_equal(labels == 2, expected_mask(videos[0], (2,), 1))


def test_ytvos_writer_rejects_multi_object_and_overlap(tmp_path):
    videos = make_videos()
    with pytest.raises(ValueError, match="one object an expression"):
        write_ytvos(tmp_path / "a", "train", videos, make_expressions(videos, multi=True))
    overlapping = make_videos(overlap=True)
    with pytest.raises(ValueError, match="overlaps"):
        write_ytvos(tmp_path / "b", "train", overlapping, make_expressions(overlapping, multi=False))


def test_davis_round_trip_annotations(tmp_path):
    videos = make_videos(seed=3)
    exps = make_expressions(videos, multi=False)
    write_davis(tmp_path, "valid", videos, exps)
    ds = load_dataset("davis", tmp_path)  # default split: valid
    assert ds.gt_source == "annotations"
    assert_round_trip(ds, videos, exps)


def test_davis_round_trip_glus_mask_dict(tmp_path):
    videos = make_videos(seed=4, overlap=True)  # mask_dict holds overlapping objects fine
    exps = make_expressions(videos, multi=False)
    # exp ids that sort differently as strings and numbers: GLUS numbers them in string order
    exps = [Expression(e.video, {"0": "0", "1": "10", "2": "2"}[e.exp_id], e.text, e.obj_ids, e.frames) for e in exps]
    write_davis_mask_dict(tmp_path, "valid", videos, exps)
    ds = load_dataset("davis", tmp_path, "valid")
    assert ds.gt_source == "mask_dict"
    assert_round_trip(ds, videos, exps)
    mask_dict = json.loads((tmp_path / "valid" / "mask_dict.json").read_text())
    # vidA sorted exp ids "0" < "10" < "2" -> counters 0, 1, 2; "10" is object 2 of vidA
    first = next(i for i, m in enumerate(videos[0].objects[2]) if m is not None)
    assert np.array_equal(mask_api.decode(mask_dict["1"][first]).astype(bool), videos[0].objects[2][first])


def test_revos_round_trip_and_subsets(tmp_path):
    videos = make_videos(seed=5, overlap=True)
    exps = make_expressions(videos)
    write_revos(tmp_path, "valid", videos, exps)
    ds = load_dataset("revos", tmp_path)
    assert_round_trip(ds, videos, exps)
    got = {(e.video, e.exp_id): e.subset for e in ds.expressions}
    assert got == {(e.video, e.exp_id): e.subset for e in exps}
    meta = json.loads((tmp_path / "meta_expressions_valid_.json").read_text())
    assert meta["videos"]["vidA"]["expressions"]["1"]["type_id"] == 1
    assert ds.image_path("vidB", "00002") == tmp_path / "JPEGImages" / "vidB" / "00002.jpg"


def test_revos_splits_share_one_mask_dict(tmp_path):
    a, b = make_videos(seed=6), make_videos(seed=7)
    write_revos(tmp_path, "train", a, make_expressions(a))
    write_revos(tmp_path, "valid", b, make_expressions(b))
    assert_round_trip(load_dataset("revos", tmp_path, "train"), a, make_expressions(a))
    assert_round_trip(load_dataset("revos", tmp_path, "valid"), b, make_expressions(b))


def test_prediction_round_trip(tmp_path):
    rng = np.random.default_rng(8)
    m = rng.random((H, W)) < 0.4
    path = write_prediction(tmp_path, "vidA", "3", "00007", m)
    assert path == prediction_path(tmp_path, "vidA", "3", "00007") == tmp_path / "vidA" / "3" / "00007.png"
    raw = np.array(Image.open(path))
    assert raw.dtype == np.uint8 and set(np.unique(raw)) <= {0, 255}
    assert np.array_equal(read_prediction(tmp_path, "vidA", "3", "00007"), m)
    with pytest.raises(MissingPredictionError, match="00008.png"):
        read_prediction(tmp_path, "vidA", "3", "00008")


def test_prediction_any_nonzero_is_foreground(tmp_path):
    p = prediction_path(tmp_path, "v", "0", "00000")
    p.parent.mkdir(parents=True)
    Image.fromarray(np.array([[0, 1], [128, 0]], dtype=np.uint8)).save(p)
    assert read_prediction(tmp_path, "v", "0", "00000").tolist() == [[False, True], [True, False]]


# --- malformed input -----------------------------------------------------------------------------
def test_missing_root_and_meta(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset root not found"):
        load_dataset("mevis", tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="meta_expressions.json"):
        load_dataset("mevis", tmp_path, "valid_u")
    with pytest.raises(ValueError, match="unknown format"):
        load_dataset("coco", tmp_path)


def test_malformed_json(tmp_path):
    (tmp_path / "valid_u").mkdir()
    (tmp_path / "valid_u" / "meta_expressions.json").write_text('{"videos": {')
    with pytest.raises(FormatError, match="malformed JSON in .*meta_expressions.json"):
        load_dataset("mevis", tmp_path)
    (tmp_path / "valid_u" / "meta_expressions.json").write_text('{"vids": {}}')
    with pytest.raises(FormatError, match='"videos" mapping'):
        load_dataset("mevis", tmp_path)


def test_mask_dict_inconsistent_with_meta(tmp_path):
    videos = make_videos()
    write_mevis(tmp_path, "valid_u", videos, make_expressions(videos))
    md_path = tmp_path / "valid_u" / "mask_dict.json"
    md = json.loads(md_path.read_text())
    md["0"] = md["0"][:-1]
    md_path.write_text(json.dumps(md))
    with pytest.raises(FormatError, match="anno_id 0 .* has 3 entries, video has 4 frames"):
        load_dataset("mevis", tmp_path)
    del md["0"]
    md_path.write_text(json.dumps(md))
    with pytest.raises(FormatError, match="anno_id 0 .* is missing"):
        load_dataset("mevis", tmp_path)


def test_split_without_ground_truth(tmp_path):
    videos = make_videos()
    write_mevis(tmp_path, "valid", videos, make_expressions(videos))
    (tmp_path / "valid" / "mask_dict.json").unlink()
    ds = load_dataset("mevis", tmp_path, "valid")  # readable for inference
    assert not ds.has_gt and len(ds.expressions) == 8
    assert ds.frame_size("vidA") == (H, W)  # from the JPEG
    with pytest.raises(FileNotFoundError, match="no ground truth"):
        ds.gt_mask(ds.expressions[0], 0)


def test_missing_annotation_png(tmp_path):
    videos = make_videos()
    exps = make_expressions(videos, multi=False)
    write_ytvos(tmp_path, "train", videos, exps)
    (tmp_path / "train" / "Annotations" / "vidB" / "00002.png").unlink()
    ds = load_dataset("ytvos", tmp_path, "train")
    e = next(e for e in ds.expressions if e.video == "vidB")
    with pytest.raises(FileNotFoundError, match="vidB/00002.png"):
        ds.gt_mask(e, 2)
