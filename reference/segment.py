"""Segment a video with the PyTorch reference GLUS: one PNG mask per frame.

    python -m reference.segment --checkpoint DIR --clip DIR --video FRAMES_DIR_OR_FILE \
        --expression TEXT --out DIR [--key-frame K] [--no-memory]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m reference.segment", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="GLUS checkpoint directory")
    p.add_argument("--clip", default=None, help="CLIP ViT directory (default: config.json's vision_tower)")
    p.add_argument("--video", required=True, help="a folder of frames (jpg/png) or a video file")
    p.add_argument("--expression", required=True)
    p.add_argument("--out", required=True, help="output directory for <frame>.png masks")
    p.add_argument("--key-frame", type=int, default=None)
    p.add_argument("--no-memory", action="store_true", help="GLUS's no-memory-bank ablation")
    p.add_argument(
        "--load-fuser-gamma",
        action="store_true",
        help="load the memory encoder's layer scale (GLUS's own loader drops it)",
    )
    a = p.parse_args(argv)

    from PIL import Image

    import reference
    from reference.errors import CheckpointError
    from runtime.video import VideoSourceError, read_frames

    try:
        names, frames = read_frames(a.video)
        ref = reference.load(a.checkpoint, a.clip, load_fuser_gamma=a.load_fuser_gamma)
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        result = reference.segment_video(
            ref, frames, a.expression, key_frame=a.key_frame, use_memory=not a.no_memory, progress=True
        )
        dt = time.perf_counter() - t0
    except (CheckpointError, VideoSourceError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, mask in zip(names, result.masks):
        Image.fromarray(mask.astype(np.uint8) * 255).save(out / f"{name}.png")
    n_seg = sum(r.is_seg for r in result.frames)
    print(
        f"{len(frames)} masks written to {out} ({n_seg} frames answered [SEG]); "
        f"{dt / len(frames) * 1000:.0f} ms per frame"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
