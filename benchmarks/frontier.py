"""Held-out J&F against training time, one point per training recipe: the picture behind the
trade-off between issue 8's two bars (J&F >= 0.80, training well under an hour on 2 cores).

    python -m benchmarks.frontier            # benchmarks/results/training-frontier.{json → svg}

The points are measured elsewhere (the held-out J&F by `benchmarks.heldout` or `--eval`, the
minutes from each run's train_log.json) and listed in the JSON; this only draws them, as a
plain SVG (no plotting library is a dependency of the project).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from xml.sax.saxutils import escape

RESULTS = Path(__file__).parent / "results"
W, H, PAD_L, PAD_R, PAD_T, PAD_B = 640, 360, 60, 20, 30, 50


def render(points: list[dict], bar_jf: float, bar_minutes: float, title: str) -> str:
    """SVG text: each point (label, minutes, jf) as a dot with its label; the two bars as dashed
    lines, the corner where both hold shaded."""
    if not points:
        raise ValueError("no points to draw")
    xmax = max(60.0, max(p["minutes"] for p in points)) * 1.1
    lo = min(min(p["jf"] for p in points), bar_jf) - 0.05
    hi = max(max(p["jf"] for p in points), bar_jf) + 0.03

    def x(m: float) -> float:
        return PAD_L + (W - PAD_L - PAD_R) * m / xmax

    def y(j: float) -> float:
        return PAD_T + (H - PAD_T - PAD_B) * (hi - j) / (hi - lo)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
        f'<rect width="{W}" height="{H}" fill="white"/>',
        f'<text x="{W / 2}" y="18" text-anchor="middle" font-size="14">{escape(title)}</text>',
        # the corner both bars ask for
        f'<rect x="{x(0):.1f}" y="{y(hi):.1f}" width="{x(bar_minutes) - x(0):.1f}" '
        f'height="{y(bar_jf) - y(hi):.1f}" fill="#d8f0d8"/>',
        f'<line x1="{x(0):.1f}" y1="{y(bar_jf):.1f}" x2="{x(xmax):.1f}" y2="{y(bar_jf):.1f}" '
        'stroke="#393" stroke-dasharray="5,4"/>',
        f'<line x1="{x(bar_minutes):.1f}" y1="{y(lo):.1f}" x2="{x(bar_minutes):.1f}" y2="{y(hi):.1f}" '
        'stroke="#393" stroke-dasharray="5,4"/>',
        f'<text x="{x(0) + 4:.1f}" y="{y(bar_jf) + 14:.1f}" fill="#393">J&amp;F {bar_jf}</text>',
        f'<text x="{x(bar_minutes) + 4:.1f}" y="{y(lo) - 6:.1f}" fill="#393">{bar_minutes:g} min</text>',
        # axes
        f'<line x1="{x(0)}" y1="{y(lo):.1f}" x2="{x(xmax):.1f}" y2="{y(lo):.1f}" stroke="black"/>',
        f'<line x1="{x(0)}" y1="{y(lo):.1f}" x2="{x(0)}" y2="{y(hi):.1f}" stroke="black"/>',
        f'<text x="{(x(0) + x(xmax)) / 2:.1f}" y="{H - 10}" text-anchor="middle">'
        "training wall time, minutes (2 CPU threads)</text>",
        f'<text x="14" y="{(y(lo) + y(hi)) / 2:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {(y(lo) + y(hi)) / 2:.1f})">held-out J&amp;F</text>',
    ]
    step = 30 if xmax <= 300 else 60
    for m in range(0, int(xmax) + 1, step):
        out.append(f'<text x="{x(m):.1f}" y="{y(lo) + 16:.1f}" text-anchor="middle">{m}</text>')
    j = round(lo, 1)
    while j <= hi:
        if j >= lo:
            out.append(f'<text x="{x(0) - 6:.1f}" y="{y(j) + 4:.1f}" text-anchor="end">{j:.2f}</text>')
        j = round(j + 0.05, 2)
    for p in points:
        px, py = x(p["minutes"]), y(p["jf"])
        out.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="5" fill="#246"/>')
        left = px > (PAD_L + W - PAD_R) / 2  # labels of the right half go left of their dot
        anchor = ' text-anchor="end"' if left else ""
        out.append(
            f'<text x="{px - 8 if left else px + 8:.1f}" y="{py + 4:.1f}"{anchor}>'
            f"{escape(p['label'])} ({p['jf']:.3f})</text>"
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.frontier", description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=RESULTS / "training-frontier.json")
    p.add_argument("--out", type=Path, default=None, help="the SVG (default: --data with .svg)")
    a = p.parse_args(argv)
    d = json.loads(a.data.read_text())
    out = a.out or a.data.with_suffix(".svg")
    out.write_text(render(d["points"], d["bar_jf"], d["bar_minutes"], d["title"]))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
