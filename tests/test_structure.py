"""The package's shape: no import circles, rooms that import only downward, one home per name, chapter links.

Read from the source with ast (nothing imported), so a circle hidden in a function-level import counts too.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "kvgpt"
ALLOWED_CIRCLES = {("kvgpt.hf", "kvgpt.model")}  # model.from_hf/to_hf: two small public doors into hf.py


def modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def imports(name: str, path: Path, known: dict) -> set[str]:
    """kvgpt modules imported anywhere in `path` (module level or inside functions; not under TYPE_CHECKING)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found, tree = set(), ast.parse(path.read_text())
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                   for n in ast.walk(node)}  # annotations only: never imported at run time
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            found.update(t for t in [target] + [f"{target}.{a.name}" for a in node.names] if t in known)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in known)
    return {t for t in found if t != name and not name.startswith(t + ".") and t != "kvgpt"}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_no_import_circles():
    g = graph()
    circles = {tuple(sorted((a, b))) for a in g for b in g[a] if a in g.get(b, ())}
    assert circles <= ALLOWED_CIRCLES, f"import circles: {sorted(circles - ALLOWED_CIRCLES)}"


def test_longer_import_circles_are_absent_too():
    g, state, cycles = graph(), {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in g[node]:
            if state.get(nxt) == "open" and (min(node, nxt), max(node, nxt)) not in ALLOWED_CIRCLES:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for start in sorted(g):
        if start not in state:
            visit(start, [start])
    assert not cycles, f"import cycles: {cycles[:3]}"


def test_plots_never_import_the_benchmarks_and_the_package_never_imports_peers():
    g = graph()
    bad = [(a, b) for a in g for b in g[a] if a.startswith("kvgpt.plots") and b.startswith("kvgpt.benchmark")]
    assert not bad, f"plots/ must not import benchmark/: {bad}"
    peers = [p for p in PKG.rglob("*.py") if re.search(r"^\s*(from|import) peers\b", p.read_text(), re.M)]
    assert not peers, f"kvgpt must never import peers/: {peers}"


def test_every_module_stays_short():
    """One subject per module, readable in one sitting: nothing over 320 lines (DEVELOPERS.md lists those > 200)."""
    long = {str(p.relative_to(ROOT)): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > 320}
    assert not long, f"modules over 320 lines: {long}"


def test_the_chapter_map_covers_every_chapter_and_every_back_reference_exists():
    chapters = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]*_*.ipynb"))
    doc = ast.get_docstring(ast.parse((PKG / "__init__.py").read_text()))
    missing = [c for c in chapters if f"({c.split('_')[0]})" not in doc]
    assert not missing, f"kvgpt/__init__.py's chapter map misses {missing}"
    refs = defaultdict(list)
    for path in PKG.rglob("*.py"):
        for ref in re.findall(r"notebooks/([0-9][0-9][a-z]?_[a-z0-9_]+)\.ipynb", path.read_text()):
            refs[ref].append(path.name)
    dangling = {r: files for r, files in refs.items() if r not in chapters}
    assert not dangling, f"'Introduced in' notebooks that do not exist: {dangling}"


def test_one_name_one_meaning():
    """No top-level name is defined in two package modules (two meanings under one name), except each command
    module's `main` and benchmark/__init__'s lazy door to suite.run_suite (the same function)."""
    allowed = {"main", "run_suite"}
    defs = defaultdict(list)
    for path in PKG.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                defs[node.name].append(path.name)
            elif isinstance(node, ast.Assign):
                defs.update({t.id: defs[t.id] + [path.name] for t in node.targets if isinstance(t, ast.Name)})
    twice = {name: files for name, files in defs.items() if len(files) > 1 and name not in allowed | {"__all__"}}
    assert not twice, f"names defined in two modules: {twice}"
