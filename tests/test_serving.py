"""The real tritonserver (the nvidia-pytriton wheel's) serving the tiny engine on loopback ports:
its masks against in-process runtime streams, and the faults of issue 30 (bad input, no START,
too many cameras, a client that vanishes, a server killed and restarted). Skipped, with the
reason, only where the bundled binary cannot run."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from serving.server import cannot_run

from .conftest import moving_square_video

_why = cannot_run()
pytestmark = pytest.mark.skipif(_why is not None, reason=f"tritonserver cannot run here: {_why}")

EXPRS = [["the red square", "the background"], ["the moving thing"]]
MAX_CAMERAS = 3
IDLE_S = 3.0


@pytest.fixture(scope="module")
def repo(tiny_engine_dir, tmp_path_factory):
    from serving.repository import write_repository

    out = tmp_path_factory.mktemp("triton-repo")
    write_repository(tiny_engine_dir, out, max_cameras=MAX_CAMERAS, idle_timeout_s=IDLE_S)
    return out


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    from serving.server import Server

    with Server(repo, log=tmp_path_factory.mktemp("triton-log") / "server.log") as s:
        yield s


def in_process(engine, frames, exprs):
    s = engine.stream(exprs)
    out = []
    for f in frames:
        m = s.push(f)
        out.append(np.stack([m[e] for e in exprs]))
    return out


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout_s:g} s: {what}")


def open_cameras(server) -> float:
    return server.metrics().get("glus_open_cameras", float("nan"))


def test_two_cameras_x_20_frames_equal_in_process_streams(server, tiny_engine):
    from serving.client import CameraClient

    videos = [moving_square_video(20, seed=s) for s in (21, 22)]
    got: list[list] = [[], []]
    errors = []

    def camera(i):
        try:
            with CameraClient(server.grpc_url, EXPRS[i]) as cam:
                for f in videos[i]:
                    got[i].append(cam.push(f))
        except Exception as e:  # noqa: BLE001 (reported below, in the test's thread)
            errors.append(e)

    threads = [threading.Thread(target=camera, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    for i in range(2):
        want = in_process(tiny_engine, videos[i], EXPRS[i])
        assert [a.frame_index for a in got[i]] == list(range(20))
        for t, (a, w) in enumerate(zip(got[i], want)):
            assert a.masks.dtype == bool and a.masks.shape == w.shape
            assert np.array_equal(a.masks, w), f"camera {i} frame {t}"
        assert any(w.any() for w in want)  # the comparison is not between empty masks
    wait_for(lambda: open_cameras(server) == 0, 10, "both cameras closed by their END")


def test_stacked_image_calls_serve_the_in_process_masks(tiny_engine_dir, tiny_engine, tmp_path):
    """--batch-images on the fp32 engine: the cameras Triton gathers (a queue delay) share one
    image-encoder call, and every camera's masks stay its in-process stream's, bit for bit."""
    from serving.client import CameraClient
    from serving.repository import write_repository
    from serving.server import Server

    repo = write_repository(
        tiny_engine_dir, tmp_path / "repo", max_cameras=3, idle_timeout_s=30, batch_images=True, queue_delay_us=50_000
    )
    videos = [moving_square_video(6, seed=s) for s in (31, 32, 33)]
    exprs = [EXPRS[0], EXPRS[1], EXPRS[0]]
    got: list[list] = [[], [], []]
    errors = []
    with Server(repo.parent, log=tmp_path / "server.log") as server:
        barrier = threading.Barrier(3)

        def camera(i):
            try:
                with CameraClient(server.grpc_url, exprs[i]) as cam:
                    for f in videos[i]:
                        barrier.wait(60)  # the three cameras send each frame together
                        got[i].append(cam.push(f))
            except Exception as e:  # noqa: BLE001 (reported below, in the test's thread)
                errors.append(e)
                barrier.abort()

        threads = [threading.Thread(target=camera, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        stacked = server.metrics().get("glus_stacked_image_calls_total", 0)
    assert not errors, errors
    for i in range(3):
        want = in_process(tiny_engine, videos[i], exprs[i])
        assert all(np.array_equal(a.masks, w) for a, w in zip(got[i], want)), f"camera {i}"
    assert stacked >= 3  # most of the 6 rounds were one stacked call
    assert "in one image-encoder call" in (tmp_path / "server.log").read_text()


def test_the_client_command_writes_the_in_process_masks(server, tiny_engine, tmp_path):
    import cv2

    from runtime.video import read_frames
    from serving.client import main

    sources = []
    for seed in (23, 24):
        d = tmp_path / f"clip{seed}"
        d.mkdir()
        for t, f in enumerate(moving_square_video(6, seed=seed)):
            cv2.imwrite(str(d / f"{t:05d}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
        sources.append(d)
    out = tmp_path / "out"
    code = main(["--url", server.grpc_url, *map(str, sources), "-e", EXPRS[0][0], "-e", EXPRS[0][1], "-o", str(out)])
    assert code == 0
    for d in sources:
        names, frames = read_frames(d)
        want = in_process(tiny_engine, frames, EXPRS[0])
        for t, name in enumerate(names):
            for j in range(2):
                png = cv2.imread(str(out / d.name / str(j) / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
                assert np.array_equal(png > 0, want[t][j]), (d.name, name, j)
        assert (out / f"{d.name}_overlay.mp4").stat().st_size > 0


def test_bad_input_fails_that_request_and_the_camera_goes_on(server, tiny_engine):
    import tritonclient.grpc as g
    from tritonclient.utils import InferenceServerException

    from serving.client import CameraClient, Refused

    v = moving_square_video(6, seed=25)
    want = in_process(tiny_engine, v, EXPRS[1])  # never sees the bad requests
    with CameraClient(server.grpc_url, EXPRS[1]) as cam:
        for t, f in enumerate(v):
            if t == 2:
                with pytest.raises(Refused) as e:
                    cam.push(np.zeros((48, 64, 4), np.uint8))  # four channels: Triton's shape check
                assert not e.value.camera_lost
                with pytest.raises(Refused, match="frame size changed"):
                    cam.push(np.zeros((40, 64, 3), np.uint8))
            if t == 3:  # EXPRESSIONS that are not a JSON list of strings
                client = g.InferenceServerClient(server.grpc_url)
                frame = g.InferInput("FRAME", [1, *f.shape], "UINT8")
                frame.set_data_from_numpy(f[None])
                bad = g.InferInput("EXPRESSIONS", [1, 3], "UINT8")
                bad.set_data_from_numpy(np.frombuffer(b"\xff{[", np.uint8)[None].copy())
                with pytest.raises(InferenceServerException, match="EXPRESSIONS"):
                    client.infer("glus", [frame, bad], sequence_id=cam.sequence_id)
                client.close()
            a = cam.push(f)
            assert a.frame_index == t
            assert np.array_equal(a.masks, want[t]), f"frame {t}"


def test_a_request_without_start_gets_a_clear_error(server):
    import tritonclient.grpc as g
    from tritonclient.utils import InferenceServerException

    f = moving_square_video(1, seed=26)[0]
    client = g.InferenceServerClient(server.grpc_url)
    frame = g.InferInput("FRAME", [1, *f.shape], "UINT8")
    frame.set_data_from_numpy(f[None])
    # Triton's sequence batcher answers before the model sees it
    with pytest.raises(InferenceServerException, match="sequence 424242 .* must specify the START flag"):
        client.infer("glus", [frame], sequence_id=424242)
    with pytest.raises(InferenceServerException, match="correlation ID"):
        client.infer("glus", [frame])  # no sequence ID at all
    client.close()


def test_more_cameras_than_configured_are_refused_cleanly(server):
    from serving.client import CameraClient, Refused

    wait_for(lambda: open_cameras(server) == 0, 2 * IDLE_S + 5, "no camera left open by earlier tests")
    f = moving_square_video(1, seed=27)[0]
    cams = [CameraClient(server.grpc_url, EXPRS[1]) for _ in range(MAX_CAMERAS + 2)]
    try:
        for cam in cams[:MAX_CAMERAS]:
            cam.push(f)
        rss = server.rss_bytes()
        for cam in cams[MAX_CAMERAS:]:
            with pytest.raises(Refused, match="max_cameras") as e:
                cam.push(f)
            assert e.value.camera_lost
        assert open_cameras(server) == MAX_CAMERAS
        assert server.rss_bytes() < rss + 64 * 2**20  # a refusal allocates no stream
        assert cams[0].push(f).frame_index == 1  # the open cameras are served as before
        cams[0].close()
        assert cams[MAX_CAMERAS].push(f).frame_index == 0  # a freed place is given
    finally:
        for cam in cams:
            cam.close()


def test_a_vanished_client_is_freed_after_the_idle_timeout(server):
    from serving.client import CameraClient

    wait_for(lambda: open_cameras(server) == 0, 2 * IDLE_S + 5, "no camera left open by earlier tests")
    v = moving_square_video(8, seed=28)
    with CameraClient(server.grpc_url, EXPRS[0]) as warm:  # the graphs' first-run memory, kept by any server
        for f in v:
            warm.push(f)
    before = server.rss_bytes()
    cam = CameraClient(server.grpc_url, EXPRS[0])
    for f in v:
        cam.push(f)
    cam.abandon()  # gone without END, like a client that crashed
    assert open_cameras(server) == 1
    wait_for(lambda: open_cameras(server) == 0, IDLE_S + 10, "the idle camera freed")
    assert server.metrics()["glus_cameras_idled_out_total"] >= 1
    assert server.rss_bytes() < before + 32 * 2**20


def test_a_killed_server_is_reported_and_the_client_starts_a_new_sequence(repo, tiny_engine, tmp_path):
    from serving.client import CameraClient, ServerLost
    from serving.server import Server

    v = moving_square_video(8, seed=29)
    first = Server(repo, log=tmp_path / "first.log").start()
    ports = dict(grpc_port=first.grpc_port, http_port=first.http_port, metrics_port=first.metrics_port)
    second = None
    try:
        cam = CameraClient(first.grpc_url, EXPRS[1], timeout_s=30)
        for f in v[:4]:
            cam.push(f)
        first.kill()
        with pytest.raises(ServerLost):
            cam.push(v[4])
        restarted = {}

        def restart():
            time.sleep(1.0)
            try:
                restarted["server"] = Server(repo, log=tmp_path / "second.log", **ports).start()
            except Exception as e:  # noqa: BLE001 (raised below, in the test's thread)
                restarted["error"] = e

        t = threading.Thread(target=restart)
        t.start()
        try:
            cam.reconnect(within_s=120)
        finally:
            t.join()
        assert "error" not in restarted, restarted.get("error")
        second = restarted["server"]
        got = [cam.push(f) for f in v[4:]]
        assert [a.frame_index for a in got] == [0, 1, 2, 3] and cam.sequences == 2
        want = in_process(tiny_engine, v[4:], EXPRS[1])  # a new sequence: a fresh stream from frame 4
        for a, w in zip(got, want):
            assert np.array_equal(a.masks, w)
        cam.close()
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_the_client_gives_up_on_a_server_that_does_not_come_back(repo, tmp_path):
    from serving.client import CameraClient, ServerLost
    from serving.server import Server

    f = moving_square_video(1, seed=30)[0]
    s = Server(repo, log=tmp_path / "server.log").start()
    try:
        cam = CameraClient(s.grpc_url, EXPRS[1], timeout_s=30)
        cam.push(f)
        s.kill()
        with pytest.raises(ServerLost):
            cam.push(f)
        t0 = time.monotonic()
        with pytest.raises(ServerLost, match="did not come back within 2 s"):
            cam.reconnect(within_s=2)
        assert time.monotonic() - t0 < 10
    finally:
        s.stop()


def test_grpc_over_tls_serves_a_client_with_the_ca_and_refuses_a_plain_one(repo, tmp_path):
    import shutil
    import subprocess

    from serving.client import CameraClient
    from serving.server import Server

    if shutil.which("openssl") is None:
        pytest.skip("no openssl binary to make a test certificate")

    def sh(*cmd):
        subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True)

    sh(*"openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 1 -subj /CN=test-ca".split())
    sh(*"openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1".split())
    (tmp_path / "ext").write_text("subjectAltName=IP:127.0.0.1\n")
    sh(
        *"openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 1".split(),
        "-extfile",
        "ext",
    )
    tls = [
        "--grpc-use-ssl=true",
        f"--grpc-server-cert={tmp_path / 'server.crt'}",
        f"--grpc-server-key={tmp_path / 'server.key'}",
    ]
    f = moving_square_video(1, seed=31)[0]
    with Server(repo, log=tmp_path / "server.log", extra=tls) as s:
        cam = CameraClient(s.grpc_url, EXPRS[1], tls={"ssl": True, "root_certificates": str(tmp_path / "ca.crt")})
        assert cam.ready() is None
        assert cam.push(f).masks.shape == (1, *f.shape[:2])
        cam.close()
        assert CameraClient(s.grpc_url, EXPRS[1]).ready() is not None  # plain text is not answered


@pytest.mark.slow
def test_soak_4_cameras_x_2500_frames(tmp_path):
    """Issue 30's soak (about 10 minutes on 2 cores: `pytest -m slow tests/test_serving.py`;
    benchmarks/serving_soak.py writes the same run's figures): every frame answered in order,
    masks equal to in-process streams, RSS flat after warm-up, a vanished client freed."""
    from benchmarks.serving_load import engine_dir, load_engine
    from benchmarks.serving_soak import client_vanishes, in_process_digests, rss_growth, soak_server
    from serving.repository import write_repository
    from serving.server import Server

    cameras, frames, idle_s = 4, 2500, 5.0
    path = engine_dir("default-int8")
    write_repository(path, tmp_path / "repo", max_cameras=cameras, idle_timeout_s=idle_s)
    with Server(tmp_path / "repo", log=tmp_path / "server.log") as server:
        soak = soak_server(server, cameras, frames)
        vanished = client_vanishes(server, idle_s)
    assert [len(d) for d in soak.digests] == [frames] * cameras and soak.out_of_order == 0
    reference, _ = in_process_digests(load_engine(path), cameras, frames)
    assert soak.digests == reference
    assert rss_growth(soak.samples, cameras * frames)["growth_pct"] < 1.0
    assert vanished["open_cameras_after"] == 0 and vanished["cameras_idled_out"] == 1
    assert vanished["rss_back_within_bytes"] < 8 * 2**20


def test_a_port_another_process_listens_on_is_refused_before_starting(repo, tmp_path):
    import socket

    from serving.server import Server, ServerError

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(ServerError, match=f"gRPC port 127.0.0.1:{port} is taken"):
            Server(repo, grpc_port=port, log=tmp_path / "server.log").start()
