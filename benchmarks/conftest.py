"""Benchmark suite: `python -m pytest benchmarks/` (default set) or with --benchmark-full.

Session fixtures build (once, cached on disk by content: see benchmarks/models.py) the tiny and
the medium random GLUS, their fp32 and int8 engines, and a synthetic validation set. Tests put
their figures into one Results object; at the end of the session it is written to
benchmarks/results/<date>-<machine>.json and .md, and the headline figures are printed.
"""

from __future__ import annotations

import os
import sys
import time

# Before torch loads (the worker processes inherit it): torch's OpenMP threads wait passively, as
# the engines' ONNX Runtime sessions do; spin-waiting pools lose up to 70x on a shared machine
# (benchmarks/threads.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
TORCH_PRELOADED = "torch" in sys.modules  # then the setting came too late for this process

import pytest  # noqa: E402

from . import harness  # noqa: E402
from .machine import load_average, machine_info, machine_slug, matmul_peak  # noqa: E402
from .results import RESULTS_DIR, Results  # noqa: E402

RESULTS_KEY = pytest.StashKey[Results]()


def pytest_addoption(parser):
    g = parser.getgroup("glus benchmarks")
    g.addoption(
        "--benchmark-full",
        action="store_true",
        default=False,
        help="the longer set: more frames and videos, medium model drift on the synthetic set",
    )
    g.addoption(
        "--bench-results",
        default=str(RESULTS_DIR),
        help="directory for the results JSON/markdown (default: benchmarks/results)",
    )


def pytest_configure(config):
    s = harness.settings(config.getoption("--benchmark-full"))
    info = dict(
        machine_info(), omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"), torch_loaded_before_conftest=TORCH_PRELOADED
    )
    r = Results(info, machine_slug(info), s.mode)
    r.run_info = {"load_average_start": load_average(), "settings": s.__dict__.copy()}
    config.stash[RESULTS_KEY] = r


@pytest.fixture(scope="session")
def settings(pytestconfig) -> harness.Settings:
    return harness.settings(pytestconfig.getoption("--benchmark-full"))


@pytest.fixture(scope="session")
def results(pytestconfig) -> Results:
    return pytestconfig.stash[RESULTS_KEY]


@pytest.fixture(scope="session")
def peak(results) -> dict:
    """This machine's fp32 matmul peak, measured in this run (again at the end: the best counts)."""
    p = matmul_peak()
    results.data["peak"] = p
    return p


@pytest.fixture(scope="session")
def bench_models(results) -> dict[str, harness.ModelBench]:
    return {name: harness.ModelBench(name) for name in harness.DRIFT_MODELS}


@pytest.fixture(scope="session")
def synth_set(settings):
    return harness.synth_dataset(settings.synth_videos, settings.synth_frames, settings.frame_size)


def _finish(r: Results) -> None:
    """Peak probed again, per-stage cost, model shapes: what needs several tests' figures."""
    from .cost import cost_rows

    if r.get("stages"):
        again = matmul_peak()
        p = r.data.setdefault("peak", again)
        if again["gflops_best"] > p["gflops_best"]:
            r.data["peak"] = {**again, "first_probe_gflops": p["gflops_best"]}
        best = r.data["peak"]["gflops_best"]
        for model, st in r.data["stages"].items():
            f = (r.get("flops") or {}).get(model)
            if f:
                r.put("cost", model, {"peak_gflops": best, "rows": cost_rows(f["stages"], st["stages"], best)})


def pytest_sessionfinish(session, exitstatus):
    r = session.config.stash.get(RESULTS_KEY, None)
    if r is None or r.empty:
        return
    _finish(r)
    info = dict(
        r.run_info, load_average_end=load_average(), wall_s=time.time() - r.started, exit_status=int(exitstatus)
    )
    directory = session.config.getoption("--bench-results")
    r.written = r.write(directory, info)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    r = config.stash.get(RESULTS_KEY, None)
    if r is None or r.empty:
        return
    from .summary import headline

    tr = terminalreporter
    tr.section("GLUS benchmarks")
    for line in headline(r.data, r.machine["slug"]):
        tr.write_line(line)
    path = getattr(r, "written", None)
    if path is not None:
        tr.write_line(f"results: {path} (+ .md); wall {time.time() - r.started:.0f} s")
