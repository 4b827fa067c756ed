"""Who may use the dashboard: admins (:func:`is_admin`), by a Bearer header or the session
cookie ``POST /v1/dashboard/login`` sets (a browser's EventSource cannot send a header).

Sessions are signed tokens under a per-process secret (:class:`Sessions`); a change made with
the cookie must carry :data:`CSRF_HEADER`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from typing import Annotated, Any

from fastapi import Depends, Request

from taskhub.errors import AuthenticationFailed, PermissionDenied
from taskhub.hub.auth import parse_bearer
from taskhub.hub.http.deps import hub_of
from taskhub.lifecycle import Credentials

COOKIE = "taskhub_session"
SESSION_TTL = 8 * 3600.0  # seconds a login lasts; the secret dies with the process anyway
# A cookie-authenticated request that changes something must carry this header: a cross-site
# form cannot set it, and a cross-site script needs a CORS preflight the hub never grants.
CSRF_HEADER = "x-taskhub-dashboard"
# The 403 every dashboard route may answer (error_responses(**ADMIN_ERRORS)).
ADMIN_ERRORS = {
    "_403": "Not an admin (no 'admin' or '*' permission), or a change made with the session "
    f"cookie without the {CSRF_HEADER} header.",
}


def is_admin(creds: Credentials) -> bool:
    """Admin rights (the dashboard): ``admin`` or ``*`` among the sub or pub permissions."""
    perms = (*creds.sub_permissions, *creds.pub_permissions)
    return "admin" in perms or "*" in perms


class Sessions:
    """Session tokens ``<name>.<expires>.<nonce>.<hmac>`` under a per-process secret.

    Nothing is stored per session but what logout revokes (until the token would expire
    anyway); the credentials of each admin who logged in are kept by name (at most one entry
    per configured credential). A restart logs everybody out.
    """

    def __init__(self, *, ttl: float = SESSION_TTL, clock: Any = time.time) -> None:
        self._secret = os.urandom(32)
        self.ttl = ttl
        self.clock = clock
        self._admins: dict[str, Credentials] = {}
        self._revoked: dict[str, int] = {}  # signature -> when the token expires

    def _sign(self, body: str) -> str:
        return hmac.new(self._secret, body.encode(), hashlib.sha256).hexdigest()

    def issue(self, creds: Credentials) -> str:
        self._admins[creds.name] = creds
        name = base64.urlsafe_b64encode(creds.name.encode()).decode().rstrip("=")
        # The nonce makes each login's token its own, so a logout revokes that one only.
        body = f"{name}.{int(self.clock() + self.ttl)}.{secrets.token_urlsafe(8)}"
        return f"{body}.{self._sign(body)}"

    def check(self, token: str) -> Credentials | None:
        """The session's credentials, or None if the token is forged, garbled or expired."""
        body, _, sig = token.rpartition(".")
        if not body or not hmac.compare_digest(sig.encode(), self._sign(body).encode()):
            return None
        if sig in self._revoked:
            return None
        name_b64, _, rest = body.partition(".")
        expires = rest.partition(".")[0]
        if not expires.isdigit() or int(expires) < self.clock():
            return None
        try:
            name = base64.urlsafe_b64decode(name_b64 + "=" * (-len(name_b64) % 4)).decode()
        except ValueError:
            return None
        return self._admins.get(name)

    def revoke(self, token: str) -> None:
        """End a session (logout): its token is refused from now on, wherever it is kept."""
        if self.check(token) is None:
            return  # forged or expired: nothing to remember
        now = self.clock()
        self._revoked = {s: exp for s, exp in self._revoked.items() if exp >= now}
        _, expires, _, sig = token.split(".")
        self._revoked[sig] = int(expires)


def sessions_of(request: Request) -> Sessions:
    """The app's sessions (``install`` puts them on ``app.state``)."""
    sessions: Sessions = request.app.state.dashboard_sessions
    return sessions


def address(request: Request) -> str | None:
    """The caller's address, which the failed-login throttle counts by."""
    return request.client.host if request.client else None


def refuse_non_admin(creds: Credentials) -> Credentials:
    """``creds`` if they have admin rights; else PermissionDenied naming the permission."""
    if not is_admin(creds):
        raise PermissionDenied(
            f"{creds.name!r} may not use the dashboard: it needs the 'admin' permission "
            "(or '*') in its sub_permissions or pub_permissions",
            permission="admin",
        )
    return creds


async def _admin(request: Request) -> Credentials:
    """The caller, if it has admin rights: a Bearer header, the session cookie, or nobody on
    a hub with open access."""
    hub = hub_of(request)
    header = request.headers.get("authorization")
    if hub.registry.open_access:
        return Credentials("anonymous")
    if header:
        name, key = parse_bearer(header)
        creds = await hub.registry.authenticate(name, key, address(request))
        return refuse_non_admin(creds)
    token = request.cookies.get(COOKIE)
    if token is None:
        raise AuthenticationFailed("log in, or send 'Authorization: Bearer <name>:<key>'")
    session = sessions_of(request).check(token)
    if session is None:
        raise AuthenticationFailed("the dashboard session has expired or is not valid; log in")
    if request.method not in ("GET", "HEAD") and not request.headers.get(CSRF_HEADER):
        raise PermissionDenied(
            f"a change made with the session cookie needs the {CSRF_HEADER} header"
        )
    return session


# Every dashboard route but login and logout depends on it.
AdminCaller = Annotated[Credentials, Depends(_admin)]
