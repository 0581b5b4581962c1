"""Every logged value of the first steps of each training stage of the default recipe, bit for bit.

A restructuring of the training code must not change a single number it computes: the values in
tests/data/train_fingerprint.<CPU vendor>.json were written from the tree before such a change, and
tests/test_train_fingerprint.py recomputes them. The run is the v5 recipe (`--recipe
glus-tiny-v5`: shape small4, --locate, the pointer, the grounding mix, stage 3 ...) with
STEPS optimisation steps per stage, each stage's phase switches moved inside those steps
(stage 1b's single-frame steps, stage 1c's pointer phase, stage 1's memory bank, stage 2's mask
warm-up, SAM2 freeze and [SEG] distillation), smaller batches, and one thread. Each stage's
history as train_log.json logs it (every key but the wall time `t`) is stored with float.hex,
plus a SHA-256 of the saved weights (after stage 3).

The last bits of float arithmetic depend on the CPU's kernels (an Intel Xeon and an AMD EPYC VM
give losses 1e-7 apart from the same code), so the values are stored per CPU vendor, each file
written from a tree whose training code matches the others'.

    python -m tests.train_fingerprint --write   (only when the numbers are meant to change, with a reason)
    python -m tests.train_fingerprint           (compute and print, compare nothing)
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path


def cpu_vendor() -> str:
    """/proc/cpuinfo's vendor_id (GenuineIntel, AuthenticAMD, ...), else the machine type."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("vendor_id"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine() or "unknown"


FINGERPRINT = Path(__file__).resolve().parent / "data" / f"train_fingerprint.{cpu_vendor()}.json"
RECIPE = "glus-tiny-v5"
STEPS = 3
# stage → train_log.json's key of its history
STAGES = {
    "0 encoder": "encoder_history",
    "0b clip": "clip_history",
    "1 sam2": "sam_history",
    "1b grounding": "ground_history",
    "1c motion": "motion_history",
    "2 glus": "history",
    "3 finetune": "finetune_history",
}
UNTIMED = {"t"}  # wall-clock seconds: the one logged value that is not reproducible


def config():
    """The recipe's config with STEPS steps per stage and small batches."""
    from training.train import parse_args

    _, cfg = parse_args(["--out", "unused", "--recipe", RECIPE])
    return replace(
        cfg,
        threads=1,
        ckpt_every=0,
        warmup=1,
        frames_min=8,
        frames_max=8,
        exprs=3,
        sam_exprs=3,
        encoder_steps=STEPS,
        clip_steps=STEPS,
        sam_steps=STEPS,
        sam_memory_from=1,
        ground_steps=STEPS,
        ground_single_steps=1,
        ground_batch=4,
        ground_videos=2,
        ground_mix_batch=4,
        motion_steps=STEPS,
        pointer_from=1,
        motion_batch=4,
        motion_videos=2,
        steps=STEPS,
        mask_warmup=1,
        freeze_sam_steps=2,
        point_until=STEPS,
        finetune_steps=STEPS,
    )


def encode(value):
    """float → float.hex (bit-exact, NaN and inf included); other JSON values as they are."""
    return float.hex(value) if isinstance(value, float) else value


def weights_sha256(glus_dir: Path) -> str:
    import hashlib

    from safetensors.numpy import load_file

    h = hashlib.sha256()
    state = load_file(str(glus_dir / "model.safetensors"))
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].tobytes())
    return h.hexdigest()


def compute() -> dict:
    from training.train import train

    cfg = config()
    with tempfile.TemporaryDirectory() as tmp:
        train(cfg, tmp, progress=False)
        log = json.loads((Path(tmp) / "train_log.json").read_text())
        digest = weights_sha256(Path(tmp) / "glus")
    stages = {}
    for stage, key in STAGES.items():
        stages[stage] = [{k: encode(v) for k, v in sorted(row.items()) if k not in UNTIMED} for row in log[key]]
    return {"recipe": RECIPE, "steps": STEPS, "stages": stages, "weights_sha256": digest}


def main(argv: list[str]) -> int:
    if argv not in ([], ["--write"]):
        print(__doc__)
        return 2
    data = compute()
    text = json.dumps(data, indent=1) + "\n"
    if argv == ["--write"]:
        FINGERPRINT.parent.mkdir(exist_ok=True)
        FINGERPRINT.write_text(text)
        print(f"wrote {FINGERPRINT}")
    else:
        print(text, end="")
    counts = ", ".join(f"{s} {len(rows)}" for s, rows in data["stages"].items())
    print(f"steps per stage: {counts}; weights {data['weights_sha256'][:12]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
