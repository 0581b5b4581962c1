"""Latency, memory and J&F drift against the reference (`pytest benchmarks/`), and the studies
behind the README's figures (real shapes, export memory, quantization, the GPU check).

Top floor: may import everything below (training, export, reference, runtime, evalkit,
kernels); nothing imports it.
"""
