"""The public names are what the docs say: every exported name is documented, and every name
the docs import from taskhub exists (README.md and docs/*.md)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import taskhub
import taskhub.sync

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# `from taskhub import A, B`, `from taskhub.sync import (A, B)`, in code or in prose.
IMPORT = re.compile(r"from\s+(taskhub(?:\.\w+)*)\s+import\s+(\([^)]*\)|[^\n`]+)")


def docs() -> str:
    return "\n".join(page.read_text() for page in PAGES)


def imported_names(text: str) -> set[tuple[str, str]]:
    """Every (module, name) the text imports from a taskhub module."""
    found = set()
    for m in IMPORT.finditer(text):
        for item in m.group(2).strip().strip("()").split(","):
            name = item.split("#")[0].split(" as ")[0].strip()
            if name.isidentifier():
                found.add((m.group(1), name))
    return found


def test_every_name_in_taskhub_all_is_documented() -> None:
    text = docs()
    missing = [n for n in taskhub.__all__ if not re.search(rf"\b{re.escape(n)}\b", text)]
    assert not missing, f"taskhub.__all__ names no page of README.md or docs/ mentions: {missing}"


def test_every_name_in_taskhub_sync_all_is_documented() -> None:
    # Its names repeat the async client's (Client, Handle, ...), so a page must name them as
    # the blocking client's: `taskhub.sync.Task`, `sync.Watch` or `from taskhub.sync import`.
    text = docs()
    imported = {name for module, name in imported_names(text) if module == "taskhub.sync"}
    missing = [
        n
        for n in taskhub.sync.__all__
        if n not in imported and not re.search(rf"\bsync\.{re.escape(n)}\b", text)
    ]
    assert not missing, f"taskhub.sync.__all__ names the docs do not mention: {missing}"


def test_every_name_the_docs_import_from_taskhub_exists() -> None:
    wrong = []
    for module, name in sorted(imported_names(docs())):
        mod = importlib.import_module(module)
        exported = getattr(mod, "__all__", None)
        if module in ("taskhub", "taskhub.sync") and exported is not None:
            if name not in exported:
                wrong.append(f"{module}.{name} (not in __all__)")
        elif not hasattr(mod, name):
            wrong.append(f"{module}.{name}")
    assert not wrong, f"the docs import names that do not exist: {wrong}"


def test_the_docs_import_check_reads_the_forms_the_pages_use() -> None:
    text = (
        "from taskhub import Client, Server\n"
        "`from taskhub.sync import Client` offers the same\n"
        "from taskhub.sync import (\n    Client,\n    Task as T,  # a comment\n)\n"
    )
    assert imported_names(text) == {
        ("taskhub", "Client"),
        ("taskhub", "Server"),
        ("taskhub.sync", "Client"),
        ("taskhub.sync", "Task"),
    }
