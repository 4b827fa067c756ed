"""Credentials: keys kept only as scrypt hashes, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass

from taskhub.errors import AuthenticationFailed, InvalidOption, TooManyConnections
from taskhub.lifecycle import Credentials
from taskhub.names import validate_permission

_N, _R, _P = 2**14, 8, 1  # scrypt cost: about 20-40 ms per check, once per credential


def hash_key(key: str, *, salt: bytes | None = None) -> str:
    """``scrypt$<salt hex>$<hash hex>``: what the config file stores instead of a key."""
    salt = salt or os.urandom(16)
    digest = hashlib.scrypt(key.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return f"scrypt${salt.hex()}${digest.hex()}"


def new_key() -> str:
    return secrets.token_urlsafe(32)


def _verify(key: str, stored: str) -> bool:
    try:
        scheme, salt_hex, digest_hex = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    digest = hashlib.scrypt(key.encode(), salt=bytes.fromhex(salt_hex), n=_N, r=_R, p=_P, dklen=32)
    return hmac.compare_digest(digest, bytes.fromhex(digest_hex))


@dataclass(eq=False)
class _Entry:
    creds: Credentials
    key_hash: str
    fast: bytes | None = None  # HMAC of the key under a per-process secret, once verified


class Registry:
    """The credentials a hub accepts and how many connections each has open."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._secret = os.urandom(32)
        self.connections: dict[str, int] = {}

    @property
    def open_access(self) -> bool:
        """No credentials configured: anyone on loopback, with every permission."""
        return not self._entries

    def add(
        self,
        name: str,
        *,
        key: str | None = None,
        key_hash: str | None = None,
        sub_permissions: list[str] | tuple[str, ...] = (),
        pub_permissions: list[str] | tuple[str, ...] = (),
        max_connections: int | None = None,
    ) -> Credentials:
        if not name or ":" in name:
            raise InvalidOption(f"credential name {name!r} must be non-empty and have no ':'")
        if (key is None) == (key_hash is None):
            raise InvalidOption(f"credential {name!r}: give exactly one of key or key_hash")
        if max_connections is not None and max_connections < 1:
            raise InvalidOption(f"credential {name!r}: max_connections must be >= 1")
        creds = Credentials(
            name,
            tuple(validate_permission(p) for p in sub_permissions),
            tuple(validate_permission(p) for p in pub_permissions),
            max_connections,
        )
        self._entries[name] = _Entry(creds, key_hash or hash_key(key or ""))
        return creds

    def authenticate(self, name: str, key: str) -> Credentials:
        if self.open_access:
            return Credentials(name or "anonymous")
        entry = self._entries.get(name)
        fast = hmac.new(self._secret, key.encode(), "sha256").digest()
        if entry is None:
            _verify(key, hash_key("x"))  # same cost whether or not the name exists
            raise AuthenticationFailed(f"unknown credential name or wrong key for {name!r}")
        if entry.fast is not None:
            ok = hmac.compare_digest(entry.fast, fast)
        else:
            ok = _verify(key, entry.key_hash)
            if ok:
                entry.fast = fast
        if not ok:
            raise AuthenticationFailed(f"unknown credential name or wrong key for {name!r}")
        return entry.creds

    def claim_connection(self, creds: Credentials) -> None:
        n = self.connections.get(creds.name, 0)
        if creds.max_connections is not None and n >= creds.max_connections:
            raise TooManyConnections(
                f"{creds.name!r} already has {n} connection(s), its max_connections is "
                f"{creds.max_connections}"
            )
        self.connections[creds.name] = n + 1

    def release_connection(self, creds: Credentials) -> None:
        n = self.connections.get(creds.name, 0) - 1
        if n <= 0:
            self.connections.pop(creds.name, None)
        else:
            self.connections[creds.name] = n


def parse_bearer(header: str | None) -> tuple[str, str]:
    """``Bearer name:key`` -> (name, key). A missing header is the anonymous service."""
    if not header:
        return "anonymous", ""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value:
        raise AuthenticationFailed("Authorization must be 'Bearer <name>:<key>'")
    name, _, key = value.strip().partition(":")
    if not name:
        raise AuthenticationFailed("Authorization must be 'Bearer <name>:<key>'")
    return name, key
