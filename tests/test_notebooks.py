"""Structural checks over every chapter notebook (notebooks/NN_*.ipynb): header, template, stored outputs,
one source of truth, and the package's "Introduced in notebooks/..." back-references. The solutions
notebooks (notebooks/solutions_*.ipynb) get the same hygiene checks, without the chapter template.

Only JSON and Python source are parsed (no kernel, no torch import), so this file runs in about a second;
nbval (`make test`) re-executes the notebooks and compares their outputs.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "kvgpt"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]*_*.ipynb"))
SOLUTIONS = sorted((ROOT / "notebooks").glob("solutions_*.ipynb"))  # not chapters: no header, same hygiene
BACKREF = re.compile(r"Introduced\s+in\s+(notebooks/\d\d[a-z]?_\w+\.ipynb)")
MAGIC_LINE = re.compile(r"^(\s*)[%!].*$", re.MULTILINE)  # IPython magics / shell lines are not Python


def _load_header_tags() -> tuple[str, str]:
    """The tags scripts/set_repo_url.py writes into the two header cells (one source for both)."""
    spec = importlib.util.spec_from_file_location("set_repo_url", ROOT / "scripts" / "set_repo_url.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.BADGE_TAG, module.INSTALL_TAG


BADGE_TAG, INSTALL_TAG = _load_header_tags()


def _package_sources() -> dict[str, ast.Module]:
    return {p.relative_to(ROOT).as_posix(): ast.parse(p.read_text(encoding="utf-8"))
            for p in sorted(PACKAGE.rglob("*.py"))}


SOURCES = _package_sources()


def _all_names() -> set[str]:
    """kvgpt.__all__, read from kvgpt/__init__.py without importing the package."""
    for node in SOURCES["kvgpt/__init__.py"].body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    raise AssertionError("kvgpt/__init__.py defines no __all__ list")


def _public_defs() -> dict[str, str]:
    """Every public top-level function and class of every kvgpt module -> the module that defines it."""
    found = {}
    for path, tree in SOURCES.items():
        for node in tree.body:
            is_def = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            if is_def and not node.name.startswith("_"):
                found.setdefault(node.name, path)
    return found


PROTECTED = {**{name: "kvgpt.__all__" for name in _all_names()}, **_public_defs()}


def _docstrings(tree: ast.Module):
    nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    for node in nodes:
        doc = ast.get_docstring(node, clean=False)
        if doc:
            yield getattr(node, "name", "<module>"), doc


def _backrefs() -> dict[str, list[str]]:
    """notebooks/NN_name.ipynb -> the package objects whose docstring says they are introduced there."""
    refs: dict[str, list[str]] = {}
    for path, tree in SOURCES.items():
        for name, doc in _docstrings(tree):
            for ref in BACKREF.findall(doc):
                refs.setdefault(ref, []).append(f"{path}:{name}")
    return refs


BACKREFS = _backrefs()


def _read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def _code_cells(nb: dict) -> list[tuple[int, dict]]:
    return [(i, c) for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"]


def _parse_cell(i: int, cell: dict) -> ast.Module:
    source = MAGIC_LINE.sub(r"\1pass", _source(cell))
    try:
        return ast.parse(source)
    except SyntaxError as e:
        pytest.fail(f"cell {i} is not valid Python: {e}")


def _assigned_names(target: ast.expr):
    if isinstance(target, ast.Name):
        yield target.id
    elif isinstance(target, (ast.Tuple, ast.List)):
        for element in target.elts:
            yield from _assigned_names(element)
    elif isinstance(target, ast.Starred):
        yield from _assigned_names(target.value)


def _top_level_definitions(tree: ast.Module):
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield node.name
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                yield from _assigned_names(target)
        elif isinstance(node, ast.AnnAssign):
            yield from _assigned_names(node.target)


notebook_params = pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
every_notebook = pytest.mark.parametrize("path", NOTEBOOKS + SOLUTIONS, ids=lambda p: p.name)


@every_notebook
def test_kernelspec_is_python3_and_no_widget_state(path):
    meta = _read(path)["metadata"]
    assert meta.get("kernelspec", {}).get("name") == "python3", f"{path.name}: kernelspec {meta.get('kernelspec')}"
    assert "widgets" not in meta, f"{path.name}: metadata.widgets breaks GitHub's renderer; re-run execute_notebooks.py"


@every_notebook
def test_language_info_is_what_the_kernel_reports(path):
    # stored as only {"name": "python"} (or "3.11" for "3.11.7"), JupyterLab rewrote it on opening: "dirty"
    info = _read(path)["metadata"].get("language_info", {})
    missing = [k for k in ("name", "version", "mimetype", "file_extension", "codemirror_mode", "pygments_lexer")
               if k not in info]
    assert not missing, f"{path.name}: language_info lacks {missing}; re-run scripts/execute_notebooks.py"
    assert re.fullmatch(r"\d+\.\d+\.\d+", str(info["version"])), (
        f"{path.name}: language_info.version {info['version']!r} is not the kernel's full version "
        "(Lab would rewrite it)")


@every_notebook
def test_outputs_stored_from_one_top_to_bottom_run(path):
    cells = _code_cells(_read(path))
    counts = [c.get("execution_count") for _, c in cells]
    unrun = [i for (i, _), n in zip(cells, counts) if n is None]
    assert not unrun, f"{path.name}: cells {unrun} have no execution_count (nbval cannot check them)"
    assert counts == sorted(counts) and len(set(counts)) == len(counts), (
        f"{path.name}: execution counts {counts} are not one top-to-bottom run; use scripts/execute_notebooks.py")
    assert any(c["outputs"] for _, c in cells), f"{path.name}: no stored outputs at all"


@every_notebook
def test_no_stored_errors(path):
    for i, cell in _code_cells(_read(path)):
        errors = [o for o in cell["outputs"] if o["output_type"] == "error"]
        if errors and "NBVAL_RAISES_EXCEPTION" not in _source(cell):
            pytest.fail(f"{path.name} cell {i} stored an error: {errors[0]['ename']}: {errors[0]['evalue']}")


@notebook_params
def test_colab_header_cells(path):
    cells = _read(path)["cells"]
    badge, install = cells[0], cells[1]
    assert badge["cell_type"] == "markdown" and BADGE_TAG in _source(badge), f"{path.name}: cell 0 is not the badge"
    assert install["cell_type"] == "code" and INSTALL_TAG in _source(install), f"{path.name}: cell 1 is not the install"
    extra = [i for i, c in enumerate(cells[2:], 2) if BADGE_TAG in _source(c) or INSTALL_TAG in _source(c)]
    assert not extra, f"{path.name}: header tags repeated in cells {extra}; run scripts/set_repo_url.py"


@notebook_params
def test_chapter_template_headings(path):
    cells = _read(path)["cells"]
    markdown = "\n".join(_source(c) for c in cells if c["cell_type"] == "markdown")
    headings = {line.strip() for line in markdown.splitlines() if line.startswith("#")}
    number = path.name.split("_")[0]  # "08b" for the optional 08b
    assert _source(cells[2]).startswith(f"# {number} · "), f"{path.name}: cell 2 should open with '# {number} · Title'"
    for heading in ("## Summary", "## Exercises"):
        assert heading in headings, f"{path.name}: missing the heading {heading!r}"


@every_notebook
def test_imports_kvgpt(path):
    nb = _read(path)
    for i, cell in _code_cells(nb):
        for node in ast.walk(_parse_cell(i, cell)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "kvgpt":
                return
            if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "kvgpt" for a in node.names):
                return
    pytest.fail(f"{path.name}: no code cell imports from kvgpt")


@every_notebook
def test_no_package_code_redefined(path):
    clashes = []
    for i, cell in _code_cells(_read(path)):
        for name in _top_level_definitions(_parse_cell(i, cell)):
            if name in PROTECTED:
                clashes.append(f"cell {i} defines {name!r} (from {PROTECTED[name]})")
    assert not clashes, (f"{path.name}: a chapter must show package code with show_source, never define a second "
                         "copy or shadow it: " + "; ".join(clashes))


def test_backreferences_were_found():
    assert BACKREFS, "no 'Introduced in notebooks/NN_name.ipynb' line in any kvgpt docstring"


@pytest.mark.parametrize("ref", sorted(BACKREFS), ids=lambda r: r.split("/")[-1])
def test_backreference_points_at_an_existing_notebook(ref):
    users = BACKREFS[ref]
    shown = ", ".join(users[:5]) + (f" and {len(users) - 5} more" if len(users) > 5 else "")
    assert (ROOT / ref).is_file(), f"{ref} does not exist but is named by {shown}"


def _text_outputs(cell: dict) -> str:
    parts = []
    for out in cell["outputs"]:
        text = out.get("text") or out.get("data", {}).get("text/plain", "")
        parts.append("".join(text) if isinstance(text, list) else text)
    return "".join(parts)


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_every_solution_ends_in_a_passing_check(path):
    # a solution starts at a markdown line "**N. ..." (the first of a chapter shares its cell with the chapter's
    # heading); its last code cell must assert its claim (so a reader's own wrong answer fails in their notebook
    # too), print True (and no False) beside it, and be checked by nbval (no NBVAL_IGNORE_OUTPUT)
    cells = _read(path)["cells"]
    starts = [i for i, c in enumerate(cells) if c["cell_type"] == "markdown" and re.search(r"^\*\*\d\. ", _source(c), re.M)]
    assert len(starts) >= 3, f"{path.name}: found {len(starts)} solutions"
    for i in starts:
        block = []
        for cell in cells[i + 1:]:
            if cell["cell_type"] != "code":
                break
            block.append(cell)
        assert block, f"{path.name}: solution at cell {i} has no code"
        last, shown = block[-1], _text_outputs(block[-1])
        assert "NBVAL_IGNORE_OUTPUT" not in _source(last), f"{path.name}: solution at cell {i} is not checked"
        assert "True" in shown and "False" not in shown, f"{path.name}: solution at cell {i} prints {shown[-200:]!r}"
        tree = _parse_cell(i, last)
        assert any(isinstance(node, ast.Assert) for node in tree.body), (
            f"{path.name}: the last cell of the solution at cell {i} has no top-level assert beside its printed check")


def test_solutions_cover_every_chapter_with_exercises():
    chapters = {_chapter_number(p) for p in NOTEBOOKS if "## Exercises" in
                "\n".join(_source(c) for c in _read(p)["cells"] if c["cell_type"] == "markdown")}
    covered = set()
    for path in SOLUTIONS:
        first, last = (int(n) for n in re.search(r"solutions_(\d\d)-(\d\d)", path.name).groups())
        covered |= set(range(first, last + 1))
    assert chapters <= covered, f"chapters with exercises but no solutions notebook: {sorted(chapters - covered)}"


def _figure_functions() -> set[str]:
    """Names of the package's functions that build and return a matplotlib figure (`return fig`)."""
    names = set()
    for tree in SOURCES.values():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and any(
                    isinstance(r, ast.Return) and isinstance(r.value, ast.Name) and r.value.id == "fig"
                    for r in ast.walk(node)):
                names.add(node.name)
    return names


