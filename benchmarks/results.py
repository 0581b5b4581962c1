"""Collect the figures of one benchmark run and write them to benchmarks/results/.

One file per day and machine: <YYYY-MM-DD>-<machine>.json plus the .md table made from it by
benchmarks.report. A later run on the same day and machine replaces the sections (per model)
it measured and keeps the others, so `pytest benchmarks/ -k medium` refreshes only the medium
figures; every section records when and in which run mode it was measured.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

SCHEMA = 1
RESULTS_DIR = Path(__file__).resolve().parent / "results"
# Sections keyed by model name: merged model by model into an existing file.
MODEL_SECTIONS = ("models", "flops", "stages", "cost", "end_to_end", "drift", "memory")


class Results:
    def __init__(self, machine: dict, slug: str, mode: str):
        self.started = time.time()
        self.date = time.strftime("%Y-%m-%d", time.localtime(self.started))
        self.machine = dict(machine, slug=slug)
        self.mode = mode
        self.data: dict = {}
        self.run_info: dict = {}  # load average, settings: written with the run's entry
        self.written: Path | None = None

    def put(self, section: str, model: str | None, value: dict) -> dict:
        """Record `value` under section[model] (or section), stamped with machine, model, time."""
        stamp = {"machine": self.machine["slug"], "mode": self.mode, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if model is not None:
            stamp["model"] = model
        value = {**stamp, **value}
        if model is None:
            self.data[section] = value
        else:
            self.data.setdefault(section, {})[model] = value
        return value

    def entry(self, section: str, model: str) -> dict:
        """section[model], created (stamped) if absent: for figures added one test at a time."""
        got = self.get(section, model)
        return got if got is not None else self.put(section, model, {})

    def get(self, section: str, model: str | None = None):
        s = self.data.get(section)
        return s if model is None or s is None else s.get(model)

    @property
    def empty(self) -> bool:
        return not self.data

    def path(self, directory: Path = RESULTS_DIR) -> Path:
        return Path(directory) / f"{self.date}-{self.machine['slug']}.json"

    def write(self, directory: Path = RESULTS_DIR, run_info: dict | None = None) -> Path:
        """Merge into the day's file for this machine and write it with its markdown table."""
        from .report import to_markdown

        path = self.path(directory)
        old = {}
        if path.is_file():
            try:
                old = json.loads(path.read_text())
            except json.JSONDecodeError:
                old = {}
        merged = {k: v for k, v in old.items() if k not in ("schema", "machine")}
        for section, value in self.data.items():
            if section in MODEL_SECTIONS and isinstance(merged.get(section), dict):
                merged[section] = {**merged[section], **value}
            else:
                merged[section] = value
        run = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.started)),
            "mode": self.mode,
            "sections": sorted(self.data),
            **(run_info or {}),
        }
        merged["runs"] = (old.get("runs") or [])[-9:] + [run]
        out = {"schema": SCHEMA, "machine": self.machine, **merged}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(out, indent=1, default=_plain))
        os.replace(tmp, path)
        path.with_suffix(".md").write_text(to_markdown(out))
        return path


def _plain(x):
    """numpy scalars and arrays to JSON."""
    if hasattr(x, "tolist"):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")
