"""Kernels no exporter hands us: antialiased bilinear resize and RoPE key rotation in numpy
(the runtime's), and SAM2's RoPE attention written so that it exports to ONNX (export's).

Bottom floor: imports nothing of the project; everything above may import it.
"""
