"""Where a task lives when the hub runs several partitions (docs/deployment.md, "Partitions").

Chains and schedules run over the lifecycle of one partition but publish steps and tasks whose
actions may belong to another, and follow steps that live elsewhere: they ask a
:class:`Placement` which lifecycle that is. With one partition every answer is the one
lifecycle (:class:`OnePartition`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from taskhub.lifecycle.core import Lifecycle


class Placement(Protocol):
    """Which partition's lifecycle holds what."""

    @property
    def lifecycles(self) -> Sequence[Lifecycle]:
        """Every partition's lifecycle, in partition order."""

    def of_task(self, task_id: str) -> Lifecycle:
        """The lifecycle of the partition ``task_id`` was made in."""

    def for_action(self, action: str) -> Lifecycle:
        """The lifecycle of the partition that holds ``action``'s group queues."""


class OnePartition:
    """One lifecycle holds everything."""

    def __init__(self, lc: Lifecycle) -> None:
        self.lc = lc
        self.lifecycles = (lc,)

    def of_task(self, task_id: str) -> Lifecycle:
        return self.lc

    def for_action(self, action: str) -> Lifecycle:
        return self.lc
