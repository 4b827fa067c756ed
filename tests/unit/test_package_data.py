"""Every file of the package that is not Python ships in the wheel: pyproject.toml's
package-data names it (the dashboard's page, the Redis engine's Lua scripts). A file it
misses works from a checkout and is missing after ``pip install``."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "taskhub"


def test_package_data_names_every_data_file() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["taskhub"]
    shipped = {path for pattern in patterns for path in PACKAGE.glob(pattern) if path.is_file()}
    data = {
        path
        for path in PACKAGE.rglob("*")
        if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts
    }
    assert data, "no data files found: the test looks in the wrong place"
    assert any(path.suffix == ".lua" for path in data)
    missing = sorted(str(path.relative_to(PACKAGE)) for path in data - shipped)
    assert not missing, f"not in [tool.setuptools.package-data] of pyproject.toml: {missing}"
