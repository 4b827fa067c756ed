"""The publishing side of a client: ``pub``, chain and group messages made into handles, in a
``publish`` span when OpenTelemetry is there (docs/tracing.md). :class:`Client` owns one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from taskhub.client import tracing
from taskhub.client.connection import Message
from taskhub.client.link import Link
from taskhub.client.task import Handle
from taskhub.errors import ConnectionClosed
from taskhub.names import CHAIN_ACTION, GROUP_ACTION, validate_action
from taskhub.options_table import pub_options

# A chain or group step: (action, payload) or (action, payload, options as in the wire `pub`).
Step = tuple[str, Any] | tuple[str, Any, dict[str, Any]]


class Traced(Protocol):
    """Another part that traces with the publisher's tracing (the worker side)."""

    tracing: tracing.Tracing | None


class Publisher:
    """Publishes on ``link``; traces with ``tracer_provider``'s tracer, by default the global
    one, once the application has imported OpenTelemetry."""

    def __init__(self, link: Link, tracer_provider: Any = None) -> None:
        self.link = link
        self.tracer_provider = tracer_provider
        # None until the application imports OpenTelemetry (late_tracing), or if it never does.
        self.tracing = tracing.load(tracer_provider)
        self._also: list[Traced] = []

    def also_traces(self, part: Traced) -> None:
        """Keep ``part.tracing`` the same as this publisher's (set when loaded late)."""
        self._also.append(part)

    def late_tracing(self) -> tracing.Tracing | None:
        """If OpenTelemetry was imported since the client was made: trace from now on."""
        if tracing.imported():
            self.tracing = tracing.load(self.tracer_provider)
            for part in self._also:
                part.tracing = self.tracing
        return self.tracing

    def pub(self, action: str, payload: Any, given: Mapping[str, Any]) -> Handle:
        """Publish a task with the ``pub`` keyword arguments ``given``; its handle at once."""
        validate_action(action)
        options = pub_options(given)
        msg: Message = {"op": "pub", "action": action, "payload": payload}
        if self.tracing is not None or self.late_tracing() is not None:
            return self._traced(action, msg, options)
        if options:
            msg["options"] = options
        return self._send(action, msg)

    def chain(self, steps: Sequence[Step], mode: str, *, merge_input: bool = False) -> Handle:
        """Run ``steps`` one after another (``mode="chain"``) or at once (``"group"``)."""
        out = []
        for step in steps:
            action, payload = step[0], step[1]
            validate_action(action)
            item: Message = {"action": action, "payload": payload}
            if len(step) > 2:
                item["options"] = step[2]
            out.append(item)
        msg: Message = {"op": "chain", "mode": mode, "steps": out}
        if merge_input:
            msg["merge_input"] = True
        action = CHAIN_ACTION if mode == "chain" else GROUP_ACTION
        if self.tracing is not None or self.late_tracing() is not None:
            return self._traced(action, msg, msg)
        return self._send(action, msg)

    def _traced(self, action: str, msg: Message, into: Message) -> Handle:
        """Publish inside a ``publish`` span whose context goes with the task as ``trace``,
        in ``into``: the pub's options (a step of a chain gets its chain's), or ``msg``."""
        assert self.tracing is not None
        span, carrier = self.tracing.publish(action)
        if carrier:
            into["trace"] = carrier
        if into and into is not msg:
            msg["options"] = into
        try:
            handle = self._send(action, msg)
        except Exception as exc:  # not sent (a payload that is not JSON): the span says why
            self.tracing.failed(span, exc)
            span.end()
            raise
        self.tracing.published(span, handle)
        return handle

    def _send(self, action: str, msg: Message) -> Handle:
        handle = Handle(self.link, action)
        if self.link.connected:
            # The handle itself gets the answer (Handle.feed_answer) or the loss
            # (Handle.feed_unanswered): no future, closure or callback per task.
            self.link.post(msg, handle)
        else:
            handle.feed_lost(ConnectionClosed("not connected to a hub"))
        return handle
