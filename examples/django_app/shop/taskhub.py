"""The site's TaskHub client: one per process, connected on first use, shared by every view.

Views call ``taskhub()``; the blocking client is thread-safe, so a threaded server's threads
share it. A preforking server (gunicorn, uWSGI) imports the site in its master and forks the
workers from it: a client connected before the fork cannot be used in a child (its loop
thread stayed in the master), so each process connects its own on first use, and a forked
child makes a new one.
"""

from __future__ import annotations

import os
import threading

from django.conf import settings

from taskhub.sync import Client

_lock = threading.Lock()
_client: Client | None = None
_pid = 0


def taskhub() -> Client:
    global _client, _pid
    with _lock:
        if _client is None or _pid != os.getpid():
            _client = Client(**settings.TASKHUB).connect()
            _pid = os.getpid()
        return _client
