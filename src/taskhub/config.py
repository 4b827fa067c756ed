"""Hub configuration: a TOML file, then ``TASKHUB_*`` environment variables, then flags.

```toml
[server]
host = "127.0.0.1"
port = 8080
store = "sqlite:///taskhub.db"
start_timeout = 30           # hub defaults of the pub options of the same names; omit
timeout = 60                 #   start_timeout for "wait forever"

[[credentials]]
name = "emailer"
key_hash = "scrypt$..."      # from `taskhub creds hash`; `key = "..."` is accepted too
sub_permissions = ["email/bulk:send"]
pub_permissions = ["email:send", "weather"]
max_connections = 1

[[actions]]                  # per-action option defaults (docs/scheduling.md)
name = "email:send"
retries = 3
backoff = 2                  # seconds (or "2s"), doubled per retry, with jitter
backoff_max = "5m"
max_attempts = 5

[[schedules]]                # cron schedules; removed from the file -> removed from the hub
name = "nightly-report"
cron = "0 3 * * *"
action = "report:build"
payload = {kind = "daily"}
timezone = "Europe/Oslo"
```

Credentials can also come from outside the file, for containers (docs/deployment.md):
``TASKHUB_CREDENTIALS`` holds a JSON list of objects with the ``[[credentials]]`` keys, and
``TASKHUB_CREDENTIALS_FILE`` (or ``taskhub serve --credentials-file``) names a TOML file of
``[[credentials]]`` tables (a Docker or Kubernetes secret). All sources add up; a name given
twice is refused.

``[server]`` also takes ``retention`` (ended tasks kept, seconds or an interval such as
``"7 days"``), ``archive`` (a JSON-lines file removed tasks go to first),
``idempotency_window``, ``retries``, ``max_attempts``, ``backoff`` and ``backoff_max``; and for
operation (docs/operations.md)
``tls_cert``/``tls_key`` (PEM files: wss:// and https://) and ``shutdown_grace`` (seconds or an
interval; how long a SIGTERM lets started tasks finish, default 10); and for exposure
(docs/operations.md, "Limits") ``allowed_origins``, ``request_timeout``,
``keepalive_timeout``, ``max_connections_per_address`` and ``trusted_proxies``; and
``partitions`` (docs/deployment.md, "Partitions"): how many partitions the work is split
into, from 1 (the default) to 1024, recorded in the store by the first hub and fixed from then;
and ``processes``: how many hub processes ``taskhub serve`` runs on this machine, sharing the
port (default 1; more need ``partitions`` > 1 and a sqlite file or Redis store).
"""

from __future__ import annotations

import json
import logging
import os
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from taskhub.errors import InvalidOption
from taskhub.intervals import parse_interval
from taskhub.options_table import CONFIG_KEYS, OLD_CONFIG_KEYS

if TYPE_CHECKING:
    from taskhub.server import Server

log = logging.getLogger("taskhub.config")

_SERVER_KEYS: dict[str, type | tuple[type, ...]] = {
    "host": str,
    "port": int,
    "store": str,
    # Hub-wide defaults of the pub options of the same names (options_table.CONFIG_KEYS).
    "start_timeout": (int, float),
    "timeout": (int, float),
    "max_frame": int,
    "max_send_buffer": int,  # bytes waiting for one slow reader (docs/operations.md)
    "pickup_window": (int, float),
    "retries": int,
    "max_attempts": int,
    "backoff": (int, float),
    "ping_interval": (int, float),
    "ping_timeout": (int, float),
    "name": str,
    "advertise_url": str,
    "lease": (int, float),
    "backoff_max": (int, float),
    "idempotency_window": (int, float, str),  # strings: intervals ("1h")
    "retention": (int, float, str),
    "archive": str,
    "tls_cert": str,  # PEM files: serve wss:// and https:// (docs/operations.md)
    "tls_key": str,
    "shutdown_grace": (int, float, str),  # seconds (or "30s") started tasks get on SIGTERM
    # Exposure (docs/operations.md, "Limits"); the env form of a list is comma-separated.
    "allowed_origins": list,
    "request_timeout": (int, float, str),
    "keepalive_timeout": (int, float, str),
    "max_connections_per_address": int,
    "trusted_proxies": list,
    "partitions": int,  # fixed per deployment (docs/deployment.md, "Partitions")
    "processes": int,  # hub processes `taskhub serve` runs on this machine
}
_INTERVAL_KEYS = (
    "idempotency_window",
    "retention",
    "shutdown_grace",
    "request_timeout",
    "keepalive_timeout",
)
_CRED_KEYS = {"name", "key", "key_hash", "sub_permissions", "pub_permissions", "max_connections"}
CREDENTIALS_ENV = "TASKHUB_CREDENTIALS"
CREDENTIALS_FILE_ENV = "TASKHUB_CREDENTIALS_FILE"

