"""The HTTP API under ``/v1`` (and seed 000's ``POST /add``), put together by :func:`install`.

Same hub, same rules as the WebSocket: every call runs the lifecycle and answers once what it
changed is stored. The routes are in ``tasks`` (tasks and their results), ``events`` (event
streams, broadcast events), ``consumers`` (pull consumers), ``add`` (``POST /add``) and
``schedules`` (schedules, queues, dead letters); what they share is in ``deps``. Errors are
``{"code", "message", "details"?}`` (``errors``: the status of each error class, listed in
``docs/http.md``); ``limits`` refuses bodies over ``max_frame``. ``metrics`` serves
``/metrics`` and ``/readyz``; ``origin`` and ``protocol`` guard the transport (Host/Origin
checks, request deadlines).
"""

from __future__ import annotations

from fastapi import FastAPI

from taskhub.hub.consumers import Consumers
from taskhub.hub.http import add, consumers, events, tasks
from taskhub.hub.http.errors import install_error_model, status_of
from taskhub.hub.http.events import TaskEvents
from taskhub.hub.http.limits import BodyLimit
from taskhub.hub.hub import Hub

__all__ = ["BodyLimit", "install", "status_of"]


def install(app: FastAPI, hub: Hub) -> None:
    """Add the ``/v1`` HTTP API, its error model and its body limit to ``app``."""
    app.state.consumers = Consumers(hub)
    app.state.task_events = TaskEvents(hub)
    # In this order, so the OpenAPI lists the paths as the API reference does.
    app.include_router(tasks.router)
    app.include_router(events.router)
    app.include_router(consumers.router)
    app.include_router(add.router)
    install_error_model(app)
    app.add_middleware(BodyLimit, hub=hub)
