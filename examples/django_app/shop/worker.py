"""The shop's worker, a process of its own beside the web server (docs/frameworks.md).

    cd examples/django_app && python -m shop.worker

Django is set up first, so handlers can use the ORM and the settings. It works until it is
stopped (Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import functools
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
django.setup()

from django.conf import settings  # noqa: E402  (after django.setup())
from django.db import close_old_connections  # noqa: E402

from taskhub.sync import Client, Task  # noqa: E402

PRICES = {"apple": 40, "pear": 55}  # cents; a real shop reads its models here


def django_task(fn: Callable[[Task], Any]) -> Callable[[Task], Any]:
    """Drop database connections that went stale or broke between tasks, as Django does
    between requests (a worker runs for days; each handler thread keeps its connection)."""

    @functools.wraps(fn)
    def run(task: Task) -> Any:
        close_old_connections()
        try:
            return fn(task)
        finally:
            close_old_connections()

    return run


@django_task
def confirm_order(task: Task) -> dict[str, Any]:
    order = task.payload
    return {"order": order["id"], "status": "confirmed"}


@django_task
def quote(task: Task) -> int:
    cart = task.payload
    unknown = sorted(set(cart) - set(PRICES))
    if unknown:
        raise ValueError(f"no price for {', '.join(unknown)}")
    return sum(PRICES[item] * count for item, count in cart.items())


def main() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    options = {**settings.TASKHUB, "name": os.environ.get("TASKHUB_WORKER_NAME", "shop-worker")}
    with Client(**options) as client:
        client.sub("order:confirm", confirm_order, concurrency=4)
        client.sub("shop:quote", quote, concurrency=4)
        print("worker ready", flush=True)
        stop.wait()


if __name__ == "__main__":
    main()
