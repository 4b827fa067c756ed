"""The task lifecycle as a pure state machine: no sockets, no database, an injected clock.

The hub feeds it what connections say (:meth:`Lifecycle.publish`, :meth:`Lifecycle.pickup`, ...)
and the passing of time (:meth:`Lifecycle.advance`). It answers with messages queued on each
:class:`Peer` and with records to write (:meth:`Lifecycle.take_writes`). The hub must make the
writes durable *before* it sends the queued messages: nothing leaves the hub before the state
that caused it is stored.

- ``core.py``: :class:`Lifecycle`, the one entry, composed of the parts below (its docstring
  lists them: journal, queues, keys, publishing, subscriptions, steps, ending, deadlines,
  recovery, operations).
- ``state.py``: connections, subscriptions, deliveries, tasks; shared names.
- ``options.py``: publish options and how defaults combine.
- ``chains.py``, ``schedules.py``: chains and groups, cron schedules, run over the lifecycle.
"""

from taskhub.lifecycle.core import Lifecycle
from taskhub.lifecycle.journal import event_msg
from taskhub.lifecycle.options import (
    ACTION_OPTIONS,
    REQUEUE_OPTIONS,
    StoredOptions,
    check_trace,
    resolve_options,
)
from taskhub.lifecycle.queues import Queue
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
    "Message",
    "Peer",
    "Queue",
    "StoredOptions",
    "Subscription",
    "Task",
    "TimerHandler",
    "check_trace",
    "dead_letter",
    "event_msg",
    "queue_key",
    "resolve_options",
]
