#!/usr/bin/env bash
# Wheels the GPU check needs beyond the GPU machine's own torch (+ CPU onnxruntime), fetched here
# (package registries are reachable from this machine, nothing is from the GPU machine) into
# .gpu-wheels/ (git-ignored, ~40 MB), at the versions this machine runs, to be carried:
#   bash benchmarks/gpu_wheels.sh [PYTHON_VERSION]       # e.g. 3.11 (default: this python's)
#   run(command="bash benchmarks/gpu_check.sh", carry=[".gpu-wheels"])
# gpu_check.sh installs from it (--no-index --no-deps) what the GPU machine lacks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-$(python -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')}"
PINS=$(python - <<'PY'
from importlib.metadata import PackageNotFoundError, version
names = """transformers huggingface_hub safetensors sentencepiece tokenizers hydra-core omegaconf
portalocker onnx onnxscript onnx_ir ml_dtypes regex pyyaml tqdm filelock fsspec packaging
typing_extensions hf-xet httpx httpcore anyio idna certifi h11 sniffio shellingham typer click rich
markdown-it-py mdurl pygments annotated-doc""".split()
out = []
for n in names:
    try:
        out.append(f"{n}=={version(n)}")
    except PackageNotFoundError:
        pass
print(" ".join(out))
PY
)
rm -rf .gpu-wheels && mkdir -p .gpu-wheels
python -m pip download --quiet --dest .gpu-wheels --only-binary=:all: --python-version "$PY" \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    --no-deps $PINS 2>&1 | grep -v WARNING || true
# Published as source only: built here (pure Python).
python -m pip wheel --quiet --no-deps --wheel-dir .gpu-wheels antlr4-python3-runtime==4.9.3 iopath==0.1.10 sam2==1.1.0 \
    2>&1 | grep -v WARNING || true
ls .gpu-wheels | wc -l && du -sh .gpu-wheels
