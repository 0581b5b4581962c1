"""GLUS runtime: an engine directory + frames + sentences → masks. Never imports torch.

    from runtime import GlusEngine
    engine = GlusEngine.load("engine_dir")
    results = engine.segment_video(frames, ["the red circle moving left"])

Two floors. At the bottom, beside kernels/ and evalkit/, its torch-free, graph-free core:
GLUS's rules (rules), error types (errors), input checks (checks), the manifest schema
(manifest), default paths (paths), resize and normalisation (preprocess), the tokenizer. Above
it the engine: stages (one per graph), tracking (one expression's state and its one-frame
step), engine (GlusEngine: offline passes), stream (a camera), the CLI (segment). It imports
only kernels and evalkit; the reference, export, training and benchmarks stand on it.
"""

from .errors import BackendError, EngineDirError, GlusError, InputError, InvariantError

__all__ = ["BackendError", "EngineDirError", "GlusEngine", "GlusError", "InputError", "InvariantError"]


def __getattr__(name):  # keep `import runtime` light (no onnxruntime until an engine is loaded)
    if name == "GlusEngine":
        from .engine import GlusEngine

        return GlusEngine
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")
