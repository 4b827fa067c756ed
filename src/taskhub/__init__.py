"""TaskHub: a task hub for services. Send it tasks, watch them as they happen."""

from __future__ import annotations

__version__ = "0.1.0"

from taskhub.client import Client, Handle, TaskContext
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
from taskhub.server import Server

__all__ = [
    "AuthenticationFailed",
    "Client",
    "ConnectionClosed",
    "Handle",
    "InvalidAction",
    "NoResult",
    "PermissionDenied",
    "Server",
    "StaleAttempt",
    "TaskCancelled",
    "TaskContext",
    "TaskFailed",
    "TaskHubError",
    "TaskTimeout",
    "TooManyConnections",
    "__version__",
]
