"""Export the "llm" graph in a process of its own, so that its memory goes back when it is done.

At LLaMA-7B's widths the dynamo exporter's IR keeps TorchTensor wrappers on the PyTorch LLM's
storages after `export_graph` returns (benchmarks/export_memory measures it): releasing the
model in the building process frees nothing. Here a child process loads the checkpoint, computes
PyTorch's outputs on the parity inputs, exports llm.onnx and exits, which returns everything it
held; the building process, which has already dropped its own copy of the LLM, then runs ONNX
Runtime on the same inputs. The two copies of the LLM (PyTorch and ONNX Runtime) are never
resident together.

    python -m export.llm_process CHECKPOINT CLIP OUT.onnx CHECK.npz SEED   (used by export.build)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

# stderr lines of a failed child that the error message quotes
ERROR_TAIL_LINES = 20


class LlmProcessError(RuntimeError):
    """The child process that exports the LLM failed; the message ends with its stderr."""


def export_llm_in_child(
    checkpoint: Path, clip: Path, onnx_path: Path, seed: int, timeout_s: float | None = None
) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    """Export llm.onnx in a fresh Python process; returns (parity inputs, PyTorch's outputs on
    them) for the caller's ONNX Runtime check."""
    check = Path(onnx_path).with_suffix(".check.npz")
    cmd = [
        sys.executable,
        "-m",
        "export.llm_process",
        str(checkpoint),
        str(clip),
        str(onnx_path),
        str(check),
        str(seed),
    ]
    try:
        r = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            cwd=Path(__file__).resolve().parent.parent,
        )
        if r.returncode != 0:
            tail = "\n".join(r.stderr.strip().splitlines()[-ERROR_TAIL_LINES:])
            how = (
                f"killed by signal {-r.returncode}" + (" (out of memory?)" if r.returncode == -9 else "")
                if r.returncode < 0
                else f"exit {r.returncode}"
            )
            raise LlmProcessError(f"exporting the LLM in a child process failed ({how}):\n{tail}")
        with np.load(check) as z:
            inputs = {k[len("in:") :]: z[k] for k in z.files if k.startswith("in:")}
            n_out = sum(1 for k in z.files if k.startswith("out:"))
            want = [z[f"out:{i}"] for i in range(n_out)]
    finally:
        check.unlink(missing_ok=True)
    return inputs, want


def _child(checkpoint: str, clip: str, onnx_path: str, check: str, seed: int) -> None:
    import torch

    import reference

    from .llm import llm_spec
    from .onnx_utils import export_graph, fresh_inputs

    ref = reference.load(checkpoint, clip)
    spec = llm_spec(ref.model)
    inputs = fresh_inputs(spec.inputs, seed)
    with torch.no_grad():
        want = spec.module(*inputs.values())
    arrays = {f"in:{k}": v.numpy() for k, v in inputs.items()}
    arrays.update({f"out:{i}": w.float().numpy() for i, w in enumerate(want)})
    np.savez(check, **arrays)
    del want
    export_graph(spec, onnx_path)


if __name__ == "__main__":
    if len(sys.argv) != 6:
        sys.exit(__doc__)
    _child(*sys.argv[1:5], int(sys.argv[5]))
