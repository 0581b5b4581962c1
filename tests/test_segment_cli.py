"""The glus-segment command line: outputs on a video file and a frame folder, both modes,
Ctrl-C, every kind of bad input (exit code + one-line message, no traceback), and the drawing."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime import segment
from runtime.segment import main
from runtime.video import VideoSourceError, open_source
from runtime.visualize import EvenSampler, colours, contact_sheet, overlay, pick_evenly

from .conftest import moving_square_video

N, H, W = 8, 64, 80
N_FOLDER = 6  # the folder runs are the costly ones (each checked against a second engine run)
EXPRS = ["the red square", "the dark background."]
REPO = Path(__file__).parent.parent


# ---- helpers (OpenCV reads back what the CLI wrote with PyAV: an independent decoder) ------------
def write_mp4(path: Path, frames, fps: int = 10) -> Path:
    h, w = frames[0].shape[:2]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for f in frames:
        vw.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    vw.release()
    return path


def faststart_copy(src: Path, dst: Path) -> Path:
    """The same mp4 with its index (moov) first, so a cut file keeps the frames before the cut."""
    import av

    with av.open(str(src)) as inp, av.open(str(dst), "w", options={"movflags": "faststart"}) as out:
        s = inp.streams.video[0]
        o = out.add_stream_from_template(s)
        for p in inp.demux(s):
            if p.dts is not None:
                p.stream = o
                out.mux(p)
    return dst


def read_video(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()
    return frames


def read_mask(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None, path
    assert img.ndim == 2 and set(np.unique(img)) <= {0, 255}
    return img > 0


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def assert_error(err: str, pattern: str) -> None:
    """One error line, `glus-segment: error: ...`, matching pattern."""
    lines = [ln for ln in err.splitlines() if ln.startswith("glus-segment: error:")]
    assert len(lines) == 1, err
    assert re.search(pattern, lines[0]), lines[0]


def check_outputs(out: Path, video: str, frame_names: list[str], exprs=EXPRS) -> list[list[np.ndarray]]:
    """Masks of every expression and frame, expressions.json, overlay video, contact sheet."""
    vdir = out / video
    ids = [str(i) for i in range(len(exprs))]
    assert json.loads((vdir / "expressions.json").read_text()) == dict(zip(ids, exprs))
    masks = []
    for exp_id in ids:
        assert sorted(p.stem for p in (vdir / exp_id).iterdir()) == sorted(frame_names)
        masks.append([read_mask(vdir / exp_id / f"{n}.png") for n in frame_names])
        assert all(m.shape == (H, W) for m in masks[-1])
    frames = read_video(out / f"{video}_overlay.mp4")
    assert len(frames) == len(frame_names)
    assert all(f.shape == (H, W, 3) for f in frames)
    sheet = cv2.imread(str(out / f"{video}_contact.png"))
    assert sheet is not None and sheet.ndim == 3
    assert 200 <= sheet.shape[1] <= 2000 and 100 <= sheet.shape[0] <= 2000
    return masks


# ---- inputs ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clip():
    return moving_square_video(N, H, W)


@pytest.fixture(scope="module")
def mp4(clip, tmp_path_factory):
    return write_mp4(tmp_path_factory.mktemp("video") / "square.mp4", clip)


@pytest.fixture(scope="module")
def folder_clip(clip):
    return clip[:N_FOLDER]


@pytest.fixture(scope="module")
def folder(folder_clip, tmp_path_factory):
    """PNG frames named 0, 5, 10, ...: name order is not plain string order ("10" < "5")."""
    d = tmp_path_factory.mktemp("frames") / "square_frames"
    d.mkdir()
    for i, f in enumerate(folder_clip):
        cv2.imwrite(str(d / f"{5 * i}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    (d / "notes.txt").write_text("not a frame")
    return d


FOLDER_NAMES = [str(5 * i) for i in range(N_FOLDER)]


# ---- the module entry, a video file, offline ---------------------------------------------------
def test_module_entry_on_mp4_offline(tiny_engine_dir, mp4, tmp_path):
    """`python -m runtime.segment` end to end; -X importtime proves it never imports torch."""
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-X",
        "importtime",
        "-m",
        "runtime.segment",
        str(mp4),
        "--expression",
        EXPRS[0],
        "--expression",
        EXPRS[1],
        "--engine",
        str(tiny_engine_dir),
        "--out",
        str(out),
    ]
    p = subprocess.run(cmd, capture_output=True, check=False, text=True, cwd=REPO, timeout=120)
    err = "\n".join(ln for ln in p.stderr.splitlines() if not ln.startswith("import time:"))
    assert p.returncode == 0, p.stdout + err
    assert "running on the CPU (ONNX Runtime)" in p.stdout
    assert "Traceback" not in err
    imported = {ln.split("|")[-1].strip() for ln in p.stderr.splitlines() if ln.startswith("import time:")}
    assert not {m for m in imported if m.split(".")[0] in ("torch", "transformers", "sam2")}
    check_outputs(out, "square", [f"{i:05d}" for i in range(N)])


# ---- a frame folder, offline with --kf auto, and the stream ------------------------------------
def test_folder_offline_kf_auto_matches_engine(tiny_engine, tiny_engine_dir, folder, folder_clip, tmp_path, capsys):
    """One expression (two are mapped to exp_ids in the stream test): kf=auto costs two passes."""
    code, out, err = run(
        capsys, folder, "-e", EXPRS[1], "--engine", tiny_engine_dir, "--out", tmp_path, "--kf", "auto", "--threads", 1
    )
    assert code == 0, err
    assert "running on the CPU (ONNX Runtime)" in out
    masks = check_outputs(tmp_path, "square_frames", FOLDER_NAMES, exprs=EXPRS[1:])
    # the frames went in natural name order: the masks are the engine's own on the clip
    want = tiny_engine.segment_video(folder_clip, EXPRS[1:], key_frames="auto")
    for got, res in zip(masks, want):
        for g, w in zip(got, res.masks):
            np.testing.assert_array_equal(g, w)


def test_llm_every_auto_with_sticky_seg_matches_engine(
    tiny_engine, tiny_engine_dir, folder, folder_clip, tmp_path, capsys
):
    code, _, err = run(
        capsys,
        folder,
        "-e",
        EXPRS[0],
        "--engine",
        tiny_engine_dir,
        "--out",
        tmp_path,
        "--llm-every",
        "auto",
        "--sticky-seg",
    )
    assert code == 0, err
    masks = check_outputs(tmp_path, "square_frames", FOLDER_NAMES, exprs=EXPRS[:1])
    want = tiny_engine.segment_video(folder_clip, EXPRS[:1], llm_every="auto", sticky_seg=True)
    for got, res in zip(masks, want):
        for g, w in zip(got, res.masks):
            np.testing.assert_array_equal(g, w)


def test_batch_llm_without_the_batched_graph_is_an_engine_error(tiny_engine_dir, folder, tmp_path, capsys):
    code, _, err = run(capsys, folder, "-e", EXPRS[0], "--engine", tiny_engine_dir, "--out", tmp_path, "--batch-llm")
    assert code == 3 and "--batched-llm" in err and "Traceback" not in err
    assert not (tmp_path / "square_frames").exists()


def test_stream_mode_matches_stream_api(tiny_engine, tiny_engine_dir, folder, folder_clip, tmp_path, capsys):
    code, out, err = run(
        capsys,
        folder,
        "-e",
        EXPRS[0],
        "-e",
        EXPRS[1],
        "--engine",
        tiny_engine_dir,
        "--out",
        tmp_path,
        "--stream",
        "--name",
        "live",
    )
    assert code == 0, err
    assert "stream" in out
    masks = check_outputs(tmp_path, "live", FOLDER_NAMES)
    stream = tiny_engine.stream(EXPRS)
    for i, frame in enumerate(folder_clip):
        pushed = stream.push(frame)
        for j, e in enumerate(EXPRS):
            np.testing.assert_array_equal(masks[j][i], pushed[e])


def test_ctrl_c_keeps_what_was_written(tiny_engine_dir, folder, tmp_path, capsys, monkeypatch):
    from runtime.stream import Stream

    push = Stream.push
    calls = []

    def interrupted_push(self, frame):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return push(self, frame)

    monkeypatch.setattr(Stream, "push", interrupted_push)
    code, _out, err = run(
        capsys, folder, "-e", EXPRS[0], "-e", EXPRS[1], "--engine", tiny_engine_dir, "--out", tmp_path, "--stream"
    )
    assert code == 130
    assert "interrupted" in err
    vdir = tmp_path / "square_frames"
    for exp_id in ("0", "1"):
        assert sorted((p.stem for p in (vdir / exp_id).iterdir()), key=int) == FOLDER_NAMES[:3]
    frames = read_video(tmp_path / "square_frames_overlay.mp4")  # finalised: it plays
    assert len(frames) == 3 and frames[0].shape == (H, W, 3)
    assert (tmp_path / "square_frames_contact.png").is_file()


def test_http_stream_url_with_max_frames(tiny_engine_dir, mp4, tmp_path, capsys):
    """A URL is always streamed; --max-frames stops it (a camera's usual way to end)."""
    import functools
    import http.server
    import threading

    faststart_copy(mp4, tmp_path / "cam.mp4")  # index first: readable without seeking
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as httpd:
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{httpd.server_address[1]}/cam.mp4"
        try:
            code, out, err = run(
                capsys,
                url,
                "-e",
                EXPRS[0],
                "-e",
                EXPRS[1],
                "--engine",
                tiny_engine_dir,
                "--out",
                tmp_path / "o",
                "--max-frames",
                3,
                "--timeout",
                5,
            )
        finally:
            httpd.shutdown()
    assert code == 0, err
    assert "(stream," in out
    check_outputs(tmp_path / "o", "cam", ["00000", "00001", "00002"])


def test_ctrl_c_before_any_frame_is_written(tiny_engine_dir, mp4, tmp_path, capsys, monkeypatch):
    from runtime.engine import GlusEngine

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(GlusEngine, "segment_video", interrupted)
    code, _, err = run(capsys, mp4, "-e", "a cat", "--engine", tiny_engine_dir, "--out", tmp_path)
    assert code == 130
    assert "interrupted: 0 frame(s) written" in err
    assert json.loads((tmp_path / "square" / "expressions.json").read_text()) == {"0": "a cat"}
    assert not (tmp_path / "square_overlay.mp4").exists()


# ---- bad sources -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, content, pattern",
    [
        ("notes.txt", b"hello\n" * 100, r"notes\.txt is not a video"),  # FFmpeg would render text as frames
        ("data.bin", bytes(range(256)) * 40, r"data\.bin is not a video"),
        ("clip.mp4", bytes(range(256)) * 40, r"clip\.mp4: corrupt or truncated video"),
    ],
    ids=["text", "binary", "binary-mp4"],
)
def test_file_that_is_not_a_video(tiny_engine_dir, tmp_path, capsys, name, content, pattern):
    bad = tmp_path / name
    bad.write_bytes(content)
    code, _, err = run(capsys, bad, "-e", "a cat", "--engine", tiny_engine_dir, "--out", tmp_path / "o")
    assert code == 4
    assert_error(err, pattern)


