"""TaskHub: a task hub for services. Send it tasks, watch them as they happen."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from taskhub.client import Client, Handle, TaskContext
from taskhub.client.control import Reject, Retry
from taskhub.errors import (
    AuthenticationFailed,
    ConnectionClosed,
    InvalidAction,
    NoResult,
    PermissionDenied,
    StaleAttempt,
    TaskCancelled,
    TaskFailed,
    TaskHubError,
    TaskTimeout,
    TooManyConnections,
)
from taskhub.version import __version__

if TYPE_CHECKING:
    from taskhub.server import Server
    from taskhub.worker import Worker

__all__ = [
    "AuthenticationFailed",
    "Client",
    "ConnectionClosed",
    "Handle",
    "InvalidAction",
    "NoResult",
    "PermissionDenied",
    "Reject",
    "Retry",
    "Server",
    "StaleAttempt",
    "TaskCancelled",
    "TaskContext",
    "TaskFailed",
    "TaskHubError",
    "TaskTimeout",
    "TooManyConnections",
    "Worker",
    "__version__",
]


def __getattr__(name: str) -> Any:
    # The hub (FastAPI, uvicorn, pydantic) is imported on first use only: a process that just
    # publishes or works (`from taskhub import Client`) starts in a fraction of the time, and
    # its garbage collector has ~45,000 fewer long-lived objects to walk.
    if name == "Server":
        try:
            from taskhub.server import Server
        except ModuleNotFoundError as exc:
            if (exc.name or "taskhub").startswith("taskhub"):
                raise
            raise ImportError(
                f"taskhub.Server needs the hub's dependencies ({exc.name} is not installed): "
                "pip install 'taskhub-server[server]'",
                name=exc.name,
            ) from exc
        return Server
    if name == "Worker":
        from taskhub.worker import Worker

        return Worker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
