"""The client's objects talk through public methods: no module of the client (nor the sync
client or the worker runtime built on it) reads another module's private names."""

from __future__ import annotations

import ast
from pathlib import Path

import taskhub

SRC = Path(taskhub.__file__).parent
MODULES = [
    *sorted((SRC / "client").glob("*.py")),
    SRC / "sync.py",
    *sorted(SRC.glob("worker*.py")),
]
# websockets' public API the client builds on (its sans-I/O layer, docs/decisions.md "The
# client's WebSocket is sans-I/O"): nothing else of websockets, and no private name of it.
WEBSOCKETS_PUBLIC = {
    "websockets.client",
    "websockets.exceptions",
    "websockets.frames",
    "websockets.http11",
    "websockets.protocol",
    "websockets.uri",
}


def _own_names(tree: ast.AST) -> set[str]:
    """Names a module defines itself: its functions, classes, globals, attributes it sets on
    ``self`` and strings (``__slots__``)."""
    own: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            own.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            own.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                own.add(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            own.add(node.value)
    return own


def _foreign_private_reads(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    own = _own_names(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not node.attr.startswith("_"):
            continue
        if node.attr.startswith("__") or node.attr in own:
            continue
        if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
            continue
        found.append(f"{path.relative_to(SRC)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_client_module_reads_another_modules_private_names() -> None:
    found = [hit for path in MODULES for hit in _foreign_private_reads(path)]
    assert found == [], "\n".join(found)


def test_the_client_uses_only_websockets_public_api() -> None:
    found = []
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("websockets"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                if node.module not in WEBSOCKETS_PUBLIC or private:
                    found.append(f"{path.relative_to(SRC)}:{node.lineno}: {ast.unparse(node)}")
            elif isinstance(node, ast.Import):
                found.extend(
                    f"{path.relative_to(SRC)}:{node.lineno}: {ast.unparse(node)}"
                    for a in node.names
                    if a.name.startswith("websockets")
                )
    assert found == [], "\n".join(found)