# Every [server] setting: (its default, its meaning), for `taskhub serve --help` (each is also
# TASKHUB_<KEY>). docs/operations.md has the same table.
SETTINGS: dict[str, tuple[str, str]] = {
    "host": ("127.0.0.1", "address to listen on; anything but loopback needs credentials"),
    "port": ("8080", "WebSocket and HTTP on one port (0: any free port)"),
    "store": (
        "sqlite:///taskhub.db",
        "memory://, sqlite:///relative.db, sqlite:////absolute.db, redis://host:port/db",
    ),
    "name": ("hub", "the hub's name in welcome and the dashboard"),
    "start_timeout": ("none: wait forever", "default start timeout of a task, seconds"),
    "timeout": ("60", "default end timeout of a task, seconds after it started"),
    "pickup_window": ("10", "an offer neither acked nor picked up goes elsewhere after this"),
    "retries": ("0", "default retries after a handler failure"),
    "max_attempts": ("5", "started attempts (lost or failed) before a delivery fails"),
    "backoff": ("1", "first retry delay, seconds, doubled per retry, with jitter"),
    "backoff_max": ("300", "cap of the retry delay, seconds"),
    "idempotency_window": ("1h", "how long a pub key returns the same task"),
    "retention": ("7 days", "how long ended tasks are kept"),
    "archive": ("none", "JSON-lines file removed tasks are appended to first"),
    "max_frame": ("1048576", "largest inbound frame, bytes"),
    "ping_interval": ("5", "WebSocket keepalive interval, seconds"),
    "ping_timeout": ("5", "a peer silent this long after a ping is dropped"),
    "advertise_url": ("the listen URL", "where the other hubs of a cluster reach this one"),
    "lease": ("3", "seconds a leader's lock or a partition's lease lives unrenewed"),
    "tls_cert": ("none", "PEM certificate (chain): serve wss:// and https://"),
    "tls_key": ("none", "PEM private key of tls_cert"),
    "shutdown_grace": ("10", "seconds (or 30s) started tasks get to finish on SIGTERM"),
    "max_send_buffer": ("16777216", "bytes waiting for a slow reader before it is closed"),
    "request_timeout": ("10", "seconds a connection has to send a whole HTTP request"),
    "keepalive_timeout": ("5", "seconds an idle HTTP connection is kept after an answer"),
    "max_connections_per_address": (
        "256",
        "HTTP connections one client address may hold (0: no cap)",
    ),
    "allowed_origins": ("none", "web pages a hub without credentials answers (comma-separated)"),
    "trusted_proxies": ("127.0.0.1,::1", "proxies whose X-Forwarded-For names the client"),
    "partitions": ("1", "partitions the work is split into, 1-1024; fixed per store"),
    "processes": ("1", "hub processes taskhub serve runs, sharing the port (partitions > 1)"),
}


