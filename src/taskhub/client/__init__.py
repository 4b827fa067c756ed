"""The Python client library: :class:`Client`, the task a handler gets, the publisher's handle."""

from taskhub.client.client import Client, Subscription
from taskhub.client.publisher import PubItem
from taskhub.client.task import Handle, TaskContext
from taskhub.client.watch import Watch
from taskhub.options_table import PubArgs

__all__ = ["Client", "Handle", "PubArgs", "PubItem", "Subscription", "TaskContext", "Watch"]
