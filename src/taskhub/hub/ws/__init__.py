"""The WebSocket transport: the endpoint, its frame feed and send queue, and uvicorn's protocol.

``endpoint`` authenticates a connection and serves it; ``feed`` applies its frames in order
(through the hub's dispatcher); ``outbox`` writes the hub's frames, queueing them for a slow
reader up to the limits; ``transport`` is uvicorn's WebSocket protocol tuned for the hub's
traffic (frames written and handed over without a queue).
"""

from taskhub.hub.ws.endpoint import CLOSE_AUTH, CLOSE_TOO_MANY, serve_connection
from taskhub.hub.ws.feed import CHUNK, FrameFeed
from taskhub.hub.ws.outbox import CLOSE_TOO_SLOW, Outbox
from taskhub.hub.ws.transport import EXTENSION, HubWebSocketProtocol

__all__ = [
    "CHUNK",
    "CLOSE_AUTH",
    "CLOSE_TOO_MANY",
    "CLOSE_TOO_SLOW",
    "EXTENSION",
    "FrameFeed",
    "HubWebSocketProtocol",
    "Outbox",
    "serve_connection",
]
