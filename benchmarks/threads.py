"""Thread pools that wait without spinning, for both sides of every comparison.

On a machine shared with other jobs, spin-waiting thread pools are ruinous: while another process
holds one of the two cores, each parallel op waits for a descheduled peer. Measured here: the
reference's SAM2 decoder 725 ms with libgomp's default spinning vs 16 ms passive; the runtime's
tiny 8-frame video 2.35 s with ONNX Runtime's default spinning vs 0.58 s without. So torch runs
with OMP_WAIT_POLICY=PASSIVE (benchmarks/conftest.py, before torch loads) and every engine's
sessions with session.intra_op.allow_spinning=0 (GlusEngine.load's default, spin=False).
On an idle machine either costs little.
"""

from __future__ import annotations
