"""The house rules on size, read with ``ast`` over src/taskhub: a class is under 400 lines and a
function at most 60 (STYLE.md, "A class is one idea"; ruff's C901 holds complexity at 15).

A length is the lines from the ``def`` or ``class`` line to the last line of its body, its
docstring and comments included. A nested function or class is measured on its own as well as
inside its parent.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator

from tests.unit.test_private_imports import SRC, module_name

MAX_CLASS_LINES = 399  # "under 400"
MAX_FUNCTION_LINES = 60

# Today's offenders, as (module, qualified name). #18 splits them: the lists may only shrink. A
# new offender fails the test, and so does an entry that no longer offends (delete it).
ALLOWED_CLASSES: frozenset[tuple[str, str]] = frozenset()
ALLOWED_FUNCTIONS: frozenset[tuple[str, str]] = frozenset()


def definitions(tree: ast.AST) -> Iterator[tuple[str, ast.AST, int]]:
    """Every function and class with its qualified name (``Outer.method.inner``) and length."""

    def walk(node: ast.AST, prefix: str) -> Iterator[tuple[str, ast.AST, int]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                assert child.end_lineno is not None
                yield name, child, child.end_lineno - child.lineno + 1
                yield from walk(child, f"{name}.")
            else:
                yield from walk(child, prefix)

    yield from walk(tree, "")


def offenders(text: str, module: str) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(classes over the limit, functions over the limit) of one module's source."""
    classes: set[tuple[str, str]] = set()
    functions: set[tuple[str, str]] = set()
    for name, node, length in definitions(ast.parse(text, module)):
        if isinstance(node, ast.ClassDef):
            if length > MAX_CLASS_LINES:
                classes.add((module, name))
        elif length > MAX_FUNCTION_LINES:
            functions.add((module, name))
    return classes, functions


def lengths() -> dict[tuple[str, str], int]:
    return {
        (module_name(path)[0], name): length
        for path in sorted((SRC / "taskhub").rglob("*.py"))
        for name, _, length in definitions(ast.parse(path.read_text(), str(path)))
    }


def all_offenders() -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    classes: set[tuple[str, str]] = set()
    functions: set[tuple[str, str]] = set()
    for path in sorted((SRC / "taskhub").rglob("*.py")):
        c, f = offenders(path.read_text(), module_name(path)[0])
        classes |= c
        functions |= f
    return classes, functions


def test_no_new_class_reaches_400_lines() -> None:
    size = lengths()
    new = sorted(all_offenders()[0] - ALLOWED_CLASSES)
    assert not new, f"a class has {MAX_CLASS_LINES + 1} lines or more; split it by idea:\n" + (
        "\n".join(f"  {m}.{n}: {size[m, n]} lines" for m, n in new)
    )


def test_no_new_function_over_60_lines() -> None:
    size = lengths()
    new = sorted(all_offenders()[1] - ALLOWED_FUNCTIONS)
    assert not new, f"a function has more than {MAX_FUNCTION_LINES} lines; split it:\n" + (
        "\n".join(f"  {m}.{n}: {size[m, n]} lines" for m, n in new)
    )


def test_the_allow_lists_only_shrink() -> None:
    classes, functions = all_offenders()
    gone = sorted((ALLOWED_CLASSES - classes) | (ALLOWED_FUNCTIONS - functions))
    assert not gone, "no longer too long (or gone), delete from the allow-list:\n" + "\n".join(
        f"  {entry}" for entry in gone
    )


def test_the_check_measures_nested_definitions_and_docstrings() -> None:
    # The detector itself: a 61-line method inside a class, a nested function, a short one.
    body = "\n".join(f"        x{i} = {i}" for i in range(59))
    text = (
        "class Big:\n"
        "    def long(self) -> None:\n"
        '        """Sixty-one lines with this docstring."""\n'
        f"{body}\n"
        "    def short(self) -> None:\n"
        "        def inner() -> None:\n"
        "            pass\n"
    )
    classes, functions = offenders(text, "taskhub.probe")
    assert functions == {("taskhub.probe", "Big.long")}
    assert classes == set()
    sizes = {name: length for name, _, length in definitions(ast.parse(text))}
    assert sizes == {"Big": 65, "Big.long": 61, "Big.short": 3, "Big.short.inner": 2}
