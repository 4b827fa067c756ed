"""The Python client library: :class:`Client`, the task a handler gets, the publisher's handle."""

from taskhub.client.client import Client, Subscription
from taskhub.client.task import Handle, TaskContext
from taskhub.client.watch import Watch

__all__ = ["Client", "Handle", "Subscription", "TaskContext", "Watch"]
