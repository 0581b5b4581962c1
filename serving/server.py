"""Start Triton Inference Server on an engine directory, on this machine's CPU (or GPU).

    python -m serving.server ENGINE_DIR [--repository DIR] [--host 127.0.0.1]
        [--grpc-port 8001] [--http-port 8000] [--metrics-port 8002] [model options]

The server is the `tritonserver` binary that the nvidia-pytriton wheel bundles, with its python
backend. This launcher:
- writes the model repository (serving/repository.py) unless --repository names one;
- makes a backend directory under the cache directory (~/.cache/glus-edge/triton/backends):
  the wheel's python backend plus the backend stub built for this Python (the wheel ships one
  per Python version and places none itself), so site-packages is never modified;
- gives the stub this interpreter's Python: its libpython first on LD_LIBRARY_PATH (next to the
  wheel's nvidia_pytriton.libs) and PYTHONHOME, so the model imports onnxruntime and the
  runtime from this environment (the stub reads no PYTHONPATH; model.py names this project's
  root). Arrays cross the stub by DLPack (serving/triton_model.py says why);
- binds 127.0.0.1 unless --host says otherwise (Triton's own default is every interface), with
  model control off (the repository's models are loaded at start, nothing can load others);
- waits until the server is ready, prints its addresses, and on SIGINT/SIGTERM stops it cleanly.

Exposing it on a network is explicit: `--host 0.0.0.0`, and for gRPC over TLS pass Triton's own
options after `--`: `-- --grpc-use-ssl=true --grpc-server-cert=server.crt
--grpc-server-key=server.key [--grpc-use-ssl-mutual=true --grpc-root-cert=ca.crt]`.
Exit codes: 0 stopped on request, 2 bad arguments, 3 the server could not start or died.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from runtime.paths import cache_dir

PROG = "serving.server"
REPO_ROOT = Path(__file__).resolve().parent.parent
EXIT_OK, EXIT_USAGE, EXIT_SERVER = 0, 2, 3


class ServerError(Exception):
    """The server could not be found, started, or died: one line for the user."""


@dataclass
class TritonDist:
    binary: Path
    python_backend: Path  # libtriton_python.so, triton_python_backend_utils.py
    stub: Path  # triton_python_backend_stub for this Python
    libs: Path  # nvidia_pytriton.libs


def find_tritonserver() -> TritonDist:
    """The tritonserver binary and python backend of the installed nvidia-pytriton wheel."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("pytriton")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ServerError(
            "nvidia-pytriton is not installed: `pip install --no-deps nvidia-pytriton==0.7.0` (setup.sh does;"
            " it bundles tritonserver)"
        )
    pkg = Path(next(iter(spec.submodule_search_locations)))
    ts = pkg / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    dist = TritonDist(
        binary=ts / "bin" / "tritonserver",
        python_backend=ts / "backends" / "python",
        stub=ts / "python_backend_stubs" / version / "triton_python_backend_stub",
        libs=pkg.parent / "nvidia_pytriton.libs",
    )
    if not dist.binary.is_file():
        raise ServerError(f"the nvidia-pytriton wheel has no tritonserver binary at {dist.binary}")
    if not dist.stub.is_file():
        have = sorted(p.name for p in (ts / "python_backend_stubs").iterdir())
        raise ServerError(f"the nvidia-pytriton wheel has no python backend stub for Python {version} (it has {have})")
    return dist


