"""The few lines a benchmark run prints at its end (the full tables are in the .md file)."""

from __future__ import annotations

from .flops import format_split
from .report import _models


def headline(d: dict, slug: str) -> list[str]:
    lines = []
    for name in _models(d.get("flops")):
        lines.append("FLOPs " + format_split(name, d["flops"][name]))
    for name in _models(d.get("end_to_end")):
        e = d["end_to_end"][name]
        v = e["variants"]
        ups = ", ".join(
            f"{k.removeprefix('runtime ')} {t['speedup']:.2f}x ({t['per_frame_ms']:,.0f} ms/frame)"
            for k, t in v.items()
            if k != "reference"
        )
        lines.append(
            f"end to end [{name} @ {slug}, {e['frames']} frames x {e['repeats']} interleaved]: "
            f"reference {v['reference']['per_frame_ms']:,.0f} ms/frame; speed-up {ups}"
        )
        for k, dr in e.get("drift", {}).items():
            lines.append(
                f"  drift {k.removeprefix('runtime ')} vs reference: mask IoU min {dr['iou_min']:.4f}, "
                f"[SEG] cos min {dr['seg_cosine_min']:.5f}, J&F vs reference {dr['vs_reference']['JF']:.4f}"
            )
    for name in _models(d.get("drift")):
        s = d["drift"][name]
        for k, r in s["variants"].items():
            x = r["summary"]
            lines.append(
                f"J&F drift [{name}, synthetic set, {x['expressions']} expressions] {k}: "
                f"ΔJ&F vs reference {x['delta_JF_vs_reference']:+.4f}, J&F vs reference masks "
                f"{x['JF_vs_reference']:.4f}, frames IoU>=0.999 {x['frac_frames_iou_ge_0.999']:.1%}, "
                f"[SEG] cos min/mean {x['seg_cosine_min']:.5f}/{x['seg_cosine_mean']:.5f}"
            )
        st = s.get("streaming")
        if st:
            lines.append(
                f"streaming [{name}] J&F vs GT {st['JF_vs_gt']:.4f} (offline {st['offline_JF_vs_gt']:.4f}), "
                f"vs offline masks {st['JF_vs_offline']:.4f}"
            )
    if d.get("drift") or d.get("end_to_end"):
        lines.append(
            "(random models: J&F against the GT is near meaningless; drift against the reference is the figure)"
        )
    for name in _models(d.get("memory")):
        s = d["memory"][name].get("stream")
        if s:
            lines.append(
                f"stream memory [{name}, {s['frames']} frames]: RSS slope "
                f"{s['rss_slope_kib_per_frame']:+.2f} KiB/frame, state <= {s['state_bytes_max'] / 1024:,.0f} KiB"
            )
    return lines
