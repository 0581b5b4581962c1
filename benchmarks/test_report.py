"""The results file and its markdown: merging runs, tabulating, the report CLI (no models needed)."""

from __future__ import annotations

import json

import numpy as np

from . import drift, report
from .results import Results
from .timing import speed_table

MACHINE = {
    "hostname": "box",
    "cpu": "Test CPU",
    "cores": 2,
    "isa": ["avx2"],
    "memory_gb": 8,
    "python": "3.11",
    "torch": "x",
    "torch_threads": 2,
    "onnxruntime": "y",
}


def e2e_entry(speedup: float) -> dict:
    times = {"reference": [2.0, 2.0, 2.0], "runtime fp32": [2.0 / speedup] * 3}
    rng = np.random.default_rng(0)
    masks = [rng.random((8, 8)) > 0.5 for _ in range(3)]
    segs = [rng.standard_normal(4) for _ in range(3)]
    return {
        "frames": 3,
        "size": [8, 8],
        "repeats": 3,
        "variants": speed_table(times, 3, "reference"),
        "drift": {"runtime fp32": drift.compare(masks, segs, masks, segs, masks)},
        "achieved_gflops": {"reference": 1.0, "runtime fp32": 2.0},
        "processes": {
            "reference": {"peak_rss_bytes": 2**30, "imports_torch": True},
            "runtime fp32": {"peak_rss_bytes": 2**29, "imports_torch": False},
        },
    }


def test_results_merge_by_model_and_tabulate(tmp_path, capsys):
    first = Results(MACHINE, "box-test-cpu-2c", "default")
    first.put("end_to_end", "tiny", e2e_entry(2.0))
    first.put("end_to_end", "medium", e2e_entry(3.0))
    path = first.write(tmp_path, {"wall_s": 1.0})

    second = Results(MACHINE, "box-test-cpu-2c", "default")
    second.put("end_to_end", "tiny", e2e_entry(4.0))  # a later run measuring the tiny model only
    assert second.write(tmp_path, {"wall_s": 2.0}) == path

    data = json.loads(path.read_text())
    assert data["end_to_end"]["tiny"]["variants"]["runtime fp32"]["speedup"] == 4.0
    assert data["end_to_end"]["medium"]["variants"]["runtime fp32"]["speedup"] == 3.0
    assert len(data["runs"]) == 2 and data["machine"]["slug"] == "box-test-cpu-2c"
    md = path.with_suffix(".md").read_text()
    assert "**4.00x**" in md and "**3.00x**" in md and "box-test-cpu-2c" in md
    assert "cannot tabulate" not in md

    assert report.main([str(path)]) == 0
    assert capsys.readouterr().out == md


def test_report_survives_a_section_it_cannot_read():
    d = {"machine": {"slug": "m", "cpu": "c", "cores": 1}, "end_to_end": {"tiny": {"machine": "m"}}}
    assert "e2e: cannot tabulate" in report.to_markdown(d)