def cannot_run() -> str | None:
    """Why the bundled tritonserver cannot run on this machine (not installed, another
    architecture, missing system libraries), or None when it can."""
    try:
        dist = find_tritonserver()
    except ServerError as e:
        return str(e)
    try:
        r = subprocess.run(
            [str(dist.binary), "--help"],
            check=False,
            capture_output=True,
            text=True,
            env=stub_environment(dist),
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{dist.binary} cannot be executed here: {e}"
    if "Usage: tritonserver" not in r.stdout + r.stderr:  # --help exits 1 after printing its usage
        return f"{dist.binary} does not run here (exit {r.returncode}): {(r.stderr or r.stdout).strip()[-500:]}"
    return None


def backend_dir(dist: TritonDist, root: Path | None = None) -> Path:
    """A backend directory holding the python backend with this Python's stub (copied, refreshed
    when the wheel's files change)."""
    if root is None:
        root = cache_dir() / "triton" / f"backends-py{sys.version_info.major}{sys.version_info.minor}"
    root = Path(root)
    py = root / "python"
    py.mkdir(parents=True, exist_ok=True)
    files = [dist.python_backend / "libtriton_python.so", dist.python_backend / "triton_python_backend_utils.py"]
    for src in [*files, dist.stub]:
        dst = py / src.name
        st = src.stat()
        if not dst.is_file() or dst.stat().st_size != st.st_size or dst.stat().st_mtime < st.st_mtime:
            tmp = dst.with_suffix(dst.suffix + ".tmp")
            shutil.copy2(src, tmp)
            os.replace(tmp, dst)  # atomic: a server starting beside this one never sees half a file
    return root


def stub_environment(dist: TritonDist, base: dict | None = None) -> dict:
    """Environment under which the python backend stub embeds this interpreter's Python."""
    env = dict(os.environ if base is None else base)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    ldlib = sysconfig.get_config_var("LDLIBRARY") or ""
    lib_path = [str(dist.libs)]
    if libdir and (Path(libdir) / ldlib).exists() and ldlib.endswith(".so"):
        lib_path.insert(0, libdir)  # this Python's libpython, not the system's of the same version
    if env.get("LD_LIBRARY_PATH"):
        lib_path.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(lib_path)
    env["PYTHONHOME"] = sys.base_prefix
    # The stub's interpreter reads no PYTHONPATH: it finds this environment's site-packages from
    # PYTHONHOME, and the project from its install or from the path model.py names.
    env.pop("PYTHONSTARTUP", None)
    return env


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Server:
    """One tritonserver process over a model repository; a context manager.

    log: a path for the server's output (default: a temporary file, printed on a failed start).
    extra: more tritonserver options (e.g. TLS).
    """

    def __init__(
        self,
        repository: Path,
        *,
        host: str = "127.0.0.1",
        grpc_port: int | None = None,
        http_port: int | None = None,
        metrics_port: int | None = None,
        log: Path | None = None,
        extra: list[str] = (),
        exit_timeout_s: int = 10,
        verbose: int = 0,
    ):
        self.repository = Path(repository)
        self.host = host
        bind = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        self.grpc_port = grpc_port or free_port(bind)
        self.http_port = http_port or free_port(bind)
        self.metrics_port = metrics_port or free_port(bind)
        self.connect_host = bind
        self.log_path = Path(log) if log else Path(tempfile.mkstemp(prefix="tritonserver-", suffix=".log")[1])
        self.extra = list(extra)
        self.exit_timeout_s = exit_timeout_s
        self.verbose = verbose
        self.proc: subprocess.Popen | None = None
        self.dist = find_tritonserver()

    @property
    def grpc_url(self) -> str:
        return f"{self.connect_host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.connect_host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.connect_host}:{self.metrics_port}/metrics"

    def command(self) -> list[str]:
        return [
            str(self.dist.binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={backend_dir(self.dist)}",
            "--model-control-mode=none",
            "--strict-readiness=true",
            "--exit-on-error=true",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            "--allow-sagemaker=false",
            "--allow-vertex-ai=false",
            "--allow-gpu-metrics=false",
            f"--log-verbose={self.verbose}",
            *self.extra,
        ]

    def start(self, timeout_s: float = 120.0) -> Server:
        for what, port in (("gRPC", self.grpc_port), ("HTTP", self.http_port), ("metrics", self.metrics_port)):
            try:  # else the readiness probe could be answered by whatever holds the port
                with socket.socket() as s:
                    # as the server binds: a port whose last server died (connections left in
                    # TIME_WAIT) is free; one that another process listens on is not
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind((self.connect_host, port))
            except OSError as e:
                raise ServerError(f"the {what} port {self.connect_host}:{port} is taken ({e.strerror})") from None
        env = stub_environment(self.dist)
        self._log = open(self.log_path, "wb")  # closed in stop()
        self.proc = subprocess.Popen(
            self.command(), stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        self.wait_ready(timeout_s)
        return self

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(
                    f"tritonserver exited with code {self.proc.returncode} while starting; its log"
                    f" ({self.log_path}) ends with:\n{self.log_tail()}"
                )
            if self.ready():
                return
            time.sleep(0.2)
        self.stop()
        raise ServerError(f"tritonserver not ready after {timeout_s:g} s; its log ends with:\n{self.log_tail()}")

    def metrics(self) -> dict[str, float]:
        """The server's Prometheus metrics, summed over labels: {name: value}."""
        with urllib.request.urlopen(self.metrics_url, timeout=5) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                key = name.split("{")[0]
                out[key] = out.get(key, 0.0) + float(value)
        return out

    def pids(self) -> list[int]:
        """The server's process and its children (the python backend stub holds the cameras)."""
        if self.proc is None:
            return []
        out, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            try:
                kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                kids = []
            todo.extend(int(k) for k in kids)
        return out

    def rss_bytes(self) -> int:
        """Resident memory of the server and its stub processes."""
        total = 0
        for pid in self.pids():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            except OSError:
                pass
        return total

    def kill(self) -> None:
        """SIGKILL the server and its stubs at once (a crash, for fault tests)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._close_log()

    def stop(self) -> int | None:
        """SIGINT (Triton's graceful shutdown), then SIGKILL if it overruns its exit timeout."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(self.exit_timeout_s + 10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        try:  # a stub left behind by a crashed server
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._close_log()
        return self.proc.returncode

    def _close_log(self) -> None:
        log = getattr(self, "_log", None)
        if log is not None and not log.closed:
            log.close()

    def __enter__(self):
        return self.start() if self.proc is None else self

    def __exit__(self, *exc):
        self.stop()


def parse_args(argv):
    from serving.repository import add_model_options

    p = argparse.ArgumentParser(
        prog=f"python -m {PROG}",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2],
    )
    p.add_argument("engine_dir", type=Path, nargs="?", help="engine directory (python -m export.build)")
    p.add_argument("--prepare", action="store_true", help="make the backend directory, then exit")
    p.add_argument("--repository", type=Path, help="serve this model repository instead of writing one")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0: every interface)")
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--log", type=Path, help="the server's log file (default: a temporary file)")
    p.add_argument("--start-timeout", type=float, default=300.0, help="seconds to wait for readiness")
    p.add_argument("--verbose", type=int, default=0, help="Triton's --log-verbose level")
    add_model_options(p)
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    a = p.parse_args(argv)
    a.extra = extra
    return a


def main(argv=None) -> int:
    from serving.repository import model_options, write_repository

    a = parse_args(argv)
    tmp = server = None
    try:
        if a.prepare:
            print(f"{PROG}: backend directory {backend_dir(find_tritonserver())}")
            return EXIT_OK
        if a.engine_dir is None:
            raise ValueError("ENGINE_DIR is required (or --prepare)")
        if a.repository is not None:
            repo = a.repository
            if not (repo / "glus" / "config.pbtxt").is_file():
                raise ServerError(f"no glus/config.pbtxt in the repository {repo}")
        else:
            tmp = tempfile.TemporaryDirectory(prefix="glus-triton-")
            repo = Path(tmp.name)
            write_repository(a.engine_dir, repo, **model_options(a))
        server = Server(
            repo,
            host=a.host,
            grpc_port=a.grpc_port,
            http_port=a.http_port,
            metrics_port=a.metrics_port,
            log=a.log,
            extra=a.extra,
            verbose=a.verbose,
        )
        stopping = []

        def on_signal(signum, _frame):
            stopping.append(signum)

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        print(f"{PROG}: starting tritonserver (log: {server.log_path})", flush=True)
        server.start(a.start_timeout)
        print(
            f"{PROG}: ready: gRPC {a.host}:{server.grpc_port}, HTTP {a.host}:{server.http_port},"
            f" metrics {a.host}:{server.metrics_port}/metrics; model glus from {repo}. Ctrl-C stops it.",
            flush=True,
        )
        while not stopping and server.proc.poll() is None:
            time.sleep(0.2)
        if not stopping:
            raise ServerError(f"tritonserver exited with code {server.proc.returncode}:\n{server.log_tail()}")
        print(f"{PROG}: stopping", flush=True)
        server.stop()
        return EXIT_OK
    except (ServerError, FileNotFoundError, ValueError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_SERVER if isinstance(e, ServerError) else EXIT_USAGE
    finally:
        if server is not None:
            server.stop()
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
