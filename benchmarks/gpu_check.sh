#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): run from the repository root on the GPU machine.
#   bash benchmarks/gpu_check.sh [extra gpu_check options]
# Skips cleanly (exit 0) where torch sees no CUDA GPU. No network is needed.
#
# onnxruntime-gpu (for the runtime phase) cannot be downloaded there; carry its wheel in
# pieces under shared/ort-gpu/ (split -b 60M onnxruntime_gpu-*.whl shared/ort-gpu/<wheel name>.part-)
# over warm calls: this script joins the pieces and installs the wheel into a private target
# (--no-deps; the CUDA/cuDNN libraries come from CUDA torch's nvidia-* packages).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results}"

if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: no CUDA GPU visible to torch: skipped (run this on the GPU machine)"
    exit 0
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

# What the project needs beyond the GPU machine's torch and onnxruntime, if absent: no network
# there, so from the wheels benchmarks/gpu_wheels.sh fetched here and the call carried
# (carry=[".gpu-wheels"]), into a private target; the project itself is imported from the tree.
if ! python -c "import sam2, transformers, hydra, onnx, onnxscript, sentencepiece" 2>/dev/null; then
    if [ -d .gpu-wheels ]; then
        python -m pip install --quiet --no-deps --no-index --target /tmp/glus-deps .gpu-wheels/*.whl
        # torch's own dependencies stay the GPU machine's: drop our copy of any it already has.
        for m in typing_extensions filelock fsspec packaging yaml; do
            if python -c "import $m" 2>/dev/null; then
                rm -rf /tmp/glus-deps/"$m" /tmp/glus-deps/"$m".py /tmp/glus-deps/"$m"-*.dist-info
            fi
        done
        export PYTHONPATH="/tmp/glus-deps${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "gpu_check: transformers/sam2/onnx missing and no .gpu-wheels/ carried" \
             "(bash benchmarks/gpu_wheels.sh here, then carry .gpu-wheels)" >&2
        exit 3
    fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

PIECES=$(ls shared/ort-gpu/*.part-* 2>/dev/null | head -1 || true)
if [ -n "$PIECES" ]; then
    WHEEL_NAME=$(basename "$PIECES" | sed 's/\.part-.*//')
    TARGET=/tmp/ort-gpu
    if [ ! -d "$TARGET/onnxruntime" ]; then
        cat shared/ort-gpu/"$WHEEL_NAME".part-* > /tmp/"$WHEEL_NAME"
        pip install --no-deps --no-index --target "$TARGET" /tmp/"$WHEEL_NAME" >/dev/null
    fi
    export PYTHONPATH="$TARGET${PYTHONPATH:+:$PYTHONPATH}"
    # onnxruntime-gpu finds CUDA and cuDNN in torch's nvidia-* wheels once they are on the path.
    NV=$(python -c "import os, nvidia; print(':'.join(os.path.join(p, d, 'lib') for p in nvidia.__path__ for d in os.listdir(p) if os.path.isdir(os.path.join(p, d, 'lib'))))" 2>/dev/null || true)
    export LD_LIBRARY_PATH="${NV}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
python -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"

exec timeout 470 python -m benchmarks.gpu_check --out "$OUT" "$@"
