"""OpenTelemetry for tasks: the publisher's span context travels with the task to the worker.

Used once the application has imported OpenTelemetry's API (the ``opentelemetry`` extra; an
application that sets up tracing imports it): until then, and where it is not installed, the
client makes no spans, sends no trace context, and imports nothing of OpenTelemetry. Spans
follow OpenTelemetry's messaging conventions (docs/tracing.md):

- ``publish ACTION`` (kind PRODUCER) around ``pub``, ``chain`` and ``group``. Its context is
  injected with the global propagator (W3C ``traceparent``/``tracestate`` by default) into the
  task's ``trace`` option, which the hub stores with the task and sends with every offer; a
  chain gives it to each of its steps.
- ``process ACTION`` (kind CONSUMER) around a handler, the child of the context its offer
  carries; the handler's own spans are its children.

Without an SDK (only the API imported) the spans are OpenTelemetry's no-ops, and a context
the publisher received from upstream (an incoming ``traceparent``) is still passed on.
"""

from __future__ import annotations

import functools
import operator
import sys
from contextlib import AbstractContextManager
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from taskhub.client.task import Handle, TaskContext

SYSTEM = "taskhub"  # messaging.system


class Tracing:
    """Starts the publish and process spans: one for the global tracer provider, shared by
    the clients of a process, and one per client given its own (:func:`load`)."""

    def __init__(self, tracer_provider: Any = None) -> None:
        from opentelemetry import propagate, trace
        from opentelemetry.context import Context
        from opentelemetry.trace import SpanKind, Status, StatusCode

        from taskhub.version import __version__

        self._propagate = propagate
        self._trace = trace
        self._kind = SpanKind
        self._status = Status
        self._error = StatusCode.ERROR
        self._root = Context()  # a process span without a carried trace starts a new one
        self.tracer = trace.get_tracer("taskhub", __version__, tracer_provider=tracer_provider)

    def publish(self, action: str) -> tuple[Span, dict[str, str]]:
        """Start the PRODUCER span of a ``pub`` (in the caller's context); return it with the
        carrier to send as the task's ``trace`` (empty when there is nothing to pass on)."""
        span = self.tracer.start_span(f"publish {action}", kind=self._kind.PRODUCER)
        carrier: dict[str, str] = {}
        if span.is_recording():  # attributes only for a real span: no cost without an SDK
            span.set_attributes(
                {
                    "messaging.system": SYSTEM,
                    "messaging.operation.type": "send",
                    "messaging.operation.name": "publish",
                    "messaging.destination.name": action,
                    "taskhub.action": action,
                }
            )
        if span.get_span_context().is_valid:
            self._propagate.inject(carrier, context=self._trace.set_span_in_context(span))
        elif self._trace.get_current_span().get_span_context().is_valid:
            # No SDK, and an API whose no-op tracer drops the parent (1.20 does): the
            # context received from upstream is passed on as it came.
            self._propagate.inject(carrier)
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

    def process(self, ctx: TaskContext, trace: Any) -> Span | None:
        """Start the CONSUMER span of one delivery, the child of the context its offer
        carried (none: a new trace). ``None`` when there is nothing to record or pass on
        (no SDK, no trace): the handler then runs as it would without OpenTelemetry."""
        parent = self._propagate.extract(trace) if isinstance(trace, dict) else self._root
        span = self.tracer.start_span(
            f"process {ctx.action}", context=parent, kind=self._kind.CONSUMER
        )
        if not span.is_recording():
            if not span.get_span_context().is_valid:  # an older no-op tracer dropped the parent
                span = self._trace.get_current_span(parent)
            # No SDK: the carried context is made current, so that what the handler
            # publishes passes it on; with none, there is nothing to do.
            return span if span.get_span_context().is_valid else None
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
        span.set_attributes(attributes)
        return span

    def current(self, span: Span) -> AbstractContextManager[Span]:
        """``span`` as the current span while the handler runs; it ends on exit. A handler's
        error is recorded by the client (:meth:`failed`): it is an outcome the client
        reports, not an exception that leaves this block."""
        return self._trace.use_span(
            span, end_on_exit=True, record_exception=False, set_status_on_exception=False
        )

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


# Imported by every application that traces (and by its instrumentations); a dict lookup
# tells whether it has been, so a process that does not trace pays neither the import (~40 ms)
# nor the no-op spans (~1 us per pub and per task).
API_MODULE = "opentelemetry.trace"


def imported() -> bool:
    """Whether the application has imported OpenTelemetry's API (so :func:`load` may work)."""
    return API_MODULE in sys.modules


# imported() without a Python call, for the per-task checks: a bound method of sys.modules.
imported_now = functools.partial(operator.contains, sys.modules, API_MODULE)


def load(tracer_provider: Any = None) -> Tracing | None:
    """A client's :class:`Tracing`, with spans from ``tracer_provider`` (by default the
    global one); ``None`` while OpenTelemetry has not been imported, or cannot be."""
    if tracer_provider is not None:
        return Tracing(tracer_provider)  # whoever made a provider has OpenTelemetry
    return _global() if imported() else None


@cache
def _global() -> Tracing | None:
    try:
        return Tracing()
    except ImportError:
        return None
