"""``taskhub creds add|ls|rm|hash``: the ``[[credentials]]`` of a hub's TOML config file.

The file is edited in place with ``tomlkit``, so its comments, order and other sections stay
as they were. Keys are never written: only their scrypt hash (``key_hash``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from taskhub.cli_common import AsJson, CliError, err, out

creds_app = typer.Typer(
    no_args_is_help=True, help="Credentials in the config file: add, ls, rm, hash."
)

Config = Annotated[
    Path,
    typer.Option(
        "--config",
        envvar="TASKHUB_CONFIG",
        help="The hub's TOML config file",
        dir_okay=False,
    ),
]
_DEFAULT_CONFIG = Path("taskhub.toml")


def _read(path: Path, *, missing_ok: bool = False) -> Any:
    import tomlkit
    from tomlkit.exceptions import TOMLKitError

    try:
        text = path.read_text()
    except FileNotFoundError:
        if missing_ok:
            return tomlkit.document()
        raise CliError(f"config file {str(path)!r} does not exist") from None
    except OSError as exc:
        raise CliError(f"config file {str(path)!r}: {exc.strerror or exc}") from None
    try:
        doc = tomlkit.parse(text)
    except TOMLKitError as exc:
        raise CliError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    creds = doc.get("credentials")
    if creds is not None and not (
        isinstance(creds, list) and all(isinstance(c, dict) for c in creds)
    ):
        raise CliError(f"config file {str(path)!r}: 'credentials' must be [[credentials]] tables")
    return doc


def _write(path: Path, doc: Any) -> None:
    """Write atomically (a temporary file renamed over the old one), keeping its mode."""
    import tomlkit

    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o600
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as f:
            f.write(tomlkit.dumps(doc))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CliError(f"could not write {str(path)!r}: {exc.strerror or exc}") from None


def _entries(doc: Any) -> list[Any]:
    creds = doc.get("credentials")
    return list(creds) if creds is not None else []


@creds_app.command("add")
def creds_add(
    name: Annotated[str, typer.Argument(help="Credential (service) name")],
    config: Config = _DEFAULT_CONFIG,
    sub: Annotated[
        list[str] | None, typer.Option("--sub", help="Sub permission (repeat for more)")
    ] = None,
    pub: Annotated[
        list[str] | None, typer.Option("--pub", help="Pub permission (repeat for more)")
    ] = None,
    max_connections: Annotated[
        int | None, typer.Option("--max-connections", help="Connections at once")
    ] = None,
) -> None:
    """Create a key for NAME: print it once, store only its hash in the config file."""
    import tomlkit

    from taskhub.hub.auth import hash_key, new_key
    from taskhub.names import validate_permission

    if not name or ":" in name or name != name.strip():
        raise CliError(f"credential name {name!r} must be non-empty, without ':' or spaces")
    subs = [validate_permission(p) for p in sub or []]
    pubs = [validate_permission(p) for p in pub or []]
    if max_connections is not None and max_connections < 1:
        raise CliError("--max-connections must be >= 1")
    doc = _read(config, missing_ok=True)
    if any(entry.get("name") == name for entry in _entries(doc)):
        raise CliError(f"credential {name!r} already exists in {str(config)!r}")
    key = new_key()
    entry = tomlkit.table()
    entry["name"] = name
    entry["key_hash"] = hash_key(key)
    entry["sub_permissions"] = subs
    entry["pub_permissions"] = pubs
    if max_connections is not None:
        entry["max_connections"] = max_connections
    entry.add(tomlkit.nl())  # a blank line before whatever follows it in the file
    if "credentials" not in doc:
        if doc.body:
            doc.add(tomlkit.nl())
        doc.append("credentials", tomlkit.aot())
    doc["credentials"].append(entry)
    _write(config, doc)
    err.print(
        f"added credential {name!r} to {config}. Its key (on stdout) is shown ONCE: the file "
        "keeps only its hash. Restart the hub to use it.",
        highlight=False,
        soft_wrap=True,
    )
    print(key, flush=True)


@creds_app.command("ls")
def creds_ls(config: Config = _DEFAULT_CONFIG, as_json: AsJson = False) -> None:
    """List credentials: names and permissions (never keys or hashes)."""
    rows = [
        {
            "name": str(entry.get("name", "?")),
            "sub_permissions": [str(p) for p in entry.get("sub_permissions", [])],
            "pub_permissions": [str(p) for p in entry.get("pub_permissions", [])],
            "max_connections": entry.get("max_connections"),
            "secret": "key_hash" if "key_hash" in entry else "key" if "key" in entry else "-",
        }
        for entry in _entries(_read(config))
    ]
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    table = Table("name", "sub", "pub", "max_connections", "secret", box=None)
    for row in rows:
        table.add_row(
            row["name"],
            ", ".join(row["sub_permissions"]) or "-",
            ", ".join(row["pub_permissions"]) or "-",
            "-" if row["max_connections"] is None else str(row["max_connections"]),
            row["secret"],
        )
    out.print(table)


@creds_app.command("rm")
def creds_rm(
    name: Annotated[str, typer.Argument(help="Credential name")],
    config: Config = _DEFAULT_CONFIG,
) -> None:
    """Remove a credential from the config file (restart the hub to apply)."""
    doc = _read(config)
    entries = doc.get("credentials")
    index = next((i for i, entry in enumerate(_entries(doc)) if entry.get("name") == name), None)
    if index is None:
        raise CliError(f"no credential {name!r} in {str(config)!r}")
    del entries[index]
    if not entries:
        del doc["credentials"]
    _write(config, doc)
    err.print(f"removed credential {name!r} from {config}", highlight=False)


@creds_app.command("hash")
def creds_hash() -> None:
    """Read a key from stdin; print the key_hash to put in the config file."""
    from taskhub.hub.auth import hash_key

    key = sys.stdin.readline().rstrip("\r\n")
    if not key:
        raise CliError('no key on stdin (e.g. echo "$KEY" | taskhub creds hash)')
    print(hash_key(key), flush=True)
