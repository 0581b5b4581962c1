"""Write a Triton model repository that serves an engine directory's streams.

    python -m serving.repository ENGINE_DIR OUT [--max-cameras 8] [--idle-timeout 60]
        [--kv-policy exact|incremental] [--llm-every K|auto] [--batch-llm] [--workers N] [--batch-images]
        [--threads N] [--device cpu|cuda:0] [--backend auto|onnxruntime|tensorrt] [--name glus]

writes OUT/glus/config.pbtxt and OUT/glus/1/model.py: a Python-backend model whose every
correlation ID (one camera) owns one runtime Stream. The model imports this project (`serving`,
`runtime`): run it with `python -m serving.server`, which gives Triton's python backend this
interpreter's packages, or in a container where the project is installed (docs/serving.md).

Inputs (each request: one frame of one camera; the batch dimension is 1 per request):
    FRAME        uint8  [1, H, W, 3]   RGB; any size per camera, fixed within a camera's stream
    EXPRESSIONS  uint8  [1, B]         UTF-8 JSON list of strings; on START, and whenever the
                                       camera's set changes (optional otherwise: the set stays)
    START, END   int32  [1, 1]         sequence controls (tritonclient: sequence_start/_end)
    CORRID       uint64 [1, 1]         the camera (tritonclient: sequence_id)
Outputs:
    MASKS            bool    [1, N, H, W]  in the order of the camera's expressions
    SCORES           float32 [1, N]        predicted IoU x sigmoid(object score) per expression
    FRAME_INDEX      int64   [1, 1]        the frame's position in the camera's stream

EXPRESSIONS is bytes, not a TYPE_STRING tensor: the python backend stub of the nvidia-pytriton
0.7.0 wheel (Triton 2.51) aborts on any string input here (deserialize_bytes_tensor reads the
first byte repeated), so the expressions travel as a UTF-8 JSON array (serving.client.encode_expressions).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

MODEL_NAME = "glus"
MODEL_PY = '''\
"""Triton python-backend entry point: the model is serving/triton_model.py (glus-edge)."""

import sys

# the checkout that wrote this repository, for a stub whose Python has not installed it
sys.path.append({root!r})

from serving.triton_model import TritonPythonModel  # noqa: E402, F401
'''
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _pbtxt_string(s: str) -> str:
    """A protobuf text-format string literal: quotes and backslashes escaped, control characters
    (a newline in a path) as octal escapes, the rest as UTF-8."""
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\{ord(ch):03o}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def config_pbtxt(
    engine_dir: Path,
    *,
    name: str = MODEL_NAME,
    max_cameras: int = 8,
    idle_timeout_s: float = 60.0,
    kv_policy: str = "exact",
    llm_every: int | str = 1,
    batch_llm: bool = False,
    workers: int = 1,
    batch_images: bool = False,
    threads: int | None = None,
    device: str = "cpu",
    backend: str = "auto",
    batch: int | None = None,
    queue_delay_us: int = 0,
) -> str:
    """The model's config.pbtxt.

    max_cameras: cameras with state on the server at once; the model refuses a START beyond it.
    Triton's sequence batcher is given more candidate sequences than that (2x), so that an
    extra camera reaches the model and gets its refusal instead of waiting in Triton's backlog.
    batch: requests of different cameras handed to one `execute` (default: max_cameras).
    """
    if max_cameras < 1:
        raise ValueError(f"max_cameras must be >= 1, got {max_cameras}")
    if not idle_timeout_s > 0:
        raise ValueError(f"idle timeout must be > 0 s, got {idle_timeout_s}")
    if llm_every != "auto" and not (isinstance(llm_every, int) and llm_every >= 1):
        raise ValueError(f"llm_every must be an integer >= 1 or 'auto', got {llm_every!r}")
    if workers < 1 or (threads is not None and threads < 1):
        raise ValueError("workers and threads must be >= 1")
    if kv_policy not in ("exact", "incremental"):
        raise ValueError(f"kv_policy must be 'exact' or 'incremental', got {kv_policy!r}")
    batch = batch or max_cameras
    params = {
        "engine_dir": str(Path(engine_dir).resolve()),
        "max_cameras": str(max_cameras),
        "kv_policy": kv_policy,
        "llm_every": str(llm_every),
        "batch_llm": "1" if batch_llm else "0",
        "workers": str(workers),
        "batch_images": "1" if batch_images else "0",
        "threads": "" if threads is None else str(threads),
        "device": device,
        "backend": backend,
    }
    param_text = "\n".join(
        f"parameters: {{ key: {_pbtxt_string(k)} value: {{ string_value: {_pbtxt_string(v)} }} }}"
        for k, v in params.items()
    )
    idle_us = max(1, round(idle_timeout_s * 1e6))
    return f"""\
