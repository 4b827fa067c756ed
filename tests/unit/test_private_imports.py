"""No module of src/taskhub imports another module's private name (a leading underscore).

A private name is its module's own business; a neighbour that needs it gets a public name or
a public method (STYLE.md, "Neighbours talk through public methods"). Read with ``ast``, so
imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"

# Today's crossings, as (importing module, imported module, name). #18 removes these: the list
# may only shrink. A new crossing fails the test, and so does an entry no longer used (delete it).
ALLOWED: frozenset[tuple[str, str, str]] = frozenset()


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def module_name(path: Path) -> tuple[str, str]:
    """The module's dotted name, and the package its relative imports start from."""
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
        return ".".join(parts), ".".join(parts)
    return ".".join(parts), ".".join(parts[:-1])


def crossings(text: str, name: str, package: str) -> set[tuple[str, str, str]]:
    """Every private name module ``name`` imports from another module, or private module."""
    found: set[tuple[str, str, str]] = set()
    for node in ast.walk(ast.parse(text, name)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if not source.startswith("taskhub"):
                continue
            for alias in node.names:
                if private(alias.name):
                    found.add((name, source, alias.name))
            for part in source.split("."):
                if private(part):
                    found.add((name, source, part))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("taskhub"):
                    for part in alias.name.split("."):
                        if private(part):
                            found.add((name, alias.name, part))
    return found


def all_crossings() -> set[tuple[str, str, str]]:
    return {
        c
        for path in sorted((SRC / "taskhub").rglob("*.py"))
        for c in crossings(path.read_text(), *module_name(path))
    }


def test_no_new_private_name_crosses_a_module_boundary() -> None:
    new = sorted(all_crossings() - ALLOWED)
    assert not new, (
        "a module imports another module's private name; give it a public name instead:\n"
        + "\n".join(f"  {importer} imports {name} from {source}" for importer, source, name in new)
    )


def test_the_allow_list_only_shrinks() -> None:
    gone = sorted(ALLOWED - all_crossings())
    assert not gone, "no longer imported, delete from ALLOWED:\n" + "\n".join(
        f"  {entry}" for entry in gone
    )


def test_the_check_sees_relative_and_nested_imports() -> None:
    # The detector itself: a relative import inside a function, a private module, a dunder.
    text = (
        "from taskhub import __version__\n"
        "def f():\n"
        "    from .http_deps import _responses, Caller\n"
        "    from ..lifecycle.state import _size\n"
        "    import taskhub._x.y\n"
    )
    assert crossings(text, "taskhub.hub.probe", "taskhub.hub") == {
        ("taskhub.hub.probe", "taskhub.hub.http_deps", "_responses"),
        ("taskhub.hub.probe", "taskhub.lifecycle.state", "_size"),
        ("taskhub.hub.probe", "taskhub._x.y", "_x"),
    }