def load(
    path: str | Path | None = None,
    env: dict[str, str] | None = None,
    credentials_file: str | Path | None = None,
    **overrides: Any,
) -> Server:
    """Build a :class:`Server` from a config file, the environment and explicit overrides.

    Credentials come from the file's ``[[credentials]]``, ``credentials_file`` (or
    ``TASKHUB_CREDENTIALS_FILE``) and ``TASKHUB_CREDENTIALS`` (a JSON list). The keys older
    versions named differently (``task_end_timeout`` for ``timeout``...) are still read, with
    a warning naming the key to use."""
    # Here, not at the top: `taskhub serve --help` reads SETTINGS where only [cli] is installed.
    from taskhub.server import Server

    settings, creds = _read_file(path) if path is not None else ({}, [])
    source = os.environ if env is None else env
    sources = [(f"config file {str(path)!r} [[credentials]]", creds)] if creds else []
    secrets = credentials_file or source.get(CREDENTIALS_FILE_ENV)
    if secrets:
        sources.append((f"credentials file {str(secrets)!r}", _credentials_file(secrets)))
    if source.get(CREDENTIALS_ENV):
        sources.append((CREDENTIALS_ENV, _credentials_env(source[CREDENTIALS_ENV])))
    settings.update(_environment(source))
    given = {k: v for k, v in overrides.items() if v is not None}
    settings.update(_renamed(given, lambda key: f"load({key}=...)"))
    server = Server(**_server_arguments(settings))
    _add_credentials(server, sources)
    return server


