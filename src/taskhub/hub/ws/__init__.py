"""The WebSocket transport: the endpoint, its frame feed and send queue, and uvicorn's protocol.

``endpoint`` authenticates a connection and serves it; ``transport`` is uvicorn's WebSocket
protocol tuned for the hub's traffic (frames written and handed over without a queue).
"""

from taskhub.hub.ws.endpoint import (
    CHUNK,
    CLOSE_AUTH,
    CLOSE_TOO_MANY,
    CLOSE_TOO_SLOW,
    FrameFeed,
    serve_connection,
)
from taskhub.hub.ws.transport import EXTENSION, HubWebSocketProtocol

__all__ = [
    "CHUNK",
    "CLOSE_AUTH",
    "CLOSE_TOO_MANY",
    "CLOSE_TOO_SLOW",
    "EXTENSION",
    "FrameFeed",
    "HubWebSocketProtocol",
    "serve_connection",
]
