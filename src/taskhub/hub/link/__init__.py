"""The hub-to-hub link (docs/deployment.md, "The hub-to-hub link"): a hub serves every
connection and reaches a partition another hub leads over one multiplexed WebSocket to it.

``origin`` is the side that serves the clients (:class:`HubLinks`, :class:`RemotePartition`),
``leader`` the endpoint of the hub that leads the partition, ``wire`` the link's frames,
``outgoing`` the per-turn batching both sides share.
"""

from taskhub.hub.link.origin import HubLinks, Link, RemotePartition
from taskhub.hub.link.wire import LINK_PATH

__all__ = ["LINK_PATH", "HubLinks", "Link", "RemotePartition"]
