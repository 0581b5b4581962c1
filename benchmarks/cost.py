"""Cost against the limit: achieved GFLOP/s per stage, and that as a share of the measured peak."""

from __future__ import annotations


def cost_rows(stage_flops: dict[str, float], stages: dict[str, dict], peak_gflops: float) -> list[dict]:
    """One row per timed stage whose FLOPs are known (stages[key]["flop_key"] into stage_flops)."""
    rows = []
    for key, s in stages.items():
        flops = stage_flops.get(s.get("flop_key"))
        if not flops or not s.get("median_ms"):
            continue  # memory_attention M=0 is an add: no FLOPs to speak of
        gflops = flops / (s["median_ms"] / 1000.0) / 1e9
        rows.append(
            {
                "key": key,
                "stage": s["stage"],
                "precision": s["precision"],
                "flops": flops,
                "median_ms": s["median_ms"],
                "gflops": gflops,
                "share_of_peak": gflops / peak_gflops,
            }
        )
    return rows