# Written by `python -m serving.repository` (glus-edge). One model instance holds every camera's
# state: more instances would split the cameras between processes, each loading the engine.
name: {_pbtxt_string(name)}
backend: "python"
max_batch_size: {batch}
input [
  {{ name: "FRAME" data_type: TYPE_UINT8 dims: [ -1, -1, 3 ] allow_ragged_batch: true }},
  {{ name: "EXPRESSIONS" data_type: TYPE_UINT8 dims: [ -1 ] allow_ragged_batch: true optional: true }}
]
output [
  {{ name: "MASKS" data_type: TYPE_BOOL dims: [ -1, -1, -1 ] }},
  {{ name: "SCORES" data_type: TYPE_FP32 dims: [ -1 ] }},
  {{ name: "FRAME_INDEX" data_type: TYPE_INT64 dims: [ 1 ] }}
]
sequence_batching {{
  max_sequence_idle_microseconds: {idle_us}
  oldest {{
    max_candidate_sequences: {2 * max_cameras}
    max_queue_delay_microseconds: {queue_delay_us}
  }}
  control_input [
    {{ name: "START" control [ {{ kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] }} ] }},
    {{ name: "END" control [ {{ kind: CONTROL_SEQUENCE_END int32_false_true: [ 0, 1 ] }} ] }},
    {{ name: "CORRID" control [ {{ kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 }} ] }}
  ]
}}
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
{param_text}
"""


def write_repository(engine_dir, out, *, name: str = MODEL_NAME, **options) -> Path:
    """OUT/NAME/config.pbtxt and OUT/NAME/1/model.py; returns OUT/NAME."""
    from runtime.manifest import MANIFEST

    engine_dir = Path(engine_dir)
    if not (engine_dir / MANIFEST).is_file():
        raise FileNotFoundError(f"not an engine directory (no {MANIFEST}): {engine_dir}")
    if options.get("batch_images"):  # refused here, not at the server's model load
        from runtime.manifest import read_manifest
        from runtime.stages import stacking_refused

        why = stacking_refused(read_manifest(engine_dir, verify_hashes=False))
        if why:
            raise ValueError(f"--batch-images needs an image encoder that stacks frames exactly: {why}")
    model = Path(out) / name
    (model / "1").mkdir(parents=True, exist_ok=True)
    (model / "config.pbtxt").write_text(config_pbtxt(engine_dir, name=name, **options))
    (model / "1" / "model.py").write_text(MODEL_PY.format(root=str(PROJECT_ROOT)))
    return model


def _llm_every(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a positive integer or 'auto', got {text!r}") from None


def add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-cameras", type=int, default=8, help="cameras open at once; more are refused (default 8)")
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="a camera that sends nothing for this long is closed and its state freed (default 60)",
    )
    p.add_argument("--kv-policy", default="exact", choices=("exact", "incremental"))
    p.add_argument(
        "--llm-every",
        type=_llm_every,
        default=1,
        metavar="K|auto",
        help="the LLM answers on every K-th frame, or when SAM2's confidence or the scene says (auto)",
    )
    p.add_argument(
        "--batch-llm",
        action="store_true",
        help="a camera's expressions ask the LLM in one call (an engine built with --batched-llm)",
    )
    p.add_argument(
        "--workers", type=int, default=1, help="cameras of one batch run at once in threads (default 1: in turn)"
    )
    p.add_argument(
        "--batch-images",
        action="store_true",
        help="the frames of the cameras batched together share one SAM2 image-encoder call (the same masks;"
        " refused for a dynamic-int8 image encoder, whose scales would span the cameras); pair it with"
        " --queue-delay-us, or closed-loop cameras rarely arrive together",
    )
    p.add_argument("--threads", type=int, help="ONNX Runtime threads per graph (default: ONNX Runtime's)")
    p.add_argument("--device", default="cpu", help="cpu or cuda:N")
    p.add_argument("--backend", default="auto", help="auto, onnxruntime or tensorrt")
    p.add_argument("--queue-delay-us", type=int, default=0, help="how long Triton waits to batch cameras")


def model_options(a) -> dict:
    return dict(
        max_cameras=a.max_cameras,
        idle_timeout_s=a.idle_timeout,
        kv_policy=a.kv_policy,
        llm_every=a.llm_every,
        batch_llm=a.batch_llm,
        workers=a.workers,
        batch_images=a.batch_images,
        threads=a.threads,
        device=a.device,
        backend=a.backend,
        queue_delay_us=a.queue_delay_us,
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m serving.repository",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2],
    )
    p.add_argument("engine_dir", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--name", default=MODEL_NAME)
    add_model_options(p)
    a = p.parse_args(argv)
    try:
        model = write_repository(a.engine_dir, a.out, name=a.name, **model_options(a))
    except (ValueError, OSError) as e:
        print(f"serving.repository: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {model / 'config.pbtxt'} and {model / '1' / 'model.py'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