def test_truncated_mp4_without_index_is_a_source_error(tiny_engine_dir, mp4, tmp_path, capsys):
    """OpenCV writes the mp4 index last: a cut file has no decodable frame at all."""
    cut = tmp_path / "cut.mp4"
    data = mp4.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    code, _, err = run(capsys, cut, "-e", "a cat", "--engine", tiny_engine_dir, "--out", tmp_path / "o")
    assert code == 4
    assert_error(err, r"cut\.mp4: corrupt or truncated")


def test_truncated_mp4_keeps_the_frames_before_the_cut(tiny_engine_dir, mp4, tmp_path, capsys):
    fast = faststart_copy(mp4, tmp_path / "fast.mp4")
    data = fast.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    n_ok = len(read_video(cut))  # what an independent decoder gets out of it
    assert 0 < n_ok < N
    code, _out, err = run(
        capsys, cut, "-e", EXPRS[0], "-e", EXPRS[1], "--engine", tiny_engine_dir, "--out", tmp_path / "o"
    )
    assert code == 6, err
    missing = N - n_ok
    assert re.search(rf"{missing} frame\(s\) of cut could not be decoded.*{n_ok:05d}-{N - 1:05d}", err), err
    check_outputs(tmp_path / "o", "cut", [f"{i:05d}" for i in range(n_ok)])


