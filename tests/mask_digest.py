"""The default engine's masks on a fixed synthetic set, as one digest per way of running it.

A restructuring of the runtime, the reference or the export must not change a single mask: the
digests in tests/data/mask_digests.json were written from the tree before such a change, and
tests/test_mask_digest.py recomputes them. Each case runs the engine built from the shipped model
(models/glus-tiny) on 3 videos of evalkit.synth (seed MASK_SEED, never used for training or
held-out data), every expression of each:

- offline, fp32 and int8: segment_video as the CLI runs it;
- offline fp32 with key_frames="auto" (self-refined key frames: the forward-backward passes);
- offline fp32 with kv_policy="incremental";
- streaming fp32 (Stream with its causal context), and with fixed context_frames.

    python -m tests.mask_digest --write     (only when masks are meant to change, with a reason)
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

DIGESTS = Path(__file__).resolve().parent / "data" / "mask_digests.json"
MASK_SEED = 90909
VIDEOS = 3
FRAMES = 10
SIZE = (128, 128)


def videos():
    from evalkit import synth

    out = []
    for i in range(VIDEOS):
        v = synth.make_video(MASK_SEED, i, FRAMES, SIZE)
        out.append((v.annotation.images, [e.text for e in v.expressions]))
    return out


def digest(masks_per_video) -> dict:
    """sha256 over every mask's bits in order, and the mask areas (to see what moved)."""
    h = hashlib.sha256()
    areas = []
    for per_expr in masks_per_video:
        for masks in per_expr:
            for m in masks:
                m = np.asarray(m, bool)
                h.update(np.array(m.shape, np.int64).tobytes())
                h.update(np.packbits(m).tobytes())
                areas.append(int(m.sum()))
    return {"sha256": h.hexdigest(), "areas": areas}


def offline(engine, **kw):
    res = []
    for frames, texts in videos():
        out = engine.segment_video(frames, texts, **kw)
        res.append([r.masks for r in out])
    return res


def streaming(engine, fixed_context: bool):
    res = []
    for frames, texts in videos():
        ctx = {"context_frames": [frames[i] for i in (0, 3, 6, 9)]} if fixed_context else {}
        s = engine.stream(texts, **ctx)
        per = {t: [] for t in texts}
        for f in frames:
            for t, m in s.push(f).items():
                per[t].append(m)
        res.append([per[t] for t in texts])
    return res


def compute(engine_dirs: dict[str, Path]) -> dict:
    from runtime import GlusEngine

    fp32 = GlusEngine.load(engine_dirs["fp32"])
    int8 = GlusEngine.load(engine_dirs["int8"])
    cases = {
        "offline fp32": lambda: offline(fp32),
        "offline int8": lambda: offline(int8),
        "offline fp32 kf=auto": lambda: offline(fp32, key_frames="auto"),
        "offline fp32 incremental": lambda: offline(fp32, kv_policy="incremental"),
        "stream fp32": lambda: streaming(fp32, fixed_context=False),
        "stream fp32 fixed context": lambda: streaming(fp32, fixed_context=True),
    }
    return {name: digest(fn()) for name, fn in cases.items()}


def build_engines(out: Path) -> dict[str, Path]:
    from export.build import build
    from export.default_model import SHIPPED

    dirs = {}
    for precision in ("fp32", "int8"):
        dirs[precision] = out / f"engine-{precision}"
        build(SHIPPED / "glus", SHIPPED / "clip", precision=precision, out=dirs[precision], progress=False)
    return dirs


def main(argv: list[str]) -> int:
    import tempfile

    if argv != ["--write"]:
        print(__doc__)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        data = compute(build_engines(Path(tmp)))
    DIGESTS.parent.mkdir(exist_ok=True)
    DIGESTS.write_text(
        json.dumps({"seed": MASK_SEED, "videos": VIDEOS, "frames": FRAMES, "size": list(SIZE), "cases": data}, indent=1)
        + "\n"
    )
    short = ", ".join(f"{k} {v['sha256'][:12]}" for k, v in data.items())
    print(f"wrote {DIGESTS}: {short}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
