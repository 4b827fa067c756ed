"""The web dashboard: a static page at ``/`` and the JSON it reads under ``/v1/dashboard``
(docs/dashboard.md).

The page (``static/``: plain HTML, CSS and JavaScript modules, no build step, uPlot vendored
for the charts) polls ``/v1/dashboard/stats`` and ``/series`` and streams a task's events over
Server-Sent Events; it can cancel, retry, re-queue and purge. The package, one idea a module:
``sessions`` (who may use it: admins, by Bearer header or a signed session cookie), ``views``
(the JSON answers), ``routes`` (what it reads), ``actions`` (what it changes), ``monitor``
(what it keeps of the past, fed by the hub's metrics), ``series`` (the charts' time series)
and ``rows`` (a task or a connection as the lists show it).
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from taskhub.hub.dashboard import actions, deployment, routes
from taskhub.hub.dashboard.monitor import Monitor
from taskhub.hub.dashboard.sessions import Sessions, is_admin
from taskhub.hub.hub import Hub

__all__ = ["Monitor", "Sessions", "install", "is_admin"]

STATIC = os.path.join(os.path.dirname(__file__), "static")


def install(app: FastAPI, hub: Hub) -> None:
    """Serve the page at ``/`` and ``/static`` and its JSON under ``/v1/dashboard``. Call
    after ``http.install`` (it uses its error model and task event fan-out)."""
    app.state.dashboard_sessions = Sessions()
    app.state.dashboard_monitor = monitor = Monitor(hub)

    def pull() -> dict[str, Any]:  # the HTTP API's pull consumers, by connection id
        consumers = getattr(app.state, "consumers", None)
        return dict(consumers.by_id) if consumers is not None else {}

    # Other hubs of the deployment ask this one for its share of the numbers (over the link).
    deployment.install(hub, monitor, pull)
    app.include_router(routes.router)
    app.include_router(actions.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        # no-cache: the page is tiny, and a hub upgrade must not leave an old page behind
        return FileResponse(
            os.path.join(STATIC, "index.html"), headers={"Cache-Control": "no-cache"}
        )
