"""The Redis engine's key names, in one place (the Lua scripts derive the same names from the
prefix they are given: ``common.lua``'s key functions and ``list.lua``'s callers).

Layout 3 (``{P}:`` is the store's tag: ``{prefix}:``, ``taskhub`` unless the URL says
``?prefix=NAME``, or ``prefix{p<n>}:`` for partition ``n`` of several)::

    {P}:t:<id>                hash: r = encoded TaskRecord, s = state, a = action,
                              e = ended_at score ('' when none; layout 1 had no e),
                              g<n> = the task's events written by batch n, a JSON array
                              (read in the order of n: a later event of a seq replaces an
                              earlier one); <seq> = one encoded EventRecord (layout 2's)
    {P}:writes                counter: the number of the last batch written (its g<n>)
    {P}:active                zset, every score 0: ids of live tasks (any state not terminal)
    {P}:state:<state>         zset, every score 0: ids of terminal tasks by state, in byte
                              (= code point) order
    {P}:sa:<state>:<action>   zset: terminal ids by state and action
    {P}:ended                 zset scored by ended_at: terminal tasks, in removal order
    {P}:meta:<kind>           hash: key -> encoded metadata value
    {P}:stage:<id>            list: a big batch's pieces (apply.lua's arguments, one after
                              the other), staged before it is committed
    {P}:staging               set: ids of big batches being staged (not committed yet)
    {P}:committed             hash: id -> the lengths of its pieces not applied yet
    {P}:lock:<name>           string with a TTL: a lock's owner token
    {P}:hb:<name>             string with a TTL: a heartbeat

Layout 2 (the same, but each event in a field ``<seq>`` of its own) is read as it is: its
events come before any ``g<n>``, which only a later version writes.

A task is in one set while it lives (``active``) and in three once it ended; its state and
action sit in its hash, so a page of live tasks of one state or action is a filtered read of
``active``, and a page of every task the merge of ``active`` with the terminal states' sets
(``list.lua``). A write then moves a task between sets only when it ends, in one call per set
for a whole batch (``apply.lua``).

Layout 1 (taskhub 0.1's engine) also kept ``{P}:all`` and ``{P}:action:<action>``, state and
state+action sets for live tasks too, and events in a hash of their own, ``{P}:ev:<id>``. Its
active, terminal and ended sets are layout 2's: layout 2 reads a layout-1 store as it is. The
first batch written to it takes the live tasks out of the sets layout 2 does not keep and
drops ``all``; a terminal layout-1 task (its hash has ``s`` but no ``e``) leaves its action
set when it is written again or removed; ``ev:<id>`` is read beside the task's hash and
deleted with it.
"""

from __future__ import annotations

from taskhub.records import TERMINAL_STATES, TaskState

# The terminal states, in a fixed order: each has its index sets; every other state is live.
TERMINAL_ORDER = tuple(s for s in TaskState if s in TERMINAL_STATES)


def store_tag(prefix: str, partition: int | None) -> str:
    """What every key of a store starts with: ``{prefix}:``, or ``prefix{p<n>}:`` for
    partition ``n`` of several (its own hash tag, docs/deployment.md "Partitions")."""
    return "{" + prefix + "}:" if partition is None else f"{prefix}{{p{partition}}}:"


class Keys:
    """The key names of the store whose keys start with ``tag`` (:func:`store_tag`)."""

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def key(self, *parts: str) -> str:
        """A key of this store: ``{prefix}:part:part``."""
        return self.tag + ":".join(parts)

    def task(self, task_id: str) -> str:
        return self.tag + "t:" + task_id

    def legacy_events(self, task_id: str) -> str:
        """Layout 1's event hash of a task (read and deleted, never written)."""
        return self.tag + "ev:" + task_id

    def writes(self) -> str:
        """The counter of batches written: batch n writes its events in fields g<n>."""
        return self.tag + "writes"

    def route(self) -> str:
        """The key a batch script is called with: it routes the call to the store's slot on
        a Cluster (the script derives every key it touches from the prefix)."""
        return self.tag + "ended"

    def ended(self) -> str:
        return self.tag + "ended"

    def stage(self, batch_id: str) -> str:
        """The list a big batch's pieces are staged in (docs/redis.md, "Big batches")."""
        return self.tag + "stage:" + batch_id

    def staging(self) -> str:
        return self.tag + "staging"

    def committed(self) -> str:
        return self.tag + "committed"

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
