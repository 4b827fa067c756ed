"""Installing the client alone: ``pip install taskhub-server`` into a fresh virtualenv brings
msgspec and websockets and nothing else, the client works there, and what needs an extra says
which one. In the full (dev) environment, importing the client imports none of the hub's
dependencies."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# What the hub and the command line import; the client must not pull any of them in.
HUB_MODULES = (
    "fastapi", "fastapi_offline", "starlette", "pydantic", "uvicorn", "uvloop", "typer", "click",
    "rich", "httpx", "tomlkit", "redis", "hiredis", "croniter", "prometheus_client", "anyio",
)  # fmt: skip
CLIENT_IMPORTS = "import taskhub, taskhub.sync; from taskhub import Client"


def build_context(dest: Path) -> Path:
    """The repository's files as a fresh clone (or a Docker build context) has them."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode()  # fmt: skip
    for name in filter(None, listed.split("\0")):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def make_venv(path: Path) -> Path:
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    return path / "bin"


def installed(bin_dir: Path) -> set[str]:
    listed = subprocess.run(
        [bin_dir / "python", "-m", "pip", "list", "--format=json"],
        capture_output=True, check=True, text=True,
    ).stdout  # fmt: skip
    return {p["name"].lower().replace("_", "-") for p in json.loads(listed)}


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, set[str]]]:
    root = tmp_path_factory.mktemp("client-only")
    bin_dir = make_venv(root / "venv")
    before = installed(bin_dir)  # pip (and setuptools on some Pythons)
    context = build_context(root / "src")
    subprocess.run(
        [bin_dir / "python", "-m", "pip", "install", "-q", str(context)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    yield bin_dir, installed(bin_dir) - before


@pytest.mark.timeout(600)
def test_the_client_installs_with_two_dependencies(client_venv: tuple[Path, set[str]]) -> None:
    _, added = client_venv
    assert added == {"taskhub-server", "msgspec", "websockets"}


@pytest.mark.timeout(600)
def test_the_client_runs_without_the_hub_and_says_which_extra_is_missing(
    client_venv: tuple[Path, set[str]], tmp_path: Path
) -> None:
    bin_dir, _ = client_venv
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # The client imports; Server says what to install.
    script = (
        f"{CLIENT_IMPORTS}\n"
        "try:\n    from taskhub import Server\nexcept ImportError as exc:\n    print(exc)\n"
    )
    run = subprocess.run(
        [bin_dir / "python", "-c", script], cwd=tmp_path, capture_output=True, text=True, env=env
    )
    assert run.returncode == 0, run.stderr
    assert "pip install 'taskhub-server[server]'" in run.stdout
    # The command line: one error line naming the extra, not a traceback.
    cmd = subprocess.run(
        [bin_dir / "taskhub", "pub", "a:b"], cwd=tmp_path, capture_output=True, text=True, env=env
    )
    assert cmd.returncode == 1 and "Traceback" not in cmd.stderr
    assert cmd.stderr.count("\n") == 1 and "pip install 'taskhub-server[cli]'" in cmd.stderr
    # With the [cli] extra the command runs; `serve` names the [server] extra.
    context = bin_dir.parent.parent / "src"
    subprocess.run(
        [bin_dir / "python", "-m", "pip", "install", "-q", f"{context}[cli]"],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    version = subprocess.run([bin_dir / "taskhub", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("taskhub "), version.stderr
    serve = subprocess.run(
        [bin_dir / "taskhub", "serve"], cwd=tmp_path, capture_output=True, text=True, env=env
    )
    assert serve.returncode == 1 and serve.stderr.count("\n") == 1, serve.stderr
    assert "pip install 'taskhub-server[server]'" in serve.stderr


def test_importing_the_client_imports_none_of_the_hubs_dependencies() -> None:
    # In this (dev) environment the hub's dependencies are installed: they must stay unloaded.
    script = (
        f"import sys; {CLIENT_IMPORTS}; from taskhub.sync import Client as SyncClient\n"
        f"print([m for m in {HUB_MODULES!r} if m in sys.modules])"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
    # ...and `from taskhub import Server` still works where they are installed.
    server = subprocess.run(
        [sys.executable, "-c", "from taskhub import Server; print(Server.__name__)"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert server.stdout.strip() == "Server", server.stderr
