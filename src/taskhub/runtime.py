"""Running a coroutine on the fastest event loop available (uvloop where installed)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return asyncio.run(main)
    with contextlib.suppress(KeyboardInterrupt):
        return uvloop.run(main)
    raise SystemExit(130)
