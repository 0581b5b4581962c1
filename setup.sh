#!/usr/bin/env bash
# One-command set-up on a fresh machine (CPU). Idempotent: re-running installs nothing new.
set -euo pipefail
cd "$(dirname "$0")"
python -m pip install --quiet --upgrade pip
# The CPU torch wheel lies on disk; a plain `torch` would pull a multi-GB CUDA build.
python -m pip install --quiet torch==2.13.0
# sam2's declared dependencies pull torchvision; we avoid the parts that need it.
python -m pip install --quiet --no-deps sam2==1.1.0
python -m pip install --quiet -e ".[export,eval,serve,test]"
# Triton Inference Server for serving/: the wheel bundles the tritonserver binary and its python
# backend; --no-deps because it declares numpy<2 (the server runs the project's own Python).
python -m pip install --quiet --no-deps nvidia-pytriton==0.7.0
echo "set-up done"
