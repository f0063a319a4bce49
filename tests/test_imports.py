"""Imports between the package's parts: no circle among them at module level, and any first import works."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import infini_llama

ROOT = Path(infini_llama.__file__).parent
# module name -> its file
FILES = {
    ".".join(("infini_llama", *path.relative_to(ROOT).with_suffix("").parts)).removesuffix(".__init__"): path
    for path in ROOT.rglob("*.py")
    if path.name != "__main__.py"  # importing it runs the command line
}
MODULES = sorted(FILES)


def _part(module: str) -> str | None:
    """The part of the package `module` belongs to ("eval" for infini_llama.eval.passkey), None for the root."""
    parts = module.split(".")
    return parts[1] if parts[0] == "infini_llama" and len(parts) > 1 else None


def _module_level_imports(module: str) -> set[str]:
    """Modules `module` imports when it is imported: its top-level statements, not function bodies and not
    `if TYPE_CHECKING:` blocks."""
    package = module if FILES[module].name == "__init__.py" else module.rpartition(".")[0]
    found, todo = set(), list(ast.parse(FILES[module].read_text()).body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in FILES}
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo += node.orelse
        elif isinstance(node, ast.ClassDef | ast.If | ast.Try | ast.With | ast.ExceptHandler):
            todo += [child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt | ast.excepthandler)]
    return found


def test_the_parts_of_the_package_import_each_other_without_a_circle():
    edges: dict[str, set[str]] = {}
    for module in MODULES:
        here = _part(module)
        for imported in _module_level_imports(module):
            there = _part(imported)
            if here and there and there != here:
                edges.setdefault(here, set()).add(there)
    assert {"eval", "study", "train"} <= set(edges), "no import between the parts found: the scan is broken"

    def circle(part: str, path: tuple[str, ...]) -> tuple[str, ...] | None:
        if part in path:
            return (*path[path.index(part) :], part)
        return next(filter(None, (circle(nxt, (*path, part)) for nxt in sorted(edges.get(part, ())))), None)

    found = next(filter(None, (circle(part, ()) for part in sorted(edges))), None)
    assert found is None, f"module-level imports go round a circle: {' -> '.join(found)}"


# The first import decides the order every other module runs in: start from the top of the layers, from the part
# whose modules import another part's (train.passkey: eval's prompts) and from the bottom.
FIRST = ["infini_llama.study", "infini_llama.train.passkey", "infini_llama.eval", "infini_llama.data"]


@pytest.mark.parametrize("first", FIRST, ids=lambda name: name.removeprefix("infini_llama."))
def test_every_module_imports_whichever_comes_first(first):
    code = f"import importlib\nfor name in {[first, *MODULES]!r}:\n    importlib.import_module(name)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