def test_camera_that_does_not_exist(tiny_engine_dir, tmp_path, capsys):
    index = next(i for i in range(9, 64) if not Path(f"/dev/video{i}").exists())
    t0 = time.monotonic()
    code, _, err = run(
        capsys, index, "-e", "a cat", "--engine", tiny_engine_dir, "--out", tmp_path / "o", "--timeout", 2
    )
    assert code == 4
    assert_error(err, rf"camera {index} is not available")
    assert time.monotonic() - t0 < 10


def test_url_that_does_not_answer_times_out(tiny_engine_dir, tmp_path, capsys):
    with socket.socket() as server:  # accepts connections (backlog) but never answers
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        t0 = time.monotonic()
        code, _, err = run(
            capsys,
            f"http://127.0.0.1:{port}/live.mp4",
            "-e",
            "a cat",
            "--engine",
            tiny_engine_dir,
            "--out",
            tmp_path / "o",
            "--timeout",
            1,
        )
        assert time.monotonic() - t0 < 8
    assert code == 4
    assert_error(err, r"no answer within 1 s")


def test_url_refused(tiny_engine_dir, tmp_path, capsys):
    with socket.socket() as s:  # a port that was free a moment ago: nobody listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, _, err = run(
        capsys,
        f"rtsp://127.0.0.1:{port}/cam",
        "-e",
        "a cat",
        "--engine",
        tiny_engine_dir,
        "--out",
        tmp_path / "o",
        "--timeout",
        2,
    )
    assert code == 4
    assert_error(err, rf"cannot open rtsp://127\.0\.0\.1:{port}/cam")


