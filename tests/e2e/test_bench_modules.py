"""The benchmarks stay runnable as the code they measure moves: every module of benchmarks/
imports (its imports of taskhub resolve), and none imports the runner, run.py."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
# chart.py runs in the peers' venv (matplotlib), not the project's.
MODULES = sorted(p.stem for p in BENCH.glob("*.py") if p.stem != "chart")


def imported(path: Path) -> set[str]:
    """The top-level names of the modules ``path`` imports, inside functions too."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_no_benchmark_imports_the_runner() -> None:
    importers = [p.name for p in sorted(BENCH.rglob("*.py")) if "run" in imported(p)]
    assert importers == [], f"these import benchmarks/run.py: {importers}"


def test_every_benchmark_module_imports() -> None:
    # One fresh interpreter with benchmarks/ on the path, as `python benchmarks/X.py` has it.
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    proc = subprocess.run(
        [sys.executable, "-c", code, *MODULES],
        cwd=BENCH,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