FIGURE_FUNCTIONS = _figure_functions()
PYPLOT_DRAWS = {"show", "subplots", "figure", "imshow", "plot", "bar", "barh", "scatter", "hist"}


def _draws_figure(tree: ast.Module) -> bool:
    """A cell draws a figure if it calls a package plot function, or pyplot (plt.show(), plt.subplots(), ...)."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in FIGURE_FUNCTIONS:
            return True
        if isinstance(func, ast.Attribute) and (func.attr in FIGURE_FUNCTIONS or (
                isinstance(func.value, ast.Name) and func.value.id == "plt" and func.attr in PYPLOT_DRAWS)):
            return True
    return False


def test_figure_functions_were_found():
    assert {"plot_row_gantt", "plot_speedup", "kv_cache_fill"} <= FIGURE_FUNCTIONS, sorted(FIGURE_FUNCTIONS)


@every_notebook
def test_every_figure_is_stored_as_an_image(path):
    # nbval's sanitizer turns "<Figure size 900x372 with 1 Axes>" into a pattern, so a figure stored as that text
    # (no PNG: a bare matplotlib Figure with no inline formatter) passes nbval; this test does not let it.
    missing, as_text = [], []
    for i, cell in _code_cells(_read(path)):
        outputs = cell["outputs"]
        if _draws_figure(_parse_cell(i, cell)) and not any("image/png" in o.get("data", {}) for o in outputs):
            missing.append(i)
        for o in outputs:
            text = o.get("text") or o.get("data", {}).get("text/plain", "")
            text = "".join(text) if isinstance(text, list) else text
            if "<Figure size" in text and "image/png" not in o.get("data", {}):
                as_text.append(i)
    assert not missing and not as_text, (
        f"{path.name}: cells {missing} draw a figure but store no image/png; cells {as_text} store a figure as "
        "'<Figure size ...>' text. Return a pyplot figure and call plt.show(), then re-run scripts/execute_notebooks.py")


def _chapter_number(path: Path) -> int:
    return int(re.match(r"\d\d", path.name).group())


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_next_links_the_next_chapter(path):
    # the closing "**Next:**" of chapter NN (08b included) links chapter NN+1 whenever that chapter exists
    following = [p for p in NOTEBOOKS if _chapter_number(p) == _chapter_number(path) + 1 and p.name[2] == "_"]
    if not following:
        pytest.skip(f"no chapter {_chapter_number(path) + 1:02d} in this repository")
    cells = [_source(c) for c in _read(path)["cells"] if c["cell_type"] == "markdown" and "**Next:**" in _source(c)]
    assert cells, f"{path.name}: no '**Next:**' paragraph"
    assert f"]({following[0].name})" in cells[-1], f"{path.name}: its Next does not link {following[0].name}"
