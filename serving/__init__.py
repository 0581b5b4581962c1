"""Serving GlusEngine streams on NVIDIA Triton Inference Server: many cameras, one server.

serving.repository writes the Triton model repository (a python-backend model, one runtime
Stream per sequence), serving.server starts tritonserver on it, serving.client sends sources
through it. serving.cameras is the per-camera state the model keeps, without Triton.
docs/serving.md tells the whole story.
"""
