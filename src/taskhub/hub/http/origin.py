"""Web pages may not use an open-access hub: the Host and Origin checks (docs/http.md).

A hub without credentials gives every permission to whoever connects, and serves loopback
only. A browser on the same machine can still reach it: any page the developer opens may
connect to ``ws://127.0.0.1:PORT/v1/ws`` or post to ``/v1/...`` (cross-site WebSocket
hijacking), or resolve its own name to 127.0.0.1 (DNS rebinding). So an open-access hub
answers only requests whose ``Host`` is a loopback name or address, and whose ``Origin``, if
there is one, is the hub's own (the dashboard) or listed in ``allowed_origins``. Programs
(the Python client, httpx, curl, Node's ``ws``) send no ``Origin`` and are not affected.

A hub with credentials needs neither check: a browser cannot add the ``Authorization``
header to a WebSocket or a cross-site request without a CORS preflight the hub never grants,
and the dashboard's cookie is ``SameSite=Strict`` (docs/dashboard.md).
"""

from __future__ import annotations

import ipaddress
import json

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from taskhub.errors import InvalidOption
from taskhub.hub.auth import Registry

CODE = "cross_site"


def _hostname(host: str) -> str:
    """``[::1]:8080`` -> ``::1``, ``localhost:8080`` -> ``localhost``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def is_loopback_name(hostname: str) -> bool:
    """localhost (and ``*.localhost``, which browsers resolve to loopback themselves) or a
    loopback address: names a rebinding attacker's DNS cannot hand out."""
    if hostname == "localhost" or hostname.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def normalize_origin(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


def refusal(
    scheme: str, host: str | None, origin: str | None, allowed_origins: frozenset[str]
) -> str | None:
    """Why an open-access hub refuses this request, or None to answer it."""
    if "*" in allowed_origins:
        return None  # any page, so any name it may have made resolve here
    if host is not None and not (
        is_loopback_name(_hostname(host)) or _named(host, allowed_origins)
    ):
        return (
            f"Host {host!r} is not a loopback name or address: this hub has no credentials, "
            "so it answers requests for localhost and loopback addresses only (and for the "
            "hosts of its allowed_origins)"
        )
    if origin is None:
        return None
    own = f"{'https' if scheme in ('https', 'wss') else 'http'}://{host}".lower()
    if normalize_origin(origin) in allowed_origins or normalize_origin(origin) == own:
        return None
    return (
        f"a request from the web page at {origin!r} is refused: this hub has no credentials, "
        "so it answers only its own pages and programs that send no Origin (add the origin "
        "to the hub's allowed_origins to let that page in)"
    )


def _named(host: str, allowed_origins: frozenset[str]) -> bool:
    """Whether ``host`` (``name`` or ``name:port``) is the host of an allowed origin."""
    host = host.strip().lower()
    for origin in allowed_origins:
        netloc = origin.partition("://")[2]
        if host == netloc or host == _hostname(netloc):
            return True
    return False


class SameOrigin:
    """ASGI middleware: :func:`refusal` for every HTTP request and WebSocket handshake of an
    open-access hub; 403 with ``{"code": "cross_site", "message"}``."""

    def __init__(self, app: ASGIApp, registry: Registry) -> None:
        self.app = app
        self.registry = registry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and self.registry.open_access:
            headers = Headers(scope=scope)
            why = refusal(
                scope.get("scheme", "http"),
                headers.get("host"),
                headers.get("origin"),
                self.registry.allowed_origins,
            )
            if why is not None:
                await _refuse(scope, send, why)
                return
        await self.app(scope, receive, send)


async def _refuse(scope: Scope, send: Send, message: str) -> None:
    body = json.dumps({"code": CODE, "message": message}).encode()
    start = {
        "status": 403,
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))],
    }
    if scope["type"] == "http":
        await send({"type": "http.response.start", **start})
        await send({"type": "http.response.body", "body": body})
    elif "websocket.http.response" in scope.get("extensions", {}):
        await send({"type": "websocket.http.response.start", **start})
        await send({"type": "websocket.http.response.body", "body": body})
    else:  # a server without the denial-response extension answers a bare 403
        await send({"type": "websocket.close", "code": 1008})


def allowed_origins(origins: list[str] | tuple[str, ...]) -> frozenset[str]:
    """Check the ``allowed_origins`` setting: ``*`` or origins ``scheme://host[:port]``."""
    out: set[str] = set()
    for origin in origins:
        value = normalize_origin(origin) if isinstance(origin, str) else ""
        scheme, sep, rest = value.partition("://")
        if value != "*" and (scheme not in ("http", "https") or not sep or not rest or "/" in rest):
            raise InvalidOption(
                f"allowed_origins: {origin!r} is not an origin: give scheme://host[:port] "
                "(http or https, no path), as a browser sends it, or '*' for any page"
            )
        out.add(value)
    return frozenset(out)
