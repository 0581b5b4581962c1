"""Training the default model: a small GLUS trained from scratch on synthetic referring videos,
stage by stage (`python -m training.train --out DIR --recipe glus-tiny-v5 --eval`;
models/glus-tiny/TRAINING.md). Like the `sam2` package's training/, it stands apart from the
model it trains: it builds on reference/ (the PyTorch GLUS, its loader, checkpoint layout and
inference), runtime/ (GLUS's rules, paths), evalkit/ (synthetic videos, J&F) and kernels/, and
nothing imports it but benchmarks/ and tests/ — the model, the export and the engine never
need the training code.
"""
