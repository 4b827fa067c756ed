"""The Redis engine's key names, in one place (the Lua scripts derive the same names from the
prefix they are given: ``common.lua``'s key functions and ``list.lua``'s callers).

Layout 2 (``P`` is the prefix, ``taskhub`` unless the URL says ``?prefix=NAME``)::

    {P}:t:<id>                hash: r = encoded TaskRecord, s = state, a = action,
                              e = ended_at score ('' while live), v = '2' (the layout),
                              <seq> = encoded EventRecord (a replayed seq overwrites)
    {P}:state:<state>         zset, every score 0: ids by state, in byte (= code point) order
    {P}:sa:<state>:<action>   zset: ids by both, so a doubly filtered page is one range read
    {P}:ended                 zset scored by ended_at: terminal tasks, in removal order
    {P}:meta:<kind>           hash: key -> encoded metadata value
    {P}:lock:<name>           string with a TTL: a lock's owner token
    {P}:hb:<name>             string with a TTL: a heartbeat

Every task is in exactly one ``state:`` set, so "all tasks" is the merge of the five state
sets, "active tasks" the merge of the live ones, and "tasks of an action" the merge of its
five ``sa:`` sets (``list.lua``): a write keeps two index sets per task, not five.

Layout 1 (what taskhub 0.1's engine wrote) also kept ``{P}:all``, ``{P}:active`` and
``{P}:action:<action>`` zsets, and events in a hash of their own, ``{P}:ev:<id>``. Its state,
``sa:`` and ended sets are the same, so layout 2 reads a layout-1 store as it is; a layout-1
task (its hash has ``s`` but no ``v``) leaves the old sets when it is next written or removed,
and ``ev:<id>`` is read beside the task's hash and deleted with it.
"""

from __future__ import annotations

from taskhub.records import TERMINAL_STATES, TaskState

LAYOUT = "2"  # the hash field v of a task written in this layout
# Every state a task can be in, and the live ones: the sets that are merged for a page.
STATES = tuple(TaskState)
LIVE_STATES = tuple(s for s in TaskState if s not in TERMINAL_STATES)


class Keys:
    """The key names of the store whose hash tag is ``{prefix}:``."""

    def __init__(self, prefix: str) -> None:
        self.tag = "{" + prefix + "}:"

    def key(self, *parts: str) -> str:
        """A key of this store: ``{prefix}:part:part``."""
        return self.tag + ":".join(parts)

    def task(self, task_id: str) -> str:
        return self.tag + "t:" + task_id

    def legacy_events(self, task_id: str) -> str:
        """Layout 1's event hash of a task (read and deleted, never written)."""
        return self.tag + "ev:" + task_id

    def route(self) -> str:
        """The key a batch script is called with: it routes the call to the store's slot on
        a Cluster (the script derives every key it touches from the prefix)."""
        return self.tag + "ended"

    def ended(self) -> str:
        return self.tag + "ended"

    def meta(self, kind: str) -> str:
        return self.tag + "meta:" + kind

    def lock(self, name: str) -> str:
        return self.tag + "lock:" + name

    def heartbeat(self, name: str) -> str:
        return self.tag + "hb:" + name

    def index(self, state: str, action: str | None) -> str:
        """The set of the tasks in ``state`` (of ``action`` if given). A page of several
        states is the merge of their sets (``list.lua``)."""
        if action is None:
            return self.tag + "state:" + state
        return self.tag + "sa:" + state + ":" + action
