"""No module of src/taskhub reads or sets another object's private attribute (``x._name``).

The attribute-access half of test_private_imports.py's rule: if ``Admin`` needs ``hub._ok`` or
the hub needs ``lc._dirty``, the owner offers a public method (STYLE.md, "Neighbours talk through
public methods"). Read with ``ast``:

- ``self._x``, ``cls._x`` and ``super()._x`` are an object's own business, never counted;
- neither are dunder names (``x.__name__``) nor the few documented names of the standard
  library that start with an underscore (``os._exit``, a namedtuple's ``_replace``...);
- a module's own names are not counted either: ``other._x`` where the module itself defines
  ``_x`` (a method, a class attribute, ``self._x = ...``, a ``__slots__`` entry) is a class
  reading another instance of itself, as ``__eq__`` does.
"""

from __future__ import annotations

import ast
from collections import defaultdict

from tests.unit.test_private_imports import SRC, module_name, private

# The standard library's public names that start with an underscore.
DOCUMENTED = frozenset(
    {"_exit", "_asdict", "_replace", "_fields", "_make", "_field_defaults", "_current_frames"}
)

# Today's crossings, as (module, attribute). #18 removes these: the list may only shrink. A new
# crossing fails the test, and so does an entry no longer used (delete it).
ALLOWED: frozenset[tuple[str, str]] = frozenset()


def own_names(tree: ast.AST) -> set[str]:
    """The private attribute names a module defines itself."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.ctx, ast.Store)
            and is_self(node.value)
        ):
            names.add(node.attr)
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        for stmt in cls.body:
            targets: list[ast.expr] = []
            if isinstance(stmt, ast.Assign):
                targets = stmt.targets
            elif isinstance(stmt, ast.AnnAssign):
                targets = [stmt.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    names.add(target.id)
                    if target.id == "__slots__" and isinstance(stmt.value, ast.Tuple | ast.List):
                        names.update(
                            e.value
                            for e in stmt.value.elts
                            if isinstance(e, ast.Constant) and isinstance(e.value, str)
                        )
    return {n for n in names if private(n)}


def is_self(node: ast.expr) -> bool:
    if isinstance(node, ast.Name):
        return node.id in {"self", "cls"}
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "super"
        and not node.args
    )


def crossings(text: str, module: str) -> dict[tuple[str, str], list[int]]:
    """Every other object's private attribute module ``module`` touches, with its lines."""
    tree = ast.parse(text, module)
    own = own_names(tree)
    found: dict[tuple[str, str], list[int]] = defaultdict(list)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and private(node.attr)
            and node.attr not in DOCUMENTED
            and node.attr not in own
            and not is_self(node.value)
        ):
            found[module, node.attr].append(node.lineno)
    return found


def all_crossings() -> dict[tuple[str, str], list[str]]:
    where: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in sorted((SRC / "taskhub").rglob("*.py")):
        name = module_name(path)[0]
        rel = path.relative_to(SRC)
        for key, lines in crossings(path.read_text(), name).items():
            where[key] += [f"{rel}:{line}" for line in lines]
    return where


def test_no_new_private_attribute_crosses_an_object_boundary() -> None:
    found = all_crossings()
    new = sorted(set(found) - ALLOWED)
    assert not new, (
        "a module touches another object's private attribute; give the owner a public "
        "method or name instead:\n"
        + "\n".join(
            f"  {module} uses .{attr} at {', '.join(found[module, attr])}" for module, attr in new
        )
    )


def test_the_allow_list_only_shrinks() -> None:
    gone = sorted(ALLOWED - set(all_crossings()))
    assert not gone, "no longer used, delete from ALLOWED:\n" + "\n".join(
        f"  {entry}" for entry in gone
    )


def test_the_check_tells_own_names_from_a_neighbours() -> None:
    # The detector itself: a neighbour's private attribute, read or set, counts; self, cls,
    # super(), dunders, the standard library's documented names and the module's own do not.
    text = (
        "import os\n"
        "class Admin:\n"
        "    __slots__ = ('_slot',)\n"
        "    _limit = 3\n"
        "    def __init__(self, hub):\n"
        "        self._hub = hub\n"
        "    def ok(self, other: 'Admin'):\n"
        "        self._hub._ok()\n"
        "        other._hub, other._slot, other._limit, super()._base\n"
        "        self._hub.lc._dirty = None\n"
        "        self.__class__, type(self).__name__, os._exit, self._hub._asdict()\n"
        "    def _own(self): ...\n"
        "def f(admin): admin._own(); Admin._limit\n"
    )
    assert dict(crossings(text, "taskhub.probe")) == {
        ("taskhub.probe", "_ok"): [8],
        ("taskhub.probe", "_dirty"): [10],
    }
