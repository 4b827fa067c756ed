"""The site's TaskHub client: one per process, connected on first use, shared by every view.

Views call ``taskhub()``; the blocking client is thread-safe, so a threaded server's threads
share it. It connects on first use, not at import, so ``manage.py migrate`` and the like
never connect. A preforking server (gunicorn, uWSGI) may fork its workers from a master that
has used it: a forked child's client connects again on its first call (the parent's
connection stays the parent's).
"""

from __future__ import annotations

import threading

from django.conf import settings

from taskhub.sync import Client

_lock = threading.Lock()
_client: Client | None = None


def taskhub() -> Client:
    global _client
    with _lock:
        if _client is None:
            _client = Client(**settings.TASKHUB).connect()
        return _client
