"""PyTorch reference GLUS: the yardstick every engine figure is measured against.

`reference.rules` and `reference.errors` are torch-free (the runtime imports the rules); the
model, loader and inference loop import torch only when first used.
"""

from .errors import CheckpointError

__all__ = ["CheckpointError", "load", "segment_video", "GlusReference", "VideoResult"]


def __getattr__(name):  # lazy: `import reference.rules` must not pull torch in
    if name in ("load", "GlusReference"):
        from . import loader

        return getattr(loader, name)
    if name in ("segment_video", "VideoResult", "FrameResult"):
        from . import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'reference' has no attribute {name!r}")
