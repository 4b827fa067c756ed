"""Hub configuration: a TOML file, then ``TASKHUB_*`` environment variables, then flags.

```toml
[server]
host = "127.0.0.1"
port = 8080
store = "sqlite:///taskhub.db"
task_start_timeout = 30      # omit for "wait forever"
task_end_timeout = 60

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

``[server]`` also takes ``retention`` (ended tasks kept, seconds or an interval such as
``"7 days"``), ``archive`` (a JSON-lines file removed tasks go to first),
``idempotency_window`` and ``retry_backoff_max``; and for operation (docs/operations.md)
``tls_cert``/``tls_key`` (PEM files: wss:// and https://) and ``shutdown_grace`` (seconds or an
interval; how long a SIGTERM lets started tasks finish, default 10); and for exposure
(docs/operations.md, "Limits") ``allowed_origins``, ``request_timeout``,
``keepalive_timeout`` and ``max_connections_per_address``.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from taskhub.errors import InvalidOption
from taskhub.intervals import parse_interval
from taskhub.server import Server

_SERVER_KEYS: dict[str, type | tuple[type, ...]] = {
    "host": str,
    "port": int,
    "store": str,
    "task_start_timeout": (int, float),
    "task_end_timeout": (int, float),
    "max_frame": int,
    "pickup_window": (int, float),
    "retries": int,
    "max_attempts": int,
    "retry_backoff": (int, float),
    "ping_interval": (int, float),
    "ping_timeout": (int, float),
    "name": str,
    "advertise_url": str,
    "lease": (int, float),
    "retry_backoff_max": (int, float),
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
}
_INTERVAL_KEYS = (
    "idempotency_window",
    "retention",
    "shutdown_grace",
    "request_timeout",
    "keepalive_timeout",
)
_CRED_KEYS = {"name", "key", "key_hash", "sub_permissions", "pub_permissions", "max_connections"}


def load(
    path: str | Path | None = None, env: dict[str, str] | None = None, **overrides: Any
) -> Server:
    """Build a :class:`Server` from a config file, the environment and explicit overrides."""
    settings: dict[str, Any] = {}
    creds: list[dict[str, Any]] = []
    if path is not None:
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
        settings.update(data.get("server", {}))
        creds = list(data.get("credentials", []))
        actions = _actions(data.get("actions", []))
        if actions:
            settings["action_defaults"] = actions
        if data.get("schedules"):
            settings["schedules"] = list(data["schedules"])
    source = os.environ if env is None else env
    for key in _SERVER_KEYS:
        value = source.get(f"TASKHUB_{key.upper()}")
        if value is not None:
            settings[key] = _from_env(key, value)
    settings.update({k: v for k, v in overrides.items() if v is not None})
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
    server = Server(**settings)
    for i, entry in enumerate(creds):
        unknown = set(entry) - _CRED_KEYS
        if unknown:
            raise InvalidOption(f"[[credentials]] #{i + 1}: unknown key(s) {sorted(unknown)}")
        if "name" not in entry:
            raise InvalidOption(f"[[credentials]] #{i + 1} has no name")
        server.add_credentials(
            entry["name"],
            entry.get("key"),
            key_hash=entry.get("key_hash"),
            sub_permissions=entry.get("sub_permissions", []),
            pub_permissions=entry.get("pub_permissions", []),
            max_connections=entry.get("max_connections"),
        )
    return server


def _actions(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for i, entry in enumerate(entries):
        if "name" not in entry:
            raise InvalidOption(f"[[actions]] #{i + 1} has no name (the action)")
        options = {k: v for k, v in entry.items() if k != "name"}
        out[str(entry["name"])] = options
    return out


def _from_env(key: str, value: str) -> Any:
    expected = _SERVER_KEYS[key]
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
