"""The shop's worker, a process of its own beside the web server (docs/frameworks.md).

    cd examples/django_app && taskhub worker shop.worker

Django is set up first, so handlers can use the ORM and the settings. SIGTERM or Ctrl-C stops
it gracefully (running tasks finish within the grace, the rest go back to the hub).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
django.setup()

from django.conf import settings  # noqa: E402  (after django.setup())
from django.db import close_old_connections  # noqa: E402

from taskhub import Worker  # noqa: E402
from taskhub.worker import SyncTask  # noqa: E402

worker = Worker(
    settings.TASKHUB["url"],
    name=os.environ.get("TASKHUB_WORKER_NAME", "shop-worker"),
    key=settings.TASKHUB["key"],
)
PRICES = {"apple": 40, "pear": 55}  # cents; a real shop reads its models here


def django_task(fn: Callable[[SyncTask], Any]) -> Callable[[SyncTask], Any]:
    """Drop database connections that went stale or broke between tasks, as Django does
    between requests (a worker runs for days; each handler thread keeps its connection)."""

    @functools.wraps(fn)
    def run(task: SyncTask) -> Any:
        close_old_connections()
        try:
            return fn(task)
        finally:
            close_old_connections()

    return run


@worker.task("order:confirm", concurrency=4)
@django_task
def confirm_order(task: SyncTask) -> dict[str, Any]:
    order = task.payload
    return {"order": order["id"], "status": "confirmed"}


@worker.task("shop:quote", concurrency=4)
@django_task
def quote(task: SyncTask) -> int:
    cart = task.payload
    unknown = sorted(set(cart) - set(PRICES))
    if unknown:
        raise ValueError(f"no price for {', '.join(unknown)}")
    return sum(PRICES[item] * count for item, count in cart.items())
