"""The publishing side of a client: ``pub``, chain and group messages made into handles, in a
``publish`` span when OpenTelemetry is there (docs/tracing.md). :class:`Client` owns one."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from taskhub.client import tracing
from taskhub.client.connection import UNSENDABLE, Message, encode, encode_pub
from taskhub.client.link import Link
from taskhub.client.task import Handle
from taskhub.errors import ConnectionClosed, FrameTooLarge, TaskHubError
from taskhub.names import CHAIN_ACTION, GROUP_ACTION, validate_action
from taskhub.options_table import PubArgs, pub_options

# A chain or group step: (action, payload) or (action, payload, options as in the wire `pub`).
Step = tuple[str, Any] | tuple[str, Any, dict[str, Any]]
# An item of pub_many: (action, payload) or (action, payload, the pub keyword arguments).
PubItem = tuple[str, Any] | tuple[str, Any, PubArgs]
# The message of a pub sent as its bytes (post_pub reads only those).
_NO_MSG: Message = {}


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
        options = pub_options(given) if given else {}  # the common case without a call
        # late_tracing's check inline: two calls per task less while nothing traces.
        if self.tracing is not None or (tracing.imported_now() and self.late_tracing() is not None):
            msg: Message = {"op": "pub", "action": action, "payload": payload}
            return self._traced(action, msg, options)
        # _send's steps, without its call (per task)
        handle = Handle(self.link, action)
        conn = self.link.conn
        if conn.up:
            if options:
                msg = {"op": "pub", "action": action, "payload": payload, "options": options}
                conn.post_pub(msg, handle)
            else:  # the common case: no dict, and only the payload checked (encode_pub)
                conn.post_pub(_NO_MSG, handle, encode_pub(action, payload))
        else:
            handle.feed_lost(ConnectionClosed("not connected to a hub"))
        return handle

    def pub_many(self, items: Iterable[PubItem]) -> list[Handle]:
        """Publish every item; their handles, in order. Every item is checked (action name,
        options, JSON payload, size) before any is sent: a bad one raises naming its index,
        and nothing is sent. The connection sends them as batched ``pubs`` messages, each
        task with its own answer: one the hub refuses fails only its own handle."""
        msgs: list[Message] = []
        for index, item in enumerate(items):
            try:
                msgs.append(self._message(item))
            except (*UNSENDABLE, TaskHubError) as exc:
                raise _named(exc, index, item) from None
        spans: list[Any] = []
        if self.tracing is not None or self.late_tracing() is not None:
            assert self.tracing is not None
            for msg in msgs:
                span, carrier = self.tracing.publish(msg["action"])
                if carrier:
                    msg.setdefault("options", {})["trace"] = carrier
                spans.append(span)
        parts: list[bytes] = []
        limit = self.link.conn.frame_limit
        for index, msg in enumerate(msgs):
            try:
                part = (
                    encode(msg) if "options" in msg else encode_pub(msg["action"], msg["payload"])
                )
                if len(part) + 24 > limit:  # its ref, or a batch's, comes at the flush
                    raise FrameTooLarge(
                        f"pub message of {len(part)} bytes is over the hub's frame limit "
                        f"of {limit} bytes"
                    )
                parts.append(part)
            except UNSENDABLE as exc:
                for span in spans:
                    self.tracing.failed(span, exc)  # type: ignore[union-attr]
                    span.end()
                raise _named(exc, index, (msg["action"],)) from None
        handles = [
            self._send(msg["action"], msg, part) for msg, part in zip(msgs, parts, strict=True)
        ]
        for span, handle in zip(spans, handles, strict=False):
            self.tracing.published(span, handle)  # type: ignore[union-attr]
        return handles

    @staticmethod
    def _message(item: PubItem) -> Message:
        """The ``pub`` message of one ``pub_many`` item, checked."""
        if not isinstance(item, tuple) or len(item) not in (2, 3):
            raise TypeError(
                f"an item is (action, payload) or (action, payload, options), not {item!r}"
            )
        action = item[0]
        validate_action(action)
        options = pub_options(item[2] if len(item) == 3 else {})
        msg: Message = {"op": "pub", "action": action, "payload": item[1]}
        if options:
            msg["options"] = options
        return msg

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

    def _send(self, action: str, msg: Message, part: bytes | None = None) -> Handle:
        handle = Handle(self.link, action)
        conn = self.link.conn
        if conn.up:
            # The handle itself gets the answer (Handle.feed_answer) or the loss
            # (Handle.feed_unanswered): no future, closure or callback per task. Pubs of one
            # loop turn leave as one batched message (client/outbox.py).
            if msg["op"] == "pub":
                conn.post_pub(msg, handle, part)
            else:
                conn.post(msg, handle)
        else:
            handle.feed_lost(ConnectionClosed("not connected to a hub"))
        return handle


def _named(exc: BaseException, index: int, item: Any) -> BaseException:
    """``exc`` as raised for item ``index`` of a ``pub_many``: the same class, its message
    naming the item (and, for TaskHub's errors, ``details["index"]``)."""
    action = item[0] if isinstance(item, tuple) and item else None
    where = f"pub_many item {index}" + (f" ({action!r})" if isinstance(action, str) else "")
    if isinstance(exc, TaskHubError):
        return type(exc)(f"{where}: {exc.message}; nothing was sent", **exc.details, index=index)
    return type(exc)(f"{where}: {exc}; nothing was sent")
