"""benchmarks.evaluate end to end: perfect and shifted predictions, averaging order, bad input."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_api

from benchmarks.evaluate import main as evaluate_main
from evalkit.formats import Expression, VideoAnnotation, load_dataset, write_mevis, write_prediction, write_revos
from evalkit.metrics import boundary_f, region_similarity
from evalkit.scoring import evaluate
from evalkit.synth import generate

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

REPO = Path(__file__).resolve().parents[1]
SIZE = (72, 96)
SHIFT = (2, 3)  # (dy, dx) pixels; tolerance at 72x96 is ceil(0.008 * 120) = 1


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    generate(root, videos=3, frames=6, size=SIZE, seed=21, formats=("mevis", "ytvos"))
    return root


def raw_gt(root):
    """Per expression, the GT masks decoded straight from the JSON files with pycocotools."""
    meta = json.loads((root / "valid_u" / "meta_expressions.json").read_text())["videos"]
    mask_dict = json.loads((root / "valid_u" / "mask_dict.json").read_text())
    out = {}
    for vid, v in meta.items():
        for exp_id, e in v["expressions"].items():
            frames = []
            for t in range(len(v["frames"])):
                m = np.zeros(SIZE, dtype=bool)
                for a in e["anno_id"]:
                    rle = mask_dict[str(a)][t]
                    if rle is not None:
                        m |= mask_api.decode(rle).astype(bool)
                frames.append(m)
            out[(vid, exp_id)] = (v["frames"], frames)
    return out


def shift(mask, dy, dx):
    out = np.zeros_like(mask)
    h, w = mask.shape
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = mask[
        max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
    ]
    return out


def write_preds(pred_root, gt, transform=lambda m: m):
    for (vid, exp_id), (names, masks) in gt.items():
        for name, m in zip(names, masks):
            p = pred_root / vid / exp_id / f"{name}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.where(transform(m), 255, 0).astype(np.uint8)).save(p)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.evaluate", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        check=False,
        text=True,
    )


# --- perfect and shifted predictions ----------------------------------------------------------
def test_ground_truth_against_itself_scores_one(synth, tmp_path):
    gt = raw_gt(synth)
    write_preds(tmp_path / "pred", gt)
    out_csv = tmp_path / "scores.csv"
    r = run_cli(
        "--format", "mevis", "--root", synth, "--split", "valid_u", "--pred", tmp_path / "pred", "--csv", out_csv
    )
    assert r.returncode == 0, r.stderr
    overall = next(line for line in r.stdout.splitlines() if line.startswith("overall"))
    assert overall.split()[-3:] == ["1.0000", "1.0000", "1.0000"]
    rows = read_csv(out_csv)
    assert list(rows[0]) == ["video", "exp_id", "J", "F", "J&F", "n_frames", "n_missing"]
    assert len(rows) == len(gt)
    assert all(float(r["J&F"]) == 1.0 and r["n_frames"] == "6" for r in rows)


@pytest.mark.parametrize("fmt", ["ytvos", "davis"])
def test_png_layouts_against_themselves(synth, tmp_path, fmt):
    gt = raw_gt(synth)
    write_preds(tmp_path / "pred", gt)
    r = run_cli("--format", fmt, "--root", synth, "--split", "valid_u", "--pred", tmp_path / "pred", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1].split()[-1] == "1.0000"


def test_shifted_predictions_score_as_computed_independently(synth, tmp_path):
    gt = raw_gt(synth)
    dy, dx = SHIFT
    write_preds(tmp_path / "pred", gt, lambda m: shift(m, dy, dx))
    # expected: metric functions on in-memory masks, frames averaged per expression, then over expressions
    expected = {}
    for key, (_, masks) in gt.items():
        j = np.mean([region_similarity(m, shift(m, dy, dx)) for m in masks])
        f = np.mean([boundary_f(m, shift(m, dy, dx)) for m in masks])
        expected[key] = (j, f)
    exp_j = np.mean([v[0] for v in expected.values()])
    exp_f = np.mean([v[1] for v in expected.values()])
    assert exp_j < 0.95 and exp_f < 0.95  # the shift matters at this size

    out_csv = tmp_path / "s.csv"
    out_json = tmp_path / "s.json"
    rc = evaluate_main(
        [
            "--format",
            "mevis",
            "--root",
            str(synth),
            "--pred",
            str(tmp_path / "pred"),
            "--csv",
            str(out_csv),
            "--json",
            str(out_json),
            "--no-progress",
        ]
    )
    assert rc == 0
    for row in read_csv(out_csv):
        j, f = expected[(row["video"], row["exp_id"])]
        assert float(row["J"]) == pytest.approx(j, abs=1e-9)
        assert float(row["F"]) == pytest.approx(f, abs=1e-9)
    summary = json.loads(out_json.read_text())["overall"]
    assert summary["J"] == pytest.approx(exp_j, abs=1e-12)
    assert summary["F"] == pytest.approx(exp_f, abs=1e-12)
    assert summary["J&F"] == pytest.approx((exp_j + exp_f) / 2, abs=1e-12)


def test_parallel_workers_give_the_same_scores(synth, tmp_path):
    gt = raw_gt(synth)
    write_preds(tmp_path / "pred", gt, lambda m: shift(m, 1, -2))
    ds = load_dataset("mevis", synth)
    one = evaluate(ds, tmp_path / "pred")
    two = evaluate(ds, tmp_path / "pred", workers=2)
    assert one.expressions == two.expressions and one.overall == two.overall


# --- averaging order on a hand-made dataset ---------------------------------------------------
def square(top, left, n, size=(20, 20)):
    m = np.zeros(size, dtype=bool)
    m[top : top + n, left : left + n] = True
    return m


def test_mean_of_expression_means_not_frame_pooled(tmp_path):
    # expression A: 1 frame, prediction empty -> J = F = 0
    # expression B: 3 frames, prediction perfect -> J = F = 1
    # mean of expression means = 0.5; pooling the 4 frames would give 0.75
    a = VideoAnnotation("a", ["00000"], (20, 20), {1: [square(4, 4, 8)]})
    b = VideoAnnotation("b", ["00000", "00001", "00002"], (20, 20), {1: [square(2 + i, 3, 6) for i in range(3)]})
    exps = [
        Expression("a", "0", "the square", (1,), ("00000",)),
        Expression("b", "0", "the square", (1,), tuple(b.frames)),
    ]
    write_mevis(tmp_path / "data", "valid_u", [a, b], exps)
    write_prediction(tmp_path / "pred", "a", "0", "00000", np.zeros((20, 20), bool))
    for i, fr in enumerate(b.frames):
        write_prediction(tmp_path / "pred", "b", "0", fr, b.objects[1][i])
    res = evaluate(load_dataset("mevis", tmp_path / "data"), tmp_path / "pred")
    assert [(s.video, s.J, s.F, s.n_frames) for s in res.expressions] == [("a", 0.0, 0.0, 1), ("b", 1.0, 1.0, 3)]
    assert res.overall.J == 0.5 and res.overall.F == 0.5 and res.overall.JF == 0.5


def test_multi_object_expression_scores_the_union(tmp_path):
    left, right = square(2, 1, 6), square(10, 12, 6)
    v = VideoAnnotation("v", ["00000"], (20, 20), {1: [left], 2: [right]})
    exps = [Expression("v", "0", "both squares", (1, 2), ("00000",))]
    write_mevis(tmp_path / "data", "valid_u", [v], exps)
    write_prediction(tmp_path / "pred", "v", "0", "00000", left)  # only half of the target
    res = evaluate(load_dataset("mevis", tmp_path / "data"), tmp_path / "pred")
    assert res.overall.J == pytest.approx(36 / 72)


def test_revos_overall_is_mean_of_subsets(tmp_path):
    # referring: 1 perfect expression (1.0); reasoning: 3 expressions, one empty prediction (2/3).
    # overall = (1 + 2/3) / 2 = 5/6, not the pooled 3/4.
    masks = {k: [square(2 + k, 2 + k, 5)] for k in (1, 2, 3, 4)}
    v = VideoAnnotation("v", ["00000"], (20, 20), masks)
    subsets = {1: "referring", 2: "reasoning", 3: "reasoning", 4: "reasoning"}
    exps = [Expression("v", str(k), f"object {k}", (k,), ("00000",), (), subsets[k]) for k in masks]
    write_revos(tmp_path / "revos", "valid", [v], exps)
    for k in masks:
        write_prediction(tmp_path / "pred", "v", str(k), "00000", masks[k][0] if k != 4 else np.zeros((20, 20), bool))
    out_csv = tmp_path / "r.csv"
    r = run_cli("--format", "revos", "--root", tmp_path / "revos", "--pred", tmp_path / "pred", "--csv", out_csv)
    assert r.returncode == 0, r.stderr
    lines = {line.split()[0]: line.split()[1:] for line in r.stdout.splitlines()[1:] if line.strip()}
    assert lines["referring"] == ["1", "1.0000", "1.0000", "1.0000"]
    assert lines["reasoning"] == ["3", "0.6667", "0.6667", "0.6667"]
    assert lines["overall"] == ["4", "0.8333", "0.8333", "0.8333"]
    assert [row["subset"] for row in read_csv(out_csv)] == [subsets[k] for k in (1, 2, 3, 4)]


# --- bad input ----------------------------------------------------------------------------------
def assert_user_error(r, *fragments):
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    err = r.stderr.strip().splitlines()[-1]
    assert err.startswith("error: ")
    for frag in fragments:
        assert frag in err, err


def test_bad_paths(synth, tmp_path):
    (tmp_path / "pred").mkdir()
    assert_user_error(
        run_cli("--format", "mevis", "--root", tmp_path / "nope", "--pred", tmp_path / "pred"), "dataset root not found"
    )
    assert_user_error(
        run_cli("--format", "mevis", "--root", synth, "--pred", tmp_path / "nope"), "prediction folder not found"
    )
    assert_user_error(
        run_cli("--format", "mevis", "--root", synth, "--split", "test", "--pred", tmp_path / "pred"),
        "meta_expressions.json",
    )


def test_malformed_json(synth, tmp_path):
    bad = tmp_path / "bad"
    (bad / "valid_u").mkdir(parents=True)
    (bad / "valid_u" / "meta_expressions.json").write_text('{"videos": [1, 2')
    (tmp_path / "pred").mkdir()
    assert_user_error(
        run_cli("--format", "mevis", "--root", bad, "--pred", tmp_path / "pred"),
        "malformed JSON",
        "meta_expressions.json",
    )


def test_missing_frame_is_an_error_unless_asked(synth, tmp_path):
    gt = raw_gt(synth)
    write_preds(tmp_path / "pred", gt)
    (vid, exp_id), (names, _) = next(iter(gt.items()))
    (tmp_path / "pred" / vid / exp_id / f"{names[2]}.png").unlink()
    assert_user_error(
        run_cli("--format", "mevis", "--root", synth, "--pred", tmp_path / "pred"),
        "missing prediction",
        f"{names[2]}.png",
    )
    out_csv = tmp_path / "m.csv"
    r = run_cli(
        "--format", "mevis", "--root", synth, "--pred", tmp_path / "pred", "--missing", "empty", "--csv", out_csv
    )
    assert r.returncode == 0, r.stderr
    assert f"1 of {6 * len(gt)} prediction frames were missing" in r.stderr
    row = next(row for row in read_csv(out_csv) if (row["video"], row["exp_id"]) == (vid, exp_id))
    assert row["n_missing"] == "1"
    # the missing frame is scored as an empty mask against a non-empty GT: J = F = 0 there
    assert float(row["J"]) == pytest.approx(5 / 6)


def test_wrongly_sized_prediction_is_an_error(synth, tmp_path):
    gt = raw_gt(synth)
    write_preds(tmp_path / "pred", gt)
    (vid, exp_id), (names, _) = next(iter(gt.items()))
    Image.fromarray(np.zeros((SIZE[0] + 1, SIZE[1]), np.uint8)).save(
        tmp_path / "pred" / vid / exp_id / f"{names[0]}.png"
    )
    assert_user_error(
        run_cli("--format", "mevis", "--root", synth, "--pred", tmp_path / "pred"), "73x96", "ground truth is 72x96"
    )


def test_split_without_ground_truth(synth, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synth / "valid_u", data / "valid", ignore=shutil.ignore_patterns("JPEGImages", "Annotations"))
    (data / "valid" / "mask_dict.json").unlink()
    (tmp_path / "pred").mkdir()
    assert_user_error(
        run_cli("--format", "mevis", "--root", data, "--split", "valid", "--pred", tmp_path / "pred"), "no ground truth"
    )


def test_unknown_format_is_rejected_by_argparse(tmp_path):
    r = run_cli("--format", "coco", "--root", tmp_path, "--pred", tmp_path)
    assert r.returncode == 2 and "invalid choice" in r.stderr
