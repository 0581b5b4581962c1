"""GLUS runtime: an engine directory + frames + sentences → masks. Never imports torch.

    from runtime import GlusEngine
    engine = GlusEngine.load("engine_dir")
    results = engine.segment_video(frames, ["the red circle moving left"])
"""

from .errors import BackendError, EngineDirError, GlusError, InputError

__all__ = ["GlusEngine", "GlusError", "EngineDirError", "BackendError", "InputError"]


def __getattr__(name):  # keep `import runtime` light (no onnxruntime until an engine is loaded)
    if name == "GlusEngine":
        from .engine import GlusEngine

        return GlusEngine
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")
