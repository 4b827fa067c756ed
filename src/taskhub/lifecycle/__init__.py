"""The task lifecycle as a pure state machine: no sockets, no database, an injected clock.

The hub feeds it what connections say (:meth:`Lifecycle.publish`, :meth:`Lifecycle.pickup`, ...)
and the passing of time (:meth:`Lifecycle.advance`). It answers with messages queued on each
:class:`Peer` and with records to write (:meth:`Lifecycle.take_writes`). The hub must make the
writes durable *before* it sends the queued messages: nothing leaves the hub before the state
that caused it is stored.

- ``state.py``: connections, subscriptions, group queues, deliveries, tasks; shared names.
- ``options.py``: publish options and how defaults combine.
- ``core.py``: the rules of a task's life (publish, offer, credit, worker steps, timers, end).
- ``operations.py``: :class:`Lifecycle`, adding recovery after a restart, durable queues,
  purge and dead letters.
"""

from taskhub.lifecycle.core import LifecycleCore
from taskhub.lifecycle.operations import Lifecycle
from taskhub.lifecycle.options import (
    ACTION_OPTIONS,
    REQUEUE_OPTIONS,
    StoredOptions,
    check_trace,
    resolve_options,
)
from taskhub.lifecycle.state import (
    DEAD_META,
    DEAD_REASONS,
    HELD,
    QUEUE_META,
    Clock,
    Credentials,
    Defaults,
    Delivery,
    EventKey,
    Message,
    Peer,
    Queue,
    Subscription,
    Task,
    TimerHandler,
    dead_letter,
    queue_key,
)

__all__ = [
    "ACTION_OPTIONS",
    "DEAD_META",
    "DEAD_REASONS",
    "HELD",
    "QUEUE_META",
    "REQUEUE_OPTIONS",
    "Clock",
    "Credentials",
    "Defaults",
    "Delivery",
    "EventKey",
    "Lifecycle",
    "LifecycleCore",
    "Message",
    "Peer",
    "Queue",
    "StoredOptions",
    "Subscription",
    "Task",
    "TimerHandler",
    "check_trace",
    "dead_letter",
    "queue_key",
    "resolve_options",
]
