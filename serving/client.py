"""glus-client: segment sources on a GLUS Triton server, with the outputs of runtime.segment.

    python -m serving.client --url 127.0.0.1:8001 SOURCE [SOURCE ...] -e TEXT [-e TEXT ...]
        -o OUT [--max-frames N] [--timeout SECONDS] [--reconnect SECONDS] [--model glus]
        [--tls [--root-cert CA.pem] [--client-key KEY.pem --client-cert CERT.pem]]

SOURCE: what runtime.segment reads (a video file, a folder of frames, an image, a camera index,
a stream URL). Each source is one camera: one sequence on the server (tritonclient's gRPC
stream), its frames sent in order, each answered before the next is sent. Several sources run at
once, one thread each (a load test from one command). The outputs are runtime.segment's, per
source: OUT/NAME/<exp_id>/<frame>.png, OUT/NAME/expressions.json, OUT/NAME_overlay.mp4,
OUT/NAME_contact.png. The server's masks are the in-process stream's (tests/test_serving.py).

A frame the server refuses (e.g. of another size mid-stream) is skipped with a warning and the
sequence goes on. If the server goes away, the client says so, reconnects for up to --reconnect
seconds, and starts a new sequence (a fresh memory) with the frame it was sending: no frame is
lost, and the masks after it are a new stream's.

Exit codes: 0 done; 2 usage; 3 server unreachable, or lost for longer than --reconnect, or it
refused the camera; 4 source; 5 output; 6 partly done (frames skipped or undecodable).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PROG = "glus-client"
MODEL_NAME = "glus"
EXIT_OK, EXIT_USAGE, EXIT_SERVER, EXIT_SOURCE, EXIT_OUTPUT, EXIT_PARTIAL = 0, 2, 3, 4, 5, 6
_ids = itertools.count(1)


class ServerLost(Exception):
    """The server did not answer (gone, restarting, or the network): the sequence is lost."""


class Refused(Exception):
    """The server answered this request with an error; `camera_lost` when the camera's state is
    gone (unknown ID, refused START), else only this request failed."""

    def __init__(self, message: str, camera_lost: bool):
        super().__init__(message)
        self.camera_lost = camera_lost


def encode_expressions(expressions: list[str]) -> np.ndarray:
    """EXPRESSIONS as the model reads it: the UTF-8 bytes of a JSON array, uint8 [1, B]
    (serving/repository.py says why not a string tensor)."""
    raw = json.dumps(list(expressions), ensure_ascii=False).encode("utf-8")
    return np.frombuffer(raw, dtype=np.uint8)[None].copy()


def new_sequence_id() -> int:
    """A correlation ID unlikely to meet another client's: pid, time and a counter in 63 bits."""
    return ((os.getpid() & 0xFFFF) << 47 | (time.time_ns() // 1000 & 0x7FFFFFFF) << 16 | next(_ids) & 0xFFFF) or 1


@dataclass
class Answer:
    masks: np.ndarray  # bool N x H x W, in the order of the expressions
    scores: np.ndarray  # float32 N
    frame_index: int  # the frame's position in the server's sequence
    latency_s: float  # send to answer


_GONE = ("UNAVAILABLE", "CANCELLED", "DEADLINE_EXCEEDED", "Socket closed", "Connection reset", "not healthy")


def _is_gone(error) -> bool:
    text = f"{getattr(error, 'status', lambda: '')()} {error}"
    return any(k in text for k in _GONE)


class CameraClient:
    """One camera on the server: one gRPC stream, one sequence.

        cam = CameraClient("127.0.0.1:8001", ["the red car"])
        answer = cam.push(frame)  # Answer; the first push starts the sequence
        cam.close()  # ends the sequence (the server frees the camera at once)

    push raises Refused (the server's error for this request; the camera goes on unless
    `camera_lost`) or ServerLost (no answer within timeout_s: the server is gone). After either
    with the camera lost, `reconnect()` (or the next push after it) starts a new sequence.
    """

    def __init__(
        self,
        url: str,
        expressions: list[str],
        *,
        model: str = MODEL_NAME,
        timeout_s: float = 60.0,
        tls: dict | None = None,
    ):
        import grpc
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        self._grpc = grpcclient
        self._errors = (InferenceServerException, grpc.RpcError, OSError)
        self.url, self.model, self.timeout_s = url, model, timeout_s
        # tritonclient's TLS options: ssl, root_certificates, private_key, certificate_chain
        self.tls = dict(tls or {})
        self.expressions = list(expressions)
        self.sequence_id = 0
        self.sequences = 0  # sequences started (1 + reconnections)
        self._started = False
        self._client = None
        self._answers: queue.Queue = queue.Queue()
        self._connect()

    # ---- connection ------------------------------------------------------------------------
    def _connect(self) -> None:
        client = self._grpc.InferenceServerClient(self.url, **self.tls)
        try:
            client.start_stream(callback=self._on_answer)
        except self._errors as e:
            client.close()
            raise ServerLost(f"cannot open a stream to {self.url}: {e}") from None
        self._client = client
        self._answers = queue.Queue()

    def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.stop_stream(cancel_requests=True)
            except self._errors:  # a stream that died with its server
                pass
            client.close()
        self._started = False

    def _on_answer(self, result, error) -> None:
        self._answers.put((time.perf_counter(), result, error))

    def ready(self) -> str | None:
        """None when the server and the model are ready, else why not (one line)."""
        client = self._grpc.InferenceServerClient(self.url, **self.tls)
        try:
            if not client.is_server_ready():
                return f"the server at {self.url} is not ready"
            if not client.is_model_ready(self.model):
                return f"the server at {self.url} has no ready model {self.model!r}"
            return None
        except self._errors as e:
            return f"no server at {self.url}: {_first_line(e)}"
        finally:
            client.close()

    def reconnect(self, within_s: float) -> None:
        """Wait up to within_s for the server to be ready again and open a new stream (the next
        push starts a new sequence). ServerLost if it does not come back."""
        self._drop()
        deadline = time.monotonic() + within_s
        while True:
            why = self.ready()
            if why is None:
                self._connect()
                return
            last = why
            if time.monotonic() >= deadline:
                raise ServerLost(f"the server at {self.url} did not come back within {within_s:g} s ({last})")
            time.sleep(0.5)

    # ---- requests --------------------------------------------------------------------------
    def _inputs(self, frame: np.ndarray, with_expressions: bool):
        g = self._grpc
        f = g.InferInput("FRAME", [1, *frame.shape], "UINT8")
        f.set_data_from_numpy(np.ascontiguousarray(frame, dtype=np.uint8)[None])
        inputs = [f]
        if with_expressions:
            raw = encode_expressions(self.expressions)
            e = g.InferInput("EXPRESSIONS", list(raw.shape), "UINT8")
            e.set_data_from_numpy(raw)
            inputs.append(e)
        return inputs

    def _send(self, frame: np.ndarray, *, start: bool, end: bool, with_expressions: bool) -> Answer:
        if self._client is None:
            self._connect()
        t0 = time.perf_counter()
        try:
            self._client.async_stream_infer(
                self.model,
                self._inputs(frame, with_expressions),
                sequence_id=self.sequence_id,
                sequence_start=start,
                sequence_end=end,
            )
        except self._errors as e:
            self._drop()
            raise ServerLost(f"cannot send to {self.url}: {e}") from None
        try:
            t1, result, error = self._answers.get(timeout=self.timeout_s)
        except queue.Empty:
            self._drop()
            raise ServerLost(f"no answer from {self.url} within {self.timeout_s:g} s") from None
        if error is not None:
            if _is_gone(error):
                self._drop()
                raise ServerLost(f"the server at {self.url} went away: {_first_line(error)}")
            text = _first_line(error)
            lost = any(k in text for k in ("unknown camera", "refused camera", "must specify the START flag"))
            if lost:
                self._started = False
            raise Refused(text, camera_lost=lost)
        index = int(result.as_numpy("FRAME_INDEX").reshape(-1)[0])
        if index < 0:  # the answer to an END without a frame
            n = len(self.expressions)
            return Answer(np.zeros((n, 0, 0), bool), np.zeros(n, np.float32), index, t1 - t0)
        return Answer(result.as_numpy("MASKS")[0], result.as_numpy("SCORES")[0], index, t1 - t0)

    def push(self, frame: np.ndarray, *, last: bool = False) -> Answer:
        """Send one frame and wait for its masks. last=True ends the sequence with it."""
        start = not self._started
        if start:
            self.sequence_id = new_sequence_id()
        answer = self._send(frame, start=start, end=last, with_expressions=start)
        if start:
            self._started = True
            self.sequences += 1
        if last:
            self._started = False
        return answer

    def set_expressions(self, expressions: list[str], frame: np.ndarray) -> Answer:
        """Change the camera's expressions from this frame on (new ones start with a fresh memory)."""
        self.expressions = list(expressions)
        if not self._started:
            return self.push(frame)
        return self._send(frame, start=False, end=False, with_expressions=True)

    def abandon(self) -> None:
        """Drop the connection without ending the sequence, as a client that crashed: the server
        frees the camera after its idle timeout."""
        self._drop()

    def close(self) -> None:
        """End the sequence (an END with an empty frame: the server frees the camera now)."""
        try:
            if self._started and self._client is not None:
                self._send(np.zeros((0, 0, 3), np.uint8), start=False, end=True, with_expressions=False)
        except (ServerLost, Refused):  # the camera is gone already
            pass
        finally:
            self._drop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _first_line(error) -> str:
    text = getattr(error, "message", lambda: None)() or str(error)
    return text.strip().splitlines()[0] if text.strip() else repr(error)


# ---- the command -----------------------------------------------------------------------------
@dataclass
class SourceRun:
    spec: str
    name: str = ""
    frames: int = 0
    skipped: list[str] = field(default_factory=list)
    reconnects: int = 0
    latencies: list[float] = field(default_factory=list)
    error: tuple[int, str] | None = None
    seconds: float = 0.0


def warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)


def run_source(run: SourceRun, args, bar_position: int = 0) -> None:
    """One source through one camera; what happened is left in `run` (never raises)."""
    from runtime import video
    from runtime.segment import CliError, Outputs, report_source_problems

    t0 = time.perf_counter()
    try:
        source = video.open_source(run.spec, timeout=args.timeout)
    except video.VideoSourceError as e:
        run.error = (EXIT_SOURCE, str(e))
        return
    outputs = None
    try:
        with source:
            run.name = args.names.claim(source.name)
            cam = CameraClient(
                args.url, args.expression, model=args.model, timeout_s=args.request_timeout, tls=tls_options(args)
            )
            try:
                why = cam.ready()  # before any output is written
                if why is not None:
                    raise ServerLost(why)
                outputs = Outputs(Path(args.out), run.name, args.expression, source.fps)
                _stream_source(cam, source, outputs, run, args, bar_position)
            finally:
                cam.close()
            report_source_problems(source)
            if outputs.frames == 0 and run.error is None:
                run.error = (EXIT_SOURCE, f"no frame of {run.spec} was segmented")
    except ServerLost as e:
        run.error = (EXIT_SERVER, str(e))
    except Refused as e:
        run.error = (EXIT_SERVER, f"the server refused {run.spec}: {e}")
    except CliError as e:
        run.error = (e.code, str(e))
    finally:
        if outputs is not None:
            try:
                outputs.close()
            except CliError as e:
                run.error = run.error or (e.code, str(e))
        run.seconds = time.perf_counter() - t0


def _stream_source(cam: CameraClient, source, outputs, run: SourceRun, args, bar_position: int) -> None:
    from tqdm import tqdm

    total = args.max_frames or source.expected
    with tqdm(
        total=total, desc=run.name, unit="frame", file=sys.stderr, position=bar_position, leave=False, disable=None
    ) as bar:
        for name, frame in source:
            while True:
                try:
                    answer = cam.push(frame)
                    break
                except Refused as e:
                    if e.camera_lost:
                        raise
                    warn(f"{run.name}: frame {name} skipped: {e}")
                    run.skipped.append(name)
                    answer = None
                    break
                except ServerLost as e:
                    warn(f"{run.name}: {e}; reconnecting (up to {args.reconnect:g} s)")
                    cam.reconnect(args.reconnect)
                    run.reconnects += 1
                    warn(f"{run.name}: reconnected; a new sequence starts at frame {name}")
            if answer is not None:
                run.latencies.append(answer.latency_s)
                outputs.add(name, frame, list(answer.masks))
                run.frames += 1
                bar.update(1)
            if args.max_frames and run.frames >= args.max_frames:
                break
            if args.stop.is_set():  # Ctrl-C: the outputs are finalised by the caller
                break
    outputs.skipped.extend(run.skipped)


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2],
    )
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="video file, frame folder, image, camera or URL")
    p.add_argument("-e", "--expression", action="append", required=True, help="a sentence (repeat for several)")
    p.add_argument("-o", "--out", required=True, help="output directory")
    p.add_argument("--url", default="127.0.0.1:8001", help="the server's gRPC address (default 127.0.0.1:8001)")
    p.add_argument("--model", default=MODEL_NAME, help="the model's name on the server (default glus)")
    p.add_argument("--max-frames", type=int, help="stop each source after this many frames")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for a camera or URL (default 10)")
    p.add_argument(
        "--request-timeout", type=float, default=120.0, help="seconds to wait for one frame's answer (default 120)"
    )
    p.add_argument(
        "--reconnect",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for a lost server to come back (default 60; 0: give up at once)",
    )
    p.add_argument("--tls", action="store_true", help="gRPC over TLS (a server started with Triton's --grpc-use-ssl)")
    p.add_argument("--root-cert", type=Path, help="CA certificate that signed the server's (PEM)")
    p.add_argument("--client-key", type=Path, help="this client's private key, for mutual TLS (PEM)")
    p.add_argument("--client-cert", type=Path, help="this client's certificate, for mutual TLS (PEM)")
    a = p.parse_args(argv)
    if (a.root_cert or a.client_key or a.client_cert) and not a.tls:
        p.error("--root-cert, --client-key and --client-cert need --tls")
    if bool(a.client_key) != bool(a.client_cert):
        p.error("mutual TLS needs both --client-key and --client-cert")
    for opt in ("root_cert", "client_key", "client_cert"):
        path = getattr(a, opt)
        if path is not None and not path.is_file():
            p.error(f"--{opt.replace('_', '-')}: no such file: {path}")
    if a.max_frames is not None and a.max_frames < 1:
        p.error(f"--max-frames must be >= 1, got {a.max_frames}")
    for opt in ("timeout", "request_timeout"):
        if not getattr(a, opt) > 0:
            p.error(f"--{opt.replace('_', '-')} must be > 0")
    if a.reconnect < 0:
        p.error("--reconnect must be >= 0")
    return a


