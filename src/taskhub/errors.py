"""One exception hierarchy for the hub, the client and the wire.

Every error has a stable machine ``code`` (sent on the wire and in HTTP bodies) and a human
message that names the culprit.
"""

from __future__ import annotations

from typing import Any, ClassVar


class TaskHubError(Exception):
    """Base of every TaskHub error."""

    code: ClassVar[str] = "error"

    def __init__(self, message: str = "", **details: Any) -> None:
        super().__init__(message or self.code)
        self.message = message or self.code
        self.details = details

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            out["details"] = self.details
        return out


class ProtocolError(TaskHubError):
    """A frame or message that does not follow the protocol."""

    code = "bad_message"


class FrameTooLarge(ProtocolError):
    code = "frame_too_large"


class UnknownOperation(ProtocolError):
    code = "unknown_op"


class InvalidAction(TaskHubError, ValueError):
    """An action or topic name with a character or shape that is not allowed."""

    code = "invalid_action"


class InvalidOption(TaskHubError, ValueError):
    code = "invalid_option"


class AuthenticationFailed(TaskHubError):
    code = "auth_failed"


class PermissionDenied(TaskHubError):
    code = "forbidden"


class TooManyConnections(TaskHubError):
    code = "too_many_connections"


class TaskNotFound(TaskHubError, LookupError):
    code = "task_not_found"


class StaleAttempt(TaskHubError):
    """A worker spoke for an attempt of a delivery that has since been offered again."""

    code = "stale_attempt"


class NotHolding(TaskHubError):
    """A step (update, drop, return) on a task this connection does not hold."""

    code = "not_holding"


class TaskFailed(TaskHubError):
    """The task failed: a handler raised, it was cancelled, or it ran out of attempts."""

    code = "task_failed"

    def __init__(
        self, message: str = "", *, reason: str = "error", error_type: str = "", task_id: str = ""
    ) -> None:
        super().__init__(message, reason=reason, error_type=error_type, task_id=task_id)
        self.reason = reason
        self.error_type = error_type
        self.task_id = task_id


class TaskTimeout(TaskFailed):
    """The task was not started (``start_timeout``) or not finished (``timeout``) in time."""

    code = "task_timeout"


class TaskCancelled(TaskFailed):
    code = "task_cancelled"


class NoResult(TaskHubError):
    """Every delivery ended without a result (all dropped)."""

    code = "no_result"


class ConnectionClosed(TaskHubError):
    """The connection to the hub is gone and the operation could not be sent."""

    code = "connection_closed"


class StoreUnavailable(TaskHubError):
    code = "store_unavailable"


class StoreFenced(StoreUnavailable):
    """A write refused because this writer no longer holds the store's fence (another hub
    took over the lead): nothing of the refused write was stored."""

    code = "store_fenced"


class StoreInUse(StoreUnavailable):
    """The store is a sqlite file another process holds open (a sqlite file serves one hub at
    a time; several hubs share a ``redis://`` store): raised when the store is opened."""

    code = "store_in_use"


class PartitionUnavailable(StoreUnavailable):
    """The request needs a partition this hub does not lead, and it cannot reach the hub that
    does (docs/deployment.md, "Partition leases"). Retryable: ``details`` name the
    ``partition``, its ``leader`` (its advertised URL, "" while no hub holds it) and
    ``retry_after`` seconds."""

    code = "partition_unavailable"


class PartitionsMismatch(InvalidOption):
    """A hub started with another partition count than the one its store was set up with
    (the count is fixed per deployment: docs/deployment.md, "Partitions")."""

    code = "partitions_mismatch"


_BY_CODE: dict[str, type[TaskHubError]] = {}


def _index(cls: type[TaskHubError]) -> None:
    _BY_CODE.setdefault(cls.code, cls)
    for sub in cls.__subclasses__():
        _index(sub)


_index(TaskHubError)


def from_wire(body: dict[str, Any]) -> TaskHubError:
    """Rebuild the error a hub sent, as the most specific class known for its code."""
    cls = _BY_CODE.get(str(body.get("code", "")), TaskHubError)
    message = str(body.get("message", ""))
    if issubclass(cls, TaskFailed):
        return cls(message)
    err = cls(message, **dict(body.get("details") or {}))
    return err
