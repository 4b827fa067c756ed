"""Docs that run: every code block of README.md and docs/*.md that is meant to run does run,
against a hub this test starts (a fresh one per block, memory://, on a free loopback port).

The rules, for whoever writes a page (also in docs/decisions.md, "Docs that run"):

- A ``python`` block is a whole program: it runs as a file, ``python block.py``. The address
  ``127.0.0.1:8080`` in it is replaced by the test hub's. A block that is only a piece of a
  program says so with ``<!-- fragment -->`` on the line before it; a fragment must still be
  valid Python (top-level ``await`` allowed), and is not run.
- A ``python`` block followed by a block marked ``<!-- output -->`` must print exactly that.
- A ``sh`` block runs (with ``bash -e``, this environment's ``taskhub`` first on the PATH)
  only when marked ``<!-- run -->``: most shell blocks start servers or install things.
- ``toml`` and ``json`` blocks must parse (unless marked ``<!-- fragment -->``).
- A page whose snippets another test runs says so at its top:
  ``<!-- snippets: tests/path/test_x.py -->``; this test then leaves its blocks to that file,
  which must exist.
"""

from __future__ import annotations

import ast
import asyncio
import itertools
import json
import os
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from taskhub import Server
from tests.conftest import ServerFactory

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
MARK = re.compile(r"<!--\s*(fragment|output|run)\s*-->\s*$")
ELSEWHERE = re.compile(r"^<!--\s*snippets:\s*(\S+)\s*-->[ \t]*$", re.M)  # a line of its own
HUB = "127.0.0.1:8080"


@dataclass
class Block:
    page: str
    line: int
    lang: str
    code: str
    mark: str | None
    output: str | None = None  # what the next block, marked <!-- output -->, says it prints

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def blocks(page: Path) -> list[Block]:
    text = page.read_text()
    if ELSEWHERE.search(text):
        return []
    found: list[Block] = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        mark = MARK.search(before)
        found.append(
            Block(
                str(page.relative_to(ROOT)),
                text[: m.start()].count("\n") + 1,
                m.group(1),
                m.group(2),
                mark.group(1) if mark else None,
            )
        )
    for block, after in itertools.pairwise(found):
        if after.mark == "output":
            block.output = after.code
    return found


ALL = [b for page in PAGES for b in blocks(page)]
RUN = [b for b in ALL if b.mark is None and b.lang == "python"]
RUN_SH = [b for b in ALL if b.mark == "run" and b.lang in ("sh", "bash", "console")]
PARSE = [b for b in ALL if b.mark != "output" and b not in RUN and b not in RUN_SH]


def test_the_pages_are_found_and_pages_tested_elsewhere_name_their_test() -> None:
    assert len(RUN) >= 5
    for page in PAGES:
        for name in ELSEWHERE.findall(page.read_text()):
            assert (ROOT / name).exists(), f"{page.name} names {name}, which does not exist"


@pytest.mark.parametrize("block", PARSE, ids=lambda b: b.id)
def test_fragments_and_data_blocks_parse(block: Block) -> None:
    if block.lang == "python":
        compile(block.code, block.id, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    elif block.lang == "toml":
        tomllib.loads(block.code)
    elif block.lang == "json" and block.mark != "fragment":
        json.loads(block.code)


async def _run(argv: list[str], cwd: Path, hub: Server, timeout: float = 60) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKHUB_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["TASKHUB_URL"] = hub.url
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(
            f"still running after {timeout}s (waiting forever?)\n{err.decode()[-2000:]}"
        ) from None
    assert proc.returncode == 0, f"exit status {proc.returncode}\n{err.decode()[-3000:]}"
    return out.decode()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("block", RUN, ids=lambda b: b.id)
async def test_python_blocks_run(block: Block, make_server: ServerFactory, tmp_path: Path) -> None:
    hub = await make_server()
    script = tmp_path / "block.py"
    script.write_text(block.code.replace(HUB, f"127.0.0.1:{hub.port}"))
    printed = await _run([sys.executable, str(script)], tmp_path, hub)
    if block.output is not None:
        assert printed.strip() == block.output.strip()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("block", RUN_SH, ids=lambda b: b.id)
async def test_marked_shell_blocks_run(
    block: Block, make_server: ServerFactory, tmp_path: Path
) -> None:
    hub = await make_server()
    script = tmp_path / "block.sh"
    script.write_text(block.code.replace(HUB, f"127.0.0.1:{hub.port}"))
    printed = await _run(["bash", "-e", str(script)], tmp_path, hub)
    if block.output is not None:
        assert printed.strip() == block.output.strip()