def _read_file(path: str | Path) -> tuple[dict[str, Any], list[Any]]:
    """The settings (``[server]``, ``[[actions]]``, ``[[schedules]]``) and the credentials of
    a TOML config file."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InvalidOption(f"config file {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidOption(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    unknown = set(data) - {"server", "credentials", "actions", "schedules"}
    if unknown:
        raise InvalidOption(
            f"config file: unknown section(s) {sorted(unknown)}; known: server, "
            "credentials, actions, schedules"
        )
    settings = _renamed(dict(data.get("server", {})), lambda key: f"[server] {key}")
    actions = _actions(data.get("actions", []))
    if actions:
        settings["action_defaults"] = actions
    if data.get("schedules"):
        settings["schedules"] = list(data["schedules"])
    return settings, list(data.get("credentials", []))


def _environment(source: Mapping[str, str]) -> dict[str, Any]:
    """The ``[server]`` settings given as ``TASKHUB_<KEY>`` variables."""
    settings: dict[str, Any] = {}
    for key in (*_SERVER_KEYS, *OLD_CONFIG_KEYS):
        value = source.get(f"TASKHUB_{key.upper()}")
        if value is not None:
            settings[key] = _from_env(key, value)
    return _renamed(settings, lambda key: f"TASKHUB_{key.upper()}")


def _renamed(settings: dict[str, Any], spell: Callable[[str], str]) -> dict[str, Any]:
    """``settings`` with the keys older versions named differently (``OLD_CONFIG_KEYS``:
    ``task_end_timeout``...) under the options' names, each with a warning that says what
    to use instead. ``spell`` writes a key as its source does (``TASKHUB_TIMEOUT``)."""
    for old, new in OLD_CONFIG_KEYS.items():
        if old not in settings:
            continue
        if new in settings:
            raise InvalidOption(
                f"{spell(old)} and {spell(new)} are the same setting ({spell(old)} is its old, "
                f"deprecated name): give only {spell(new)}"
            )
        log.warning(
            "%s is deprecated: use %s, named as the pub option it is the default of "
            "(the old name still works)",
            spell(old),
            spell(new),
        )
        settings[new] = settings.pop(old)
    return settings


def _server_arguments(settings: dict[str, Any]) -> dict[str, Any]:
    """Checked settings as :class:`Server`'s arguments: types checked, intervals parsed, the
    options' defaults under Server's names (``timeout`` -> ``task_end_timeout``)."""
    for key, value in settings.items():
        if key in ("action_defaults", "schedules"):
            continue  # sections, checked by Server
        expected = _SERVER_KEYS.get(key)
        if expected is None:
            raise InvalidOption(
                f"[server] has an unknown setting {key!r}; known: {', '.join(sorted(_SERVER_KEYS))}"
            )
        if not isinstance(value, expected) or isinstance(value, bool):
            raise InvalidOption(f"[server] {key} has the wrong type: {value!r}")
    for key in _INTERVAL_KEYS:
        if isinstance(settings.get(key), str):
            settings[key] = parse_interval(settings[key], option=f"[server] {key}")
    return {CONFIG_KEYS.get(key, key): value for key, value in settings.items()}


def _add_credentials(server: Server, sources: list[tuple[str, list[Any]]]) -> None:
    """Add every credential of every source; a name given twice is refused."""
    seen: dict[str, str] = {}
    for where, entries in sources:
        for i, entry in enumerate(entries):
            name = _check_credential(f"{where} #{i + 1}", entry)
            if name in seen:
                raise InvalidOption(
                    f"credential {name!r} is given twice: in {seen[name]} and in {where}"
                )
            seen[name] = where
            server.add_credentials(
                name,
                entry.get("key"),
                key_hash=entry.get("key_hash"),
                sub_permissions=entry.get("sub_permissions", []),
                pub_permissions=entry.get("pub_permissions", []),
                max_connections=entry.get("max_connections"),
            )


def _check_credential(where: str, entry: Any) -> str:
    """The entry's name, after checking its keys and their types (a string where a list of
    permissions belongs would otherwise be read letter by letter)."""
    if not isinstance(entry, dict):
        raise InvalidOption(f"{where} must be a table/object, not {type(entry).__name__}")
    unknown = set(entry) - _CRED_KEYS
    if unknown:
        raise InvalidOption(
            f"{where}: unknown key(s) {sorted(unknown)}; known: {', '.join(sorted(_CRED_KEYS))}"
        )
    name = entry.get("name")
    if not isinstance(name, str):
        raise InvalidOption(f"{where} has no name (a string)")
    for key in ("key", "key_hash"):
        if key in entry and not isinstance(entry[key], str):
            raise InvalidOption(f"{where} ({name}): {key} must be a string")
    for key in ("sub_permissions", "pub_permissions"):
        value = entry.get(key, [])
        if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
            raise InvalidOption(f"{where} ({name}): {key} must be a list of strings")
    limit = entry.get("max_connections")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)):
        raise InvalidOption(f"{where} ({name}): max_connections must be an integer")
    return name


def _credentials_file(path: str | Path) -> list[Any]:
    """A TOML file of ``[[credentials]]`` tables: what ``taskhub creds add --config FILE``
    writes, mounted as a secret."""
    where = f"credentials file {str(path)!r}"
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InvalidOption(f"{where} does not exist") from None
    except OSError as exc:
        raise InvalidOption(f"{where}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidOption(f"{where} is not valid TOML: {exc}") from None
    unknown = set(data) - {"credentials"}
    if unknown:
        raise InvalidOption(
            f"{where}: unknown section(s) {sorted(unknown)}; it holds only [[credentials]]"
        )
    entries = data.get("credentials", [])
    if not isinstance(entries, list):
        raise InvalidOption(f"{where}: credentials must be [[credentials]] tables")
    return entries


def _credentials_env(text: str) -> list[Any]:
    # The value holds keys: errors say where, never echo it.
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidOption(
            f"{CREDENTIALS_ENV} is not valid JSON ({exc.msg} at character {exc.pos}); expected "
            '[{"name": "...", "key_hash": "scrypt$...", "pub_permissions": [...]}, ...]'
        ) from None
    if isinstance(data, dict):
        return [data]
    if not isinstance(data, list):
        raise InvalidOption(f"{CREDENTIALS_ENV} must be a JSON list of credential objects")
    return data


def _actions(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for i, entry in enumerate(entries):
        if "name" not in entry:
            raise InvalidOption(f"[[actions]] #{i + 1} has no name (the action)")
        options = {k: v for k, v in entry.items() if k != "name"}
        out[str(entry["name"])] = options
    return out


def _from_env(key: str, value: str) -> Any:
    expected = _SERVER_KEYS[OLD_CONFIG_KEYS.get(key, key)]
    if key in _INTERVAL_KEYS:
        return value  # parsed with the file's values: "7 days" or seconds
    if expected is list:
        return [item.strip() for item in value.split(",") if item.strip()]
    try:
        if expected is int:
            return int(value)
        if expected == (int, float):
            return float(value)
    except ValueError:
        raise InvalidOption(f"TASKHUB_{key.upper()}={value!r} is not a number") from None
    return value