def tls_options(args) -> dict:
    if not args.tls:
        return {}
    return {
        "ssl": True,
        "root_certificates": str(args.root_cert) if args.root_cert else None,
        "private_key": str(args.client_key) if args.client_key else None,
        "certificate_chain": str(args.client_cert) if args.client_cert else None,
    }


class UniqueNames:
    """Output names for the sources, claimed as each opens (runtime.video names them): a name
    already taken gets -2, -3, ..."""

    def __init__(self):
        self._taken: set[str] = set()
        self._lock = threading.Lock()

    def claim(self, name: str) -> str:
        with self._lock:
            unique, k = name, 1
            while unique in self._taken:
                k += 1
                unique = f"{name}-{k}"
            self._taken.add(unique)
            return unique


def main(argv=None) -> int:
    from runtime.segment import CliError, check_expressions, check_output_dir

    try:
        args = parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    try:
        check_expressions(args.expression)
        check_output_dir(Path(args.out))
    except CliError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return e.code
    args.stop = threading.Event()
    args.names = UniqueNames()
    runs = [SourceRun(spec) for spec in args.sources]
    threads = [
        threading.Thread(target=run_source, args=(r, args, i), name=f"camera-{i}", daemon=True)
        for i, r in enumerate(runs)
    ]
    try:
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(0.2)
    except KeyboardInterrupt:
        args.stop.set()  # each source ends after its frame in flight and finalises its outputs
        for t in threads:
            t.join(args.request_timeout + 10)
        print(f"{PROG}: interrupted: what was written is kept, the overlay videos are finalised", file=sys.stderr)
        return 130
    code = EXIT_OK
    for r in runs:
        if r.error is not None:
            print(f"{PROG}: error: {r.name or r.spec}: {r.error[1]}", file=sys.stderr)
            code = max(code, r.error[0])
            continue
        lat = sorted(r.latencies)
        p50 = lat[len(lat) // 2] * 1000 if lat else float("nan")
        print(
            f"{r.name}: {r.frames} frames x {len(args.expression)} expressions"
            f" ({r.frames / max(r.seconds, 1e-9):.1f} frames/s, median {p50:.0f} ms a frame)"
            f"{f', {r.reconnects} reconnection(s)' if r.reconnects else ''} -> {Path(args.out) / r.name}"
        )
        if r.skipped:
            code = max(code, EXIT_PARTIAL)
    return code


if __name__ == "__main__":
    sys.exit(main())