def test_missing_source(tiny_engine_dir, tmp_path, capsys):
    code, _, err = run(
        capsys, tmp_path / "nope.mp4", "-e", "a cat", "--engine", tiny_engine_dir, "--out", tmp_path / "o"
    )
    assert code == 4
    assert_error(err, r"not found")


# ---- bad output, engine, expressions, arguments -------------------------------------------------
def test_unwritable_output_dir(tiny_engine_dir, mp4, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code, _, err = run(capsys, mp4, "-e", "a cat", "--engine", tiny_engine_dir, "--out", blocker / "out")
    assert code == 5
    assert_error(err, r"cannot write to the output directory .*a_file/out")


def test_missing_engine_dir(mp4, tmp_path, capsys):
    missing = tmp_path / "no_engine"
    code, _, err = run(capsys, mp4, "-e", "a cat", "--engine", missing, "--out", tmp_path / "o")
    assert code == 3
    assert_error(err, rf"engine directory not found: {re.escape(str(missing))}")
    assert not (tmp_path / "o").exists()


def test_missing_default_engine_says_how_to_build_it(mp4, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GLUS_CACHE", str(tmp_path / "cache"))
    code, _, err = run(capsys, mp4, "-e", "a cat", "--out", tmp_path / "o", "--precision", "int8")
    assert code == 3
    want = tmp_path / "cache" / "engine-default-int8"
    assert_error(err, re.escape(f"python -m export.build --precision int8 --out {want}"))


def test_engine_dir_that_is_not_an_engine(mp4, tmp_path, capsys):
    (tmp_path / "engine").mkdir()
    code, _, err = run(capsys, mp4, "-e", "a cat", "--engine", tmp_path / "engine", "--out", tmp_path / "o")
    assert code == 3
    assert_error(err, r"manifest\.json")


@pytest.mark.parametrize(
    "exprs, pattern",
    [
        (["."], r"bad expression '\.'"),
        (["   "], r"bad expression"),
        (["find the [SEG] token"], r"bad expression"),
        (["a cat", "a cat"], r"more than once: 'a cat'"),
    ],
)
def test_bad_expression(tiny_engine_dir, mp4, tmp_path, capsys, exprs, pattern):
    args = [a for e in exprs for a in ("-e", e)]
    code, _, err = run(capsys, mp4, *args, "--engine", tiny_engine_dir, "--out", tmp_path / "o")
    assert code == 2
    assert_error(err, pattern)


def test_expression_too_long_for_the_engine(tiny_engine_dir, mp4, tmp_path, capsys):
    code, _, err = run(
        capsys, mp4, "-e", "the red square " * 2000, "--engine", tiny_engine_dir, "--out", tmp_path / "o"
    )
    assert code == 2
    assert_error(err, r"too long")


@pytest.mark.parametrize(
    "argv, pattern",
    [
        (["--kf", "auto", "--stream"], r"--kf auto needs the whole video"),
        (["--threads", "0"], r"--threads must be >= 1"),
        (["--name", "a/b"], r"--name must be a plain file name"),
        (["--llm-every", "0"], r"--llm-every must be >= 1"),
        (["--llm-every", "often"], r"--llm-every must be a positive integer or 'auto'"),
    ],
)
def test_bad_arguments(tiny_engine_dir, mp4, tmp_path, capsys, argv, pattern):
    code, _, err = run(capsys, mp4, "-e", "a cat", "--engine", tiny_engine_dir, "--out", tmp_path / "o", *argv)
    assert code == 2
    assert_error(err, pattern)


def test_usage_error_from_argparse(mp4, capsys):
    code, _, err = run(capsys, mp4, "-e", "a cat")  # no --out
    assert code == 2
    assert "--out" in err
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "Exit codes:" in out


def test_device_not_available(tiny_engine_dir, mp4, tmp_path, capsys):
    code, _, err = run(
        capsys, mp4, "-e", "a cat", "--engine", tiny_engine_dir, "--out", tmp_path / "o", "--device", "tpu"
    )
    assert code == 3
    assert_error(err, r"unknown device 'tpu'")


# ---- frame sources -----------------------------------------------------------------------------
def test_folder_frames_in_natural_order_and_unreadable_image(folder, folder_clip, clip, tmp_path):
    with open_source(folder) as src:
        items = list(src)
    assert [n for n, _ in items] == FOLDER_NAMES
    for (_, f), want in zip(items, folder_clip, strict=True):
        np.testing.assert_array_equal(f, want)  # PNG: lossless, RGB order kept
    d = tmp_path / "f"
    d.mkdir()
    cv2.imwrite(str(d / "1.png"), clip[0])
    (d / "2.jpg").write_bytes(b"not a jpeg")
    cv2.imwrite(str(d / "3.png"), clip[1])
    with open_source(d) as src:
        assert [n for n, _ in src] == ["1", "3"]
        assert src.failed == ["2"]
    cv2.imwrite(str(d / "3.jpg"), clip[1])
    with pytest.raises(VideoSourceError, match="two frames named '3'"):
        open_source(d)


@pytest.mark.parametrize("ext, fourcc", [("avi", "MJPG"), ("mkv", "mp4v"), ("webm", "VP80"), ("mov", "mp4v")])
def test_other_containers(clip, tmp_path, ext, fourcc):
    path = tmp_path / f"clip.{ext}"
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10, (W, H))
    if not vw.isOpened():
        pytest.skip(f"this OpenCV cannot write {fourcc} in .{ext}")
    for f in clip:
        vw.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    vw.release()
    with open_source(path) as src:
        items = list(src)
        assert src.failed == [] and src.name == "clip" and src.fps == pytest.approx(10)
    assert [n for n, _ in items] == [f"{i:05d}" for i in range(N)]
    assert all(f.shape == (H, W, 3) and f.dtype == np.uint8 for _, f in items)
    # the red square is where it was drawn (lossy codecs: compare coarsely)
    assert items[3][1][20, 4 + 5 * 3 + 10, 0] > 150


def test_corrupt_frame_in_the_middle_is_named(mp4, tmp_path):
    data = bytearray(mp4.read_bytes())
    # overwrite the middle of the media data; the index (at the end) stays intact
    start = data.find(b"mdat") + 4
    mid = start + (len(data) - start) // 2
    data[mid : mid + 2000] = bytes(2000)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(bytes(data))
    with open_source(bad) as src:
        names = [n for n, _ in src]
        failed = src.failed
    n_ok = len(names)
    assert n_ok + len(failed) == N and failed
    assert sorted(names + failed) == [f"{i:05d}" for i in range(N)]


# ---- drawing ------------------------------------------------------------------------------------
def test_overlay_blends_outlines_and_leaves_the_rest():
    frame = np.full((120, 160, 3), 100, np.uint8)
    mask = np.zeros((120, 160), bool)
    mask[60:100, 40:120] = True
    before = frame.copy()
    out = overlay(frame, [mask], [(250, 0, 0)], alpha=0.5)
    np.testing.assert_array_equal(frame, before)  # not drawn in place
    inside = out[75:85, 60:100]
    assert (inside == np.array([175, 50, 50])).all()  # 100 * 0.5 + (250, 0, 0) * 0.5
    assert (out[61:99, 41][:, 0] == 250).all() or (out[60:100, 40][:, 0] == 250).all()  # outline
    assert (out[:40] == 100).all() and (out[110:] == 100).all()


def test_overlay_legend_and_distinct_colours():
    frame = np.zeros((240, 320, 3), np.uint8)
    out = overlay(frame, [np.zeros((240, 320), bool)] * 2, colours(2), ["0: a", "1: a very long label " * 5])
    assert out[:40, :].any() and not out[120:, :].any()  # legend box at the top only
    cs = colours(15)
    assert len(set(cs)) == 15
    with pytest.raises(ValueError):
        overlay(frame, [np.zeros((10, 10), bool)], cs[:1])


def test_contact_sheet_and_sampling():
    frames = [np.full((60, 80, 3), 20 * i, np.uint8) for i in range(6)]
    sheet = contact_sheet(frames, [str(i) for i in range(6)], columns=3, tile_width=100, gap=4)
    assert sheet.shape == (2 * 75 + 3 * 4, 3 * 100 + 4 * 4, 3)
    with_legend = contact_sheet(frames, labels=["0: x"], colours_=colours(1), tile_width=100)
    assert with_legend.shape[0] > sheet.shape[0]
    assert pick_evenly(8, 6) == [0, 1, 3, 4, 6, 7]
    assert pick_evenly(3, 6) == [0, 1, 2]
    s = EvenSampler(6)
    for i in range(100):
        s.offer(lambda i=i: i)
    got = s.picked()
    assert len(got) == 6 and got[0] == 0 and got == sorted(got)
    steps = np.diff(got)
    assert steps.max() <= 2 * steps.min()  # evenly spread over what was seen
    assert 100 - got[-1] <= 2 * steps.max()
    exact = EvenSampler(6, total=20)
    for i in range(20):
        exact.offer(lambda i=i: i)
    assert exact.picked() == [0, 4, 8, 11, 15, 19]


def test_name_ranges():
    assert segment.name_ranges(["00004", "00005", "00006", "00009"]) == "00004-00006, 00009"
    assert segment.name_ranges(["a", "b"]) == "a, b"
