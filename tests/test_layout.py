"""The import graph: the runtime (hypersr.engine) imports neither training/benchmarks nor the integrations;
the integrations do not import training; no module imports itself back through others. Every import
counts, those inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "vsplugin", "ffmpeg_filter", "batch", "training", "presets")


def module_name(path: Path) -> str:
    parts = ["hypersr", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    found = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    found.update({module_name(p): p for p in ROOT.glob("*.py")})
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The hypersr modules that `path` imports (a name imported from a package counts as its module when
    there is one, else as the package)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("hypersr")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").startswith("hypersr"):
                target = node.module
            else:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in known else target)
    return out - {name}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, set(known)) for name, path in known.items()}


def internal(g: dict[str, set[str]]) -> dict[str, set[str]]:
    return {a: {b for b in deps if b in g} for a, deps in g.items()}


def test_the_graph_is_read():
    g = graph()
    assert "hypersr.engine.preset_registry" in g["hypersr.engine.runtime"]
    assert "hypersr.engine.networks.registry" in g["hypersr.engine.networks.fast"]
    assert "hypersr.training.demo" in g["hypersr.cli"]  # a function-level import


def test_every_import_names_a_module_that_exists():
    g = graph()
    assert not {(a, b) for a, deps in g.items() for b in deps if b not in g}


def test_runtime_imports_no_training_and_no_integration():
    forbidden = ("hypersr.training", "hypersr.vsplugin", "hypersr.ffmpeg_filter", "hypersr.batch", "hypersr.cli")
    bad = {(a, b) for a, deps in graph().items() if a.startswith("hypersr.engine") for b in deps if b.startswith(forbidden)}
    assert not bad


def test_integrations_import_no_training():
    integrations = ("hypersr.vsplugin", "hypersr.ffmpeg_filter", "hypersr.batch")
    bad = {(a, b) for a, deps in graph().items() if a.startswith(integrations) for b in deps if b.startswith(("hypersr.training", "hypersr.cli"))}
    assert not bad


def test_no_import_cycle():
    g = internal(graph())
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in g:
        if v not in index:
            visit(v)
    assert not cycles
