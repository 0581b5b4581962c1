"""PyTorch reference GLUS: the yardstick every engine figure is measured against.

It stands on the runtime (GLUS's rules are runtime.rules; frame reading and the numpy
preprocessing are the runtime's too), evalkit and kernels, and imports nothing above it:
export, training and the benchmarks import it. `reference.errors` is torch-free; the model,
loader and inference loop import torch only when first used, so that `import reference` for its error types stays light.
"""

from .errors import CheckpointError

__all__ = ["CheckpointError", "GlusReference", "VideoResult", "load", "segment_video"]


def __getattr__(name):  # lazy: `from reference import CheckpointError` must not pull torch in
    if name in ("load", "GlusReference"):
        from . import loader

        return getattr(loader, name)
    if name in ("segment_video", "VideoResult", "FrameResult"):
        from . import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'reference' has no attribute {name!r}")
