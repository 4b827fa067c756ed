"""OpenTelemetry for tasks: the publisher's span context travels with the task to the worker.

Used when ``opentelemetry-api`` can be imported (the ``opentelemetry`` extra); otherwise
:func:`load` returns ``None``, the client skips tracing altogether and nothing of OpenTelemetry
is imported. Spans follow OpenTelemetry's messaging conventions (docs/tracing.md):

- ``publish ACTION`` (kind PRODUCER) around ``pub``, ``chain`` and ``group``. Its context is
  injected with the global propagator (W3C ``traceparent``/``tracestate`` by default) into the
  task's ``trace`` option, which the hub stores with the task and sends with every offer; a
  chain gives it to each of its steps.
- ``process ACTION`` (kind CONSUMER) around a handler, the child of the context its offer
  carries; the handler's own spans are its children.

Without an SDK (only the API installed) the spans are OpenTelemetry's no-ops, and a context
the publisher received from upstream (an incoming ``traceparent``) is still passed on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from taskhub.client.task import Handle, TaskContext

SYSTEM = "taskhub"  # messaging.system


class Tracing:
    """Starts the publish and process spans; one per process (:func:`load`)."""

    def __init__(self) -> None:
        from opentelemetry import propagate, trace
        from opentelemetry.trace import SpanKind, Status, StatusCode

        from taskhub import __version__

        self._propagate = propagate
        self._trace = trace
        self._kind = SpanKind
        self._status = Status
        self._error = StatusCode.ERROR
        self.tracer = trace.get_tracer("taskhub", __version__)

    def publish(self, action: str) -> tuple[Span, dict[str, str]]:
        """Start the PRODUCER span of a ``pub`` (in the caller's context); return it with the
        carrier to send as the task's ``trace`` (empty when there is nothing to pass on)."""
        span = self.tracer.start_span(
            f"publish {action}",
            kind=self._kind.PRODUCER,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.operation.type": "send",
                "messaging.operation.name": "publish",
                "messaging.destination.name": action,
                "taskhub.action": action,
            },
        )
        carrier: dict[str, str] = {}
        if span.get_span_context().is_valid:  # a no-op span of no trace has nothing to pass
            self._propagate.inject(carrier, context=self._trace.set_span_in_context(span))
        return span, carrier

    def published(self, span: Span, handle: Handle) -> None:
        """End a publish span once the ``pub`` is sent (its handle made); a ``pub`` refused
        at once (not connected) marks it failed."""
        if handle.done:
            try:
                handle.outcome()
            except Exception as exc:
                self.failed(span, exc)
        span.end()

    @contextlib.contextmanager
    def process(self, ctx: TaskContext, trace: Any) -> Iterator[Span]:
        """The CONSUMER span of one delivery, current while the handler runs. Its parent is
        the context the offer carried (none: a new trace); the span ends on exit."""
        parent = self._propagate.extract(trace if isinstance(trace, dict) else {})
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": ctx.action,
            "messaging.message.id": ctx.id,
            "messaging.consumer.group.name": ctx.group,
            "taskhub.task.id": ctx.id,
            "taskhub.action": ctx.action,
            "taskhub.attempt": ctx.attempt,
            "taskhub.publisher": ctx.publisher,
        }
        if ctx.observe:
            attributes["taskhub.observe"] = True
        span = self.tracer.start_span(
            f"process {ctx.action}",
            context=parent,
            kind=self._kind.CONSUMER,
            attributes=attributes,
        )
        # Exceptions are recorded by the client (failed()): a handler's error is an outcome
        # the client reports, not an exception that leaves this block.
        with self._trace.use_span(
            span, end_on_exit=True, record_exception=False, set_status_on_exception=False
        ):
            yield span

    def failed(self, span: Span | None, exc: BaseException) -> None:
        """Mark ``span`` (None: the current one, a handler's process span) failed by ``exc``:
        an ``exception`` event and an error status."""
        if span is None:
            span = self._trace.get_current_span()
        span.record_exception(exc)
        span.set_status(self._status(self._error, f"{type(exc).__name__}: {exc}"))

    def revoked(self, span: Span, reason: str) -> None:
        """The hub took the delivery away (cancelled, timed out): an error status naming why."""
        span.set_status(self._status(self._error, f"revoked: {reason}"))


@cache
def load() -> Tracing | None:
    """The process's :class:`Tracing`, or ``None`` when OpenTelemetry's API is not installed."""
    try:
        return Tracing()
    except ImportError:
        return None
