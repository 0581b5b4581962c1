"""benchmarks/gpu_check: it skips cleanly without CUDA, and its whole code path runs on a CPU.

The check itself needs the GPU machine; here the same phases run at the tiny shape on the CPU
(--device cpu), so that what the GPU machine runs has run before: the reference built on the
device from make_tiny's config and CLIP, its loop and component timings, and the engine
built and compared against the CPU engine (on the CPU the two are the same engine: masks equal).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu_check

ROOT = Path(__file__).resolve().parents[1]
NO_CUDA = not gpu_check.cuda_status()["torch_cuda"]


@pytest.mark.skipif(not NO_CUDA, reason="a CUDA GPU is present: the check would run")
def test_script_skips_cleanly_without_cuda(tmp_path):
    r = subprocess.run(
        ["bash", str(ROOT / "benchmarks/gpu_check.sh")],
        capture_output=True,
        check=False,
        text=True,
        env={"OUT": str(tmp_path), "PATH": "/usr/bin:/bin:" + str(Path(sys.executable).parent)},
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "skipped" in r.stdout
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.skipif(not NO_CUDA, reason="a CUDA GPU is present: the check would run")
def test_main_without_cuda_writes_nothing(tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path)]) == 0
    assert "no CUDA GPU" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_are_refused(tmp_path):
    for argv in (["--frames", "1"], ["--engine-frames", "0"], ["--llm-layers", "0"]):
        with pytest.raises(SystemExit) as e:
            gpu_check.main(argv + ["--out", str(tmp_path)])
        assert e.value.code == 2


def test_cpu_smoke_run_measures_every_phase(tmp_path):
    out = tmp_path / "results"
    rc = gpu_check.main(
        [
            "--device",
            "cpu",
            "--shape",
            "tiny",
            "--engine-shape",
            "tiny",
            "--frames",
            "4",
            "--engine-frames",
            "3",
            "--out",
            str(out),
            "--work",
            str(tmp_path / "work"),
        ]
    )
    assert rc == 0
    (path,) = out.glob("gpu-check-*.json")
    doc = json.loads(path.read_text())
    ref = doc["phases"]["reference"]
    assert "error" not in ref, ref.get("traceback")
    assert ref["frames"] == 4 and ref["per_frame_s"] > 0 and ref["device"] == "cpu"
    assert ref["seg_frames"] == 4 and ref["masks_nonempty"] > 0  # the [SEG] branch (SAM2) ran
    assert set(ref["components_s"]) >= {
        "clip_8_images",
        "llm_prefill",
        "sam_image_encoder",
        "memory_attention_decoder_encoder",
    }
    run = doc["phases"]["runtime"]
    assert "error" not in run, run.get("traceback")
    fp32 = run["engines"]["fp32"]
    assert fp32["iou_min"] == 1.0 and fp32["seg_cosine_min"] > 0.99999  # CPU against CPU
    assert "GPU" in run["engines"]["fp16"]["skipped"]  # fp16 engines are GPU-only
    assert run["engines"]["int8"]["seg_cosine_min"] > 0.99
    stacked = fp32["stacked_image_encoder"]
    assert [r["frames"] for r in stacked] == [1, 2, 4, 8] and all(r["stacked_s"] > 0 for r in stacked)
    assert all(r["rows_max_abs"] == 0.0 for r in stacked)  # fp32 on a CPU: bit for bit
    assert doc["machine"]["cores"] >= 1 and "cuda" in doc
