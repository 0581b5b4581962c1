"""One end-to-end variant in a process of its own, driven over stdin/stdout.

Why a process each: alone in its process each variant runs as it would deployed (the runtime's
process never imports torch, two thread pools never share one), the parent only tells it when
to run, and its peak RSS is its own. Thread pools wait without spinning: benchmarks/threads.py.

    python -m benchmarks.worker FRAMES.npy EXPRESSION OUT.npz reference GLUS_DIR CLIP_DIR
    python -m benchmarks.worker FRAMES.npy EXPRESSION OUT.npz engine ENGINE_DIR

Commands on stdin, one JSON line back each: "run [exact|incremental] [LLM_EVERY]" -> {"seconds": ...,
"llm_rate": ...} (LLM_EVERY: k or auto, the engine's llm_every; the reference ignores it);
"quit" -> writes the last masks and [SEG] embeddings per policy to OUT.npz and answers
{"peak_rss_bytes": ..., "imports_torch": ...}.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


class Worker:
    """The parent's handle on one worker process."""

    def __init__(self, frames_path: Path, expression: str, out: Path, *kind: str, cwd: Path):
        self.out = out
        cmd = [sys.executable, "-m", "benchmarks.worker", str(frames_path), expression, str(out), *kind]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd
        )

    def _ask(self, line: str) -> dict:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        if not reply:
            raise RuntimeError(f"worker died: {self.proc.stderr.read()[-3000:]}")
        return json.loads(reply)

    def wait_ready(self) -> None:
        self._ask("ping")

    def run(self, policy: str = "exact", llm_every="1") -> float:
        return self.run_info(policy, llm_every)["seconds"]

    def run_info(self, policy: str = "exact", llm_every="1") -> dict:
        return self._ask(f"run {policy} {llm_every}")

    def finish(self) -> tuple[dict, dict]:
        """(its final report, its outputs {policy: (masks, segs)})."""
        report = self._ask("quit")
        self.proc.wait(timeout=60)
        data = np.load(self.out)
        outs = {
            k.removesuffix("_masks"): (list(data[k]), list(data[k.replace("_masks", "_segs")]))
            for k in data.files
            if k.endswith("_masks")
        }
        return report, outs

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()


def _segmenter(kind: list[str], expression: str):
    """policy -> (masks, segs) for the frames given."""
    if kind[0] == "reference":
        import reference

        ref = reference.load(kind[1], kind[2])

        def run(frames, policy, llm_every):
            r = reference.segment_video(ref, frames, expression)
            return r.masks, [f.seg_embedding for f in r.frames], 1.0

        return run
    from runtime import GlusEngine

    engine = GlusEngine.load(kind[1])  # spin=False: benchmarks/threads.py

    def run(frames, policy, llm_every):
        every = llm_every if llm_every == "auto" else int(llm_every)
        r = engine.segment_video(frames, [expression], kv_policy=policy, llm_every=every)[0]
        return r.masks, [s.seg_embedding for s in r.steps], sum(s.llm_ran for s in r.steps) / len(r.steps)

    return run


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    frames_path, expression, out, *kind = argv
    frames = list(np.load(frames_path))
    run = _segmenter(kind, expression)
    last: dict = {}
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "ping":
            print(json.dumps({"ok": True}), flush=True)
        elif cmd[0] == "run":
            policy = cmd[1] if len(cmd) > 1 else "exact"
            every = cmd[2] if len(cmd) > 2 else "1"
            t = time.perf_counter()
            masks, segs, rate = run(frames, policy, every)
            seconds = time.perf_counter() - t
            if every == "1":  # the outputs compared with the reference: GLUS's own loop
                last[policy] = (masks, segs)
            print(json.dumps({"seconds": seconds, "llm_rate": rate}), flush=True)
        elif cmd[0] == "quit":
            from .machine import peak_rss_bytes

            arrays = {}
            for policy, (masks, segs) in last.items():
                arrays[f"{policy}_masks"] = np.stack(masks)
                arrays[f"{policy}_segs"] = np.stack([np.asarray(s, np.float32) for s in segs])
            np.savez(out, **arrays)
            print(json.dumps({"peak_rss_bytes": peak_rss_bytes(), "imports_torch": "torch" in sys.modules}), flush=True)
            return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
