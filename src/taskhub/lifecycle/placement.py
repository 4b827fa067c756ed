"""Where a task lives when the hub runs several partitions (docs/deployment.md, "Partitions").

Chains run over the lifecycle of one partition but publish steps whose actions may belong to
another, and follow steps that live elsewhere: they ask a :class:`Placement` which lifecycle
that is. With one partition every answer is the one
lifecycle (:class:`OnePartition`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

from taskhub.lifecycle.core import Lifecycle
from taskhub.protocol import PubOptions
from taskhub.records import TaskRecord


class StepPub(NamedTuple):
    """A chain's step to publish, in the name of the chain's ``publisher`` (every step's
    permission was checked when the chain started); ``extra`` names the chain and the step."""

    publisher: str
    action: str
    payload: Any
    options: PubOptions | None
    extra: dict[str, Any]


class Elsewhere(Protocol):
    """A partition another hub leads, as chains reach it (the hub-to-hub link): a step is
    published there, and a step that ended here moves its chain on there. (A schedule's slot
    goes there through the hub's ``Firing``: lifecycle/schedules.py, ``Fires``.)"""

    def publish_step(self, step: StepPub, *, task_id: str | None = None) -> str:
        """Publish a chain's step there; its task id (``task_id``, or one made here for that
        partition). A step that cannot be published there comes back as ended, failed, with
        why."""

    def step_ended(self, chain_id: str, index: int, rec: TaskRecord) -> None:
        """Step ``index`` of chain ``chain_id``, held there, ended as ``rec`` says."""

    def cancel_step(self, task_id: str, error: dict[str, Any]) -> None:
        """The chain failed: its step ``task_id``, running there, fails with ``error``."""


class Placement(Protocol):
    """Which partition's lifecycle holds what."""

    @property
    def lifecycles(self) -> Sequence[Lifecycle]:
        """Every partition's lifecycle, in partition order."""

    def of_task(self, task_id: str) -> Lifecycle:
        """The lifecycle of the partition ``task_id`` was made in."""

    def for_action(self, action: str) -> Lifecycle:
        """The lifecycle of the partition that holds ``action``'s group queues."""

    def elsewhere_for(self, action: str) -> Elsewhere | None:
        """``action``'s partition where another hub leads it; None where this hub does."""

    def elsewhere_of(self, task_id: str) -> Elsewhere | None:
        """``task_id``'s partition where another hub leads it; None where this hub does."""


class OnePartition:
    """One lifecycle holds everything."""

    def __init__(self, lc: Lifecycle) -> None:
        self.lc = lc
        self.lifecycles = (lc,)

    def of_task(self, task_id: str) -> Lifecycle:
        return self.lc

    def for_action(self, action: str) -> Lifecycle:
        return self.lc

    def elsewhere_for(self, action: str) -> Elsewhere | None:
        return None

    def elsewhere_of(self, task_id: str) -> Elsewhere | None:
        return None
