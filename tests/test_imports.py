"""The package's plan, held by a scan of its imports (every import statement, also inside functions):
no import circle among recogfast's modules, and no import from a lower floor up to a higher one, so a
newcomer can read it bottom-up (README "Layout")."""

import ast
import os

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recogfast")

# Floors, bottom up: a module imports only from its own floor or below.
FLOORS = {
    "recogfast.tuned": 0, "recogfast.dispatch": 0, "recogfast.distributed": 0,
    "recogfast": 1, "recogfast.ops": 1,  # the package loads the extension and registers the ops
    "recogfast.nn": 2, "recogfast.losses": 2, "recogfast.metrics": 2,
    "recogfast.models": 3, "recogfast.data": 3,
    "recogfast.engine": 4, "recogfast.tasks": 4, "recogfast.info": 4,
    "recogfast.export": 5, "recogfast.report": 5, "recogfast.predict": 5, "recogfast.search": 5, "recogfast.viz": 5,
    "recogfast.demo": 6,
    "recogfast.cli": 7, "recogfast.__main__": 8,
}


def _modules() -> dict[str, str]:
    mods = {}
    for top, _, names in os.walk(ROOT):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(top, name)
                mod = os.path.relpath(path[:-3], os.path.dirname(ROOT)).replace(os.sep, ".")
                mods[mod[: -len(".__init__")] if mod.endswith(".__init__") else mod] = path
    return mods


def _edges(mods: dict[str, str]) -> dict[str, set[str]]:
    """module -> the recogfast modules it imports (``from pkg import sub`` counts as importing sub only)."""
    edges = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod if path.endswith("__init__.py") else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(open(path).read(), path)):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
                subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods]
                targets = subs if len(subs) == len(node.names) else [base] + subs
            else:
                continue
            edges[mod] |= {t for t in targets if t in mods and t != mod}
    return edges


def _floor(mod: str) -> int:
    best = max((p for p in FLOORS if mod == p or mod.startswith(p + ".")), key=len)
    return FLOORS[best]


def test_every_module_has_a_floor():
    for mod in _modules():
        assert any(mod == p or mod.startswith(p + ".") for p in FLOORS if p != "recogfast") or mod == "recogfast", mod


def test_no_import_circle():
    edges = _edges(_modules())
    index, low, stack, on, circles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                on.discard(w)
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                circles.append(sorted(part))

    for v in edges:
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_no_import_from_a_lower_floor_up():
    edges = _edges(_modules())
    upward = sorted(f"{a} (floor {_floor(a)}) imports {b} (floor {_floor(b)})"
                    for a, bs in edges.items() for b in bs if _floor(b) > _floor(a))
    assert not upward, "\n".join(upward)


def test_the_cli_bottom_imports_nothing_of_the_package():
    edges = _edges(_modules())
    assert edges["recogfast.cli.errors"] == set()


def test_the_scan_sees_a_circle_and_an_upward_import(tmp_path, monkeypatch):
    """The scan itself: a planted circle and an upward import are found."""
    pkg = tmp_path / "recogfast"
    (pkg / "engine").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "engine" / "__init__.py").write_text("")
    (pkg / "engine" / "a.py").write_text("def f():\n    from recogfast.engine import b\n")
    (pkg / "engine" / "b.py").write_text("from recogfast.engine.a import f\nfrom recogfast.cli import main\n")
    (pkg / "cli.py").write_text("")
    monkeypatch.setattr(__import__(__name__), "ROOT", str(pkg))
    mods = _modules()
    edges = _edges(mods)
    assert edges["recogfast.engine.a"] == {"recogfast.engine.b"} and "recogfast.engine.a" in edges["recogfast.engine.b"]
    assert "recogfast.cli" in edges["recogfast.engine.b"] and _floor("recogfast.cli") > _floor("recogfast.engine.b")
