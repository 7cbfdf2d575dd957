"""Write the repository URL into every notebook's header (Colab badge + install cell) and the README.

The URL lives in one place, pyproject.toml's [project.urls] Repository. Usage:
    python scripts/set_repo_url.py              # re-apply the current URL (also adds missing headers)
    python scripts/set_repo_url.py owner/name   # change it, then re-apply (make colab-url REPO=owner/name)
The header is the notebook's first two cells: a Markdown badge cell and a code cell that installs kvgpt
only inside Colab (no -e, no torch pin: Colab keeps its own torch) and does nothing elsewhere.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
URL_LINE = re.compile(r'^Repository = "https://github\.com/([^"]+)"$', re.M)
BADGE_TAG = "<!-- kvgpt:colab-badge -->"
INSTALL_TAG = "# kvgpt:colab-install"


def repo() -> str:
    return URL_LINE.search(PYPROJECT.read_text()).group(1)


def colab_url(owner_name: str, path: str) -> str:
    return f"https://colab.research.google.com/github/{owner_name}/blob/main/{path}"


def badge_cell(owner_name: str, path: str):
    return nbformat.v4.new_markdown_cell(
        f'{BADGE_TAG}\n<a href="{colab_url(owner_name, path)}" target="_parent">'
        '<img src="https://colab.research.google.com/assets/colab-badge.svg" alt="Open In Colab"/></a>')


def install_cell(owner_name: str):
    return nbformat.v4.new_code_cell(
        f"# NBVAL_IGNORE_OUTPUT\n{INSTALL_TAG}: in Colab, install kvgpt from the repository (Colab's torch is kept);"
        " elsewhere, nothing to do.\n"
        "import sys\n\n"
        'if "google.colab" in sys.modules:\n'
        f'    %pip install -q "kvgpt[notebooks] @ git+https://github.com/{owner_name}"')


def apply(nb_path: Path, owner_name: str) -> None:
    nb = nbformat.read(nb_path, as_version=4)
    rel = nb_path.relative_to(ROOT).as_posix()
    cells = [c for c in nb.cells if BADGE_TAG not in c.source and INSTALL_TAG not in c.source]
    old = {c.cell_type: c for c in nb.cells if BADGE_TAG in c.source or INSTALL_TAG in c.source}
    badge, install = badge_cell(owner_name, rel), install_cell(owner_name)
    if "code" in old:  # keep the stored execution count and outputs; only the text changes
        old["code"].source, install = install.source, old["code"]
    nb.cells = [badge, install, *cells]
    nbformat.write(nb, nb_path)


def main(argv: list[str]) -> int:
    if argv:
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", argv[0]):
            print(f"set_repo_url: error: expected owner/name, got {argv[0]!r}", file=sys.stderr)
            return 2
        PYPROJECT.write_text(URL_LINE.sub(f'Repository = "https://github.com/{argv[0]}"', PYPROJECT.read_text()))
    owner_name = repo()
    for nb_path in sorted((ROOT / "notebooks").glob("[0-9][0-9]*_*.ipynb")):
        apply(nb_path, owner_name)
    readme = ROOT / "README.md"
    readme.write_text(re.sub(r"colab\.research\.google\.com/github/[\w.-]+/[\w.-]+/blob/",
                             f"colab.research.google.com/github/{owner_name}/blob/", readme.read_text()))
    print(f"repository: https://github.com/{owner_name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
