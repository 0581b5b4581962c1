"""Checkpoint → engine directory: `python -m export.build --precision fp32|int8|fp16` traces each
of GLUS's six graphs from the PyTorch reference to ONNX, checks it against PyTorch, quantizes
(int8), and writes the manifest the runtime reads.

Imports the reference (the model it traces), the runtime's core (manifest schema, rules, paths)
and kernels; only benchmarks and tests import it.
"""
