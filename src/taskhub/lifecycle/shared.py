"""What every part of the lifecycle shares: the live tasks, the clock, the defaults, the
timers and the output journal. Each part keeps the ones it uses as its own attributes."""

from __future__ import annotations

from dataclasses import dataclass

from taskhub.lifecycle.journal import Journal
from taskhub.lifecycle.state import Clock, Defaults, Task
from taskhub.timers import Timers


@dataclass(eq=False)
class Shared:
    tasks: dict[str, Task]  # every task not yet ended
    clock: Clock
    defaults: Defaults
    timers: Timers
    journal: Journal
