"""Thread pools that wait without spinning, for both sides of every comparison.

On a machine shared with other jobs, spin-waiting thread pools are ruinous: while another process
holds one of the two cores, each parallel op waits for a descheduled peer. Measured here: the
reference's SAM2 decoder 725 ms with libgomp's default spinning vs 16 ms passive; the runtime's
tiny 8-frame video 2.35 s with ONNX Runtime's default spinning vs 0.58 s without. So torch runs
with OMP_WAIT_POLICY=PASSIVE (benchmarks/conftest.py, before torch loads) and every engine's
sessions with session.intra_op.allow_spinning=0 (here). On an idle machine either costs little.
"""

from __future__ import annotations

SPIN_CONFIG = "session.intra_op.allow_spinning"


def no_spin(engine):
    """Re-open the engine's ONNX Runtime CPU sessions with intra-op spinning off; returns it.

    GlusEngine.load exposes no session options (a runtime feature worth adding); the sessions
    are rebuilt from the same graph files with the same providers and thread counts."""
    import onnxruntime as ort

    for name, g in engine.graphs.items():
        session = getattr(g, "session", None)
        if session is None or session.get_providers() != ["CPUExecutionProvider"]:
            continue  # TensorRT / CUDA sessions: leave them as they are
        old = session.get_session_options()
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = old.intra_op_num_threads
        opts.inter_op_num_threads = old.inter_op_num_threads
        opts.add_session_config_entry(SPIN_CONFIG, "0")
        g.session = ort.InferenceSession(str(engine.manifest.graph_path(name)), opts,
                                         providers=["CPUExecutionProvider"])
    return engine
