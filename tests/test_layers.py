"""The layer order of docs/architecture.md, enforced: every module of src/ has a layer, no import runs up
a layer, and no modules import each other in a circle.

Imports are read from the source (all of them: top-level, inside functions, under TYPE_CHECKING). An
import of ``a.b.c`` also runs the package ``__init__`` of ``a.b``, so those count as imported too: a
package whose ``__init__`` pulls in a higher layer makes every import of its submodules climb.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
PACKAGE = "triflow3d"

# Imports allowed to run up a layer until the work that removes them is merged: (importer, imported)
# module names. Keep it empty when nothing is pending; every entry needs its reason and its issue.
KNOWN_EXCEPTIONS: set[tuple[str, str]] = set()


def layer_spec() -> list[tuple[int, str, list[str]]]:
    """(number, name, module prefixes) from the ```layers block of docs/architecture.md."""
    text = (REPO / "docs" / "architecture.md").read_text()
    block = re.search(r"```layers\n(.*?)```", text, re.S)
    assert block, "docs/architecture.md has no ```layers block"
    spec = []
    for line in block.group(1).splitlines():
        if line.strip():
            head, _, mods = line.partition(":")
            number, _, name = head.strip().partition(" ")
            spec.append((int(number), name, mods.split()))
    return spec


def modules() -> dict[str, Path]:
    out = {}
    for f in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(f.relative_to(SRC).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Project modules ``name`` imports (``from a import b`` means module ``a.b`` when that exists)."""
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            if base == PACKAGE or base.startswith(PACKAGE + "."):
                out |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == PACKAGE}
    return out - {name}


def packages_of(name: str) -> list[str]:
    """``a.b.c`` -> [``a``, ``a.b``]: the package __init__s an import of it runs."""
    parts = name.split(".")
    return [".".join(parts[:k]) for k in range(1, len(parts))]


def layer_of(name: str, spec) -> tuple[int, str] | None:
    rel = name[len(PACKAGE) + 1 :] if name != PACKAGE else "__init__"
    best = None
    for number, layer, prefixes in spec:
        for p in prefixes:
            if (rel == p or rel.startswith(p + ".")) and (best is None or len(p) > len(best[2])):
                best = (number, layer, p)
    return None if best is None else best[:2]


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: imports(m, f, known) for m, f in known.items()}


def test_every_module_has_a_documented_layer(graph):
    spec = layer_spec()
    assert [n for n, _, _ in spec] == list(range(len(spec))), "layers are numbered 0, 1, 2, ..."
    missing = sorted(m for m in graph if layer_of(m, spec) is None)
    assert not missing, f"place these modules in docs/architecture.md's layers block: {missing}"


def test_no_import_runs_up_a_layer(graph):
    spec = layer_spec()
    upward = []
    for src, targets in graph.items():
        mine = layer_of(src, spec)
        for tgt in targets:
            for t in [tgt, *packages_of(tgt)]:
                if t in graph and t not in packages_of(src) and t != src:
                    theirs = layer_of(t, spec)
                    if theirs[0] > mine[0] and (src, t) not in KNOWN_EXCEPTIONS:
                        upward.append(f"{src} ({mine[1]}) -> {t} ({theirs[1]})")
        for pkg in packages_of(src):  # a module's own package __init__ runs first
            if pkg in graph and layer_of(pkg, spec)[0] > mine[0]:
                upward.append(f"{src} ({mine[1]}) is inside {pkg} ({layer_of(pkg, spec)[1]})")
    assert not upward, "imports that run up a layer:\n" + "\n".join(sorted(set(upward)))


def test_known_exceptions_are_still_needed(graph):
    stale = [(s, t) for s, t in KNOWN_EXCEPTIONS if s not in graph or t not in graph[s]]
    assert not stale, f"remove these from KNOWN_EXCEPTIONS, the imports are gone: {stale}"


def test_no_import_circle(graph):
    """Strongly connected components of the import graph (Tarjan) all have one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not circles, f"modules importing each other in a circle: {circles}"


def test_the_checker_sees_upward_imports_and_circles(tmp_path):
    """The walk itself: a relative import, a function-level import and a package __init__ are read."""
    pkg = tmp_path / PACKAGE / "sub"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("from . import low\n")
    (pkg / "low.py").write_text("def f():\n    from triflow3d.sub import high\n")
    (pkg / "high.py").write_text("from .low import f\n")
    known = {
        f"{PACKAGE}.sub": pkg / "__init__.py",
        f"{PACKAGE}.sub.low": pkg / "low.py",
        f"{PACKAGE}.sub.high": pkg / "high.py",
    }
    got = {m: imports(m, p, known) for m, p in known.items()}
    assert got[f"{PACKAGE}.sub.low"] == {f"{PACKAGE}.sub.high"}
    assert got[f"{PACKAGE}.sub.high"] == {f"{PACKAGE}.sub.low"}
    assert got[f"{PACKAGE}.sub"] == {f"{PACKAGE}.sub.low"}
    assert packages_of(f"{PACKAGE}.sub.low") == [PACKAGE, f"{PACKAGE}.sub"]


def test_inference_reaches_no_training_code(graph):
    """Everything ``generate`` may import (lazily too) holds no training module: the pipeline reads model
    folders through models.model_folder, never through train/."""
    seen, todo = set(), [f"{PACKAGE}.generate_cli", f"{PACKAGE}.pipeline", f"{PACKAGE}.export"]
    while todo:
        m = todo.pop()
        if m in seen or m not in graph:
            continue
        seen.add(m)
        todo += [t for tgt in graph[m] for t in (tgt, *packages_of(tgt))]
    training = sorted(m for m in seen if m.startswith((f"{PACKAGE}.train", f"{PACKAGE}.recon.train")))
    assert not training, f"inference reaches training code: {training}"
