"""What machine the figures come from, how fast it can multiply, and how much memory we hold."""

from __future__ import annotations

import os
import platform
import re
import resource
import socket
import time

import numpy as np


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine_info() -> dict:
    import onnxruntime
    import torch

    flags = cpu_flags()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    return {
        "hostname": socket.gethostname(),
        "cpu": cpu_model(),
        "cores": cores(),
        "isa": sorted(f for f in flags if f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")),
        "memory_gb": round(mem / 2**30, 1),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "onnxruntime": onnxruntime.__version__,
    }


def machine_slug(info: dict) -> str:
    """'vm-amd-epyc-2c': hostname, CPU model and core count, filename-safe."""
    cpu = re.sub(r"\((r|tm)\)|cpu|processor|@.*$", "", info["cpu"], flags=re.I)
    text = f"{info['hostname']}-{cpu}-{info['cores']}c".lower()
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


def load_average() -> list[float]:
    """1/5/15-minute load: other work sharing the cores slows every figure down."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def matmul_peak(n: int = 2048, repeats: int = 5) -> dict:
    """fp32 GFLOP/s of an n x n numpy matmul (BLAS, all threads): the machine's practical peak."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b  # warm-up: thread pool, page faults
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        rates.append(2.0 * n**3 / (time.perf_counter() - t) / 1e9)
    return {
        "n": n,
        "repeats": repeats,
        "gflops_best": max(rates),
        "gflops_median": float(np.median(rates)),
        "load_average": load_average(),
    }


def rss_bytes() -> int:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far.

    VmHWM where Linux has it: getrusage's ru_maxrss survives fork + exec, so a child of a big
    process (pytest holding every model) would report its parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
