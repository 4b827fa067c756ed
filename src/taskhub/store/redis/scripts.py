"""The Redis engine's Lua scripts: ``*.lua`` files beside this module, read with
:mod:`importlib.resources` (so they ship in the wheel as package data) and registered on a
client, which calls them with ``EVALSHA`` and loads them again when Redis lost them.

``apply.lua`` and ``remove_ended.lua`` start with ``common.lua`` (the helpers that unindex and
remove a task, and the fence check), after ``args.lua``; ``staged`` is ``apply.lua`` on a
staged piece of a big batch (``staged.lua`` first), ``commit`` and ``drop_staged`` the rest of
that protocol (docs/redis.md, "Big batches"). The batch scripts declare Redis 7 script flags
when the server knows them (:func:`knows_script_flags`).
"""

from __future__ import annotations

import logging
from importlib import resources
from typing import Any

from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError

log = logging.getLogger("taskhub.store.redis")

# A first line that declares script flags (Redis 7+). With none listed, the script is one that
# writes and may not run out of memory, so Redis refuses it with OOM up front, before any of it
# runs, when used memory is over maxmemory (noeviction). A script without the line is checked
# only at its first write that may grow memory, and not at all once the script wrote (a ZREM
# of a task leaving the active set): a full Redis would take such a batch (and grow past
# maxmemory). Flagged scripts must also keep to the
# slot of their KEYS on a Cluster, which the hash tag already ensures. Redis 6 cannot compile
# the line: open() then falls back to the script without it.
SHEBANG = "#!lua\n"
# The scripts by name: the .lua files each is made of, in order.
SOURCES = {
    "apply": ("args", "common", "apply"),
    "staged": ("staged", "common", "apply"),
    "commit": ("commit",),
    "drop_staged": ("drop_staged",),
    "remove_ended": ("args", "common", "remove_ended"),
    "list": ("list",),
    "events": ("events",),
    "list_ended": ("list_ended",),
    "renew": ("renew",),
    "release": ("release",),
}


def source(name: str) -> str:
    """Script ``name``'s Lua source, as Redis runs it without script flags."""
    files = resources.files("taskhub.store.redis")
    return "".join(files.joinpath(f"{part}.lua").read_text("utf-8") for part in SOURCES[name])


APPLY = source("apply")
# The scripts that may grow memory: with script flags, a full Redis refuses them up front.
FLAGGED = ("apply", "staged")


async def knows_script_flags(client: Any, url: str) -> bool:
    """Whether Redis runs the batch script with its ``#!lua`` line (Redis 7+).

    Loads it (``SCRIPT LOAD``, on every primary of a Cluster). Redis 6 fails to compile it;
    then, if the same script without the line loads, the server lacks script flags. When
    neither loads, the trouble is elsewhere (ACLs...): the calls will report it.
    """
    try:
        await client.script_load(SHEBANG + APPLY)
        return True
    except ResponseError as flagged:
        try:
            await client.script_load(APPLY)
        except ResponseError:
            return True
        log.debug("redis store %s refused the #!lua line: %s", url, flagged)
        return False


def register(client: Any, *, flags: bool) -> dict[str, AsyncScript]:
    """Every script, registered on ``client``; the batch script with script flags if
    ``flags`` (what :func:`knows_script_flags` said)."""
    scripts: dict[str, AsyncScript] = {}
    for name in SOURCES:
        text = source(name)
        if name in FLAGGED and flags:
            text = SHEBANG + text
        scripts[name] = client.register_script(text)
    return scripts
