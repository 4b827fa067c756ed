"""Views that publish tasks with the blocking client (docs/frameworks.md)."""

from __future__ import annotations

import json

from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET, require_POST

from shop.taskhub import taskhub
from taskhub import TaskFailed
from taskhub.errors import TaskNotFound

QUOTE_WAIT = 5.0  # seconds /quote/ waits for its result before answering 504


@require_POST
def place_order(request: HttpRequest) -> JsonResponse:
    """Fire and forget: pub() returns once the hub has stored the task."""
    order = json.loads(request.body)
    handle = taskhub().pub("order:confirm", order, key=f"order-{order['id']}")
    return JsonResponse({"task": handle.id}, status=202)


@require_POST
def quote(request: HttpRequest) -> JsonResponse:
    """Wait for the result within the request, and say so when it takes too long."""
    cart = json.loads(request.body)
    handle = taskhub().pub("shop:quote", cart, timeout=30)
    try:
        return JsonResponse({"total": handle.get_result(timeout=QUOTE_WAIT)})
    except TimeoutError:  # still running: the browser can poll /tasks/<id>/
        return JsonResponse({"task": handle.id, "state": handle.state}, status=504)
    except TaskFailed as exc:  # the worker raised, or the task timed out or was cancelled
        return JsonResponse({"task": handle.id, "error": str(exc)}, status=502)


@require_GET
def task_status(request: HttpRequest, task_id: str) -> JsonResponse:
    try:
        task = taskhub().get(task_id)
    except TaskNotFound:
        return JsonResponse({"error": f"no task {task_id}"}, status=404)
    return JsonResponse({"state": task["state"], "result": task["result"], "error": task["error"]})
