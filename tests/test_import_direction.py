"""Imports point one way, down to the torch-free core: every module's imports, at the top and
inside functions, parsed from the source (nothing is imported to find them).

Floors, from the bottom (a module may import its own floor and the floors below, never above,
and no chain of imports may come back to where it started):
  0  kernels/, evalkit/                      numpy kernels, J&F and dataset formats
  1  the runtime's torch-free core           GLUS's rules, errors, checks, manifest, paths, resize
  2  the runtime                             GlusEngine, tracking, streaming, the CLI
  3  reference/, serving/                    GLUS in PyTorch; the runtime's streams on Triton
  4  export/, training/                      checkpoint → engine; training the default model
  5  benchmarks/
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("kernels", "evalkit", "runtime", "reference", "serving", "export", "training", "benchmarks")
RUNTIME_CORE = {
    "runtime.rules",
    "runtime.errors",
    "runtime.checks",
    "runtime.manifest",
    "runtime.paths",
    "runtime.preprocess",
    "runtime.tokenizer",
}
FLOOR_OF_PACKAGE = {
    "kernels": 0,
    "evalkit": 0,
    "runtime": 2,
    "reference": 3,
    "serving": 3,
    "export": 4,
    "training": 4,
    "benchmarks": 5,
}


def floor(module: str) -> int:
    if module in RUNTIME_CORE:
        return 1
    return FLOOR_OF_PACKAGE[module.split(".")[0]]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")) if (REPO / pkg).is_dir() else []:
            if path.name.startswith("test_"):  # benchmarks/test_*.py: pytest files, top floor
                continue
            out[module_name(path)] = path
    return out


def imports_of(name: str, path: Path, known: set[str]) -> list[tuple[str, int]]:
    """(imported project module, line) for every import statement, wherever it sits."""
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if is_pkg else name.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from pkg import sub` imports the module pkg.sub when there is one
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # `import a.b.c` of a module: the nearest known one
                t = t.rpartition(".")[0]
            if t and t.split(".")[0] in PACKAGES and t != name:
                found.append((t, node.lineno))
    return found


def graph() -> dict[str, list[tuple[str, int]]]:
    mods = all_modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def test_no_import_points_up():
    bad = [
        f"{a} (floor {floor(a)}) imports {b} (floor {floor(b)}) at line {line}"
        for a, edges in graph().items()
        for b, line in edges
        if floor(b) > floor(a)
    ]
    assert not bad, "imports that point up:\n" + "\n".join(bad)


def test_no_import_cycle():
    g = {a: sorted({b for b, _ in edges}) for a, edges in graph().items()}
    state, stack, cycles = {}, [], []

    def visit(a):
        state[a] = "open"
        stack.append(a)
        for b in g.get(a, []):
            if state.get(b) == "open":
                cycles.append(" -> ".join(stack[stack.index(b) :] + [b]))
            elif b not in state:
                visit(b)
        stack.pop()
        state[a] = "done"

    for a in sorted(g):
        if a not in state:
            visit(a)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_parser_sees_what_it_should():
    """The checker itself: relative imports, `from pkg import module`, imports in functions."""
    g = graph()
    assert ("runtime.rules",) == tuple(sorted({b for b, _ in g["runtime.tracking"] if b == "runtime.rules"}))
    assert any(b == "reference.loader" for b, _ in g["reference"])  # in reference.__getattr__


@pytest.mark.parametrize("module", ["runtime", "runtime.engine", "runtime.stream", "runtime.segment"])
def test_runtime_pulls_no_torch(module):
    code = (
        f"import sys, {module}; bad = [m for m in ('torch', 'onnx', 'transformers', 'reference', 'export')"
        " if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
