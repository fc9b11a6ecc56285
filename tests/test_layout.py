"""The import graph: the runtime (hypersr.engine) imports neither training/benchmarks nor the integrations;
the integrations do not import training; no module imports itself back through others. Every import
counts, those inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "vsplugin", "ffmpeg_filter", "batch", "training", "presets", "cli")


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
    assert "hypersr.training.train" in g["hypersr.cli.train"]  # a function-level import


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


def private_imports() -> set[tuple[str, str, str]]:
    """(importer, module, name) for every `from hypersr.X import _name` that reaches into another package."""
    known = modules()
    found = set()
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = package.split(".")
                target = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            elif (node.module or "").startswith("hypersr"):
                target = node.module
            else:
                continue
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    if target.split(".")[:2] != name.split(".")[:2]:
                        found.add((name, target, alias.name))
    return found


def test_no_private_name_is_imported_across_packages():
    assert not private_imports()


def test_the_private_import_check_can_fail(tmp_path, monkeypatch):
    """The check above finds such an import when there is one (cluster.py once imported vsplugin._frame_array)."""
    (tmp_path / "batch").mkdir()
    (tmp_path / "vsplugin").mkdir()
    (tmp_path / "batch" / "x.py").write_text("def f():\n    from ..vsplugin import _frame_array\n")
    (tmp_path / "vsplugin" / "__init__.py").write_text("def _frame_array(): pass\n")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    assert private_imports() == {("hypersr.batch.x", "hypersr.vsplugin", "_frame_array")}
