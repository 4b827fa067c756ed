"""The ASGI application: the WebSocket endpoint and the HTTP API on one port."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, WebSocket
from fastapi_offline import FastAPIOffline

from taskhub.hub import dashboard, http
from taskhub.hub.http import metrics, schedules
from taskhub.hub.http.origin import SameOrigin
from taskhub.hub.hub import Hub
from taskhub.hub.link.leader import serve_link
from taskhub.hub.link.wire import LINK_PATH
from taskhub.hub.ws import serve_connection
from taskhub.protocol import WS_PATH
from taskhub.version import __version__

DOCS_ASSETS = "/docs/assets"  # swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js


def create_app(hub: Hub) -> FastAPI:
    # /docs and /redoc load Swagger UI and ReDoc from files shipped in fastapi-offline, not
    # from a CDN: they work on a machine without internet (tests/integration/test_docs_pages.py).
    app = FastAPIOffline(
        title="TaskHub",
        version=__version__,
        description="Send it tasks, watch them as they happen.",
        static_url=DOCS_ASSETS,
        swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from swagger.io
    )
    app.state.hub = hub

    @app.websocket(WS_PATH)
    async def ws_endpoint(ws: WebSocket) -> None:
        await serve_connection(ws, hub)

    @app.websocket(LINK_PATH)
    async def link_endpoint(ws: WebSocket) -> None:
        # Other hubs of the deployment only (docs/deployment.md, "The hub-to-hub link").
        await serve_link(ws, hub)

    @app.get("/healthz", tags=["operation"])
    async def healthz() -> dict[str, Any]:
        """Liveness: anyone may ask, so it tells nothing about the store (paths, hosts)."""
        if hub.partitions == 1:
            return {"status": "ok", "role": hub.role}
        # The partitions this hub leads (docs/deployment.md, "Partitions"), and with leases
        # who leads each of the others ("" while nobody holds it).
        out: dict[str, Any] = {"status": "ok", "role": hub.role, "partitions": hub.led}
        if hub.leased:
            out["leaders"] = {str(i): url for i, url in sorted(hub.leading.leaders.items())}
        return out

    http.install(app, hub)  # the /v1 HTTP API: tasks, pull consumers, events
    metrics.install(app, hub)  # /metrics (Prometheus) and /readyz
    app.include_router(schedules.router)  # schedules, queues, dead letters
    dashboard.install(app, hub)  # the web dashboard at / and its JSON under /v1/dashboard
    # Outermost: an open-access hub refuses other web pages before anything else runs.
    app.add_middleware(SameOrigin, registry=hub.registry)
    return app
