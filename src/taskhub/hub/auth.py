"""Credentials: keys kept only as scrypt hashes, compared in constant time, and the work that
callers who are not (yet) authenticated can make the hub do kept small.

Every failed attempt costs the same, whatever the name: one scrypt, against the stored hash
of a known name or against a random one for an unknown name. A key that verified once is
remembered as an HMAC of name and key under a per-process secret, so its later logins skip
scrypt; a wrong key never matches that HMAC and pays the scrypt like any other guess.
scrypt runs in a small pool of its own (not the event loop's default executor, which file
and store calls share), and :class:`Throttle` bounds what one address can queue there.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import os
import secrets
import string
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from taskhub.errors import AuthenticationFailed, InvalidOption, TooManyConnections
from taskhub.lifecycle import Credentials
from taskhub.names import validate_permission

if TYPE_CHECKING:
    from taskhub.hub.slots import SharedSlots

_N, _R, _P = 2**14, 8, 1  # scrypt cost: about 20-90 ms per check, once per credential
_DKLEN = 32
# scrypt threads of the process (every hub in it shares them). Two: scrypt releases the GIL,
# and more threads than cores would only make each check slower.
AUTH_THREADS = 2
# Key checks waiting for those threads, over every address: past this, an attempt that needs
# scrypt is refused at once (and so is not slowed further by the ones queued before it).
MAX_PENDING = 64


def hash_key(key: str, *, salt: bytes | None = None) -> str:
    """``scrypt$<salt hex>$<hash hex>``: what the config file stores instead of a key."""
    salt = salt or os.urandom(16)
    digest = hashlib.scrypt(key.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=_DKLEN)
    return f"scrypt${salt.hex()}${digest.hex()}"


def new_key() -> str:
    return secrets.token_urlsafe(32)


def parse_hash(stored: str) -> tuple[bytes, bytes]:
    """(salt, digest) of a ``hash_key`` string; ValueError saying what is wrong otherwise."""
    parts = stored.split("$")
    if len(parts) != 3 or parts[0] != "scrypt":
        raise ValueError("it is not of the form scrypt$<salt hex>$<hash hex>")
    salt_hex, digest_hex = parts[1], parts[2]
    hexdigits = set(string.hexdigits)
    if not salt_hex or len(salt_hex) % 2 or not set(salt_hex) <= hexdigits:
        raise ValueError("its salt is not hexadecimal bytes")
    if len(digest_hex) != 2 * _DKLEN or not set(digest_hex) <= hexdigits:
        raise ValueError(f"its hash is not {2 * _DKLEN} hexadecimal digits")
    return bytes.fromhex(salt_hex), bytes.fromhex(digest_hex)


def verify_key(key: str, key_hash: str) -> bool:
    """Whether ``key`` is the key of ``key_hash`` (a :func:`hash_key` string); one scrypt."""
    try:
        salt, digest = parse_hash(key_hash)
    except ValueError:
        return False
    return _verify(key, salt, digest)


def _verify(key: str, salt: bytes, digest: bytes) -> bool:
    derived = hashlib.scrypt(key.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=_DKLEN)
    return hmac.compare_digest(derived, digest)


_pool: ThreadPoolExecutor | None = None


def _scrypt_pool() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(AUTH_THREADS, thread_name_prefix="taskhub-auth")
    return _pool


class AuthThrottled(AuthenticationFailed):
    """Too many failed or concurrent key checks from one address (or in all): refused without
    checking the key. ``details["retry_after"]`` is the seconds to wait."""


@dataclass
class _Address:
    failures: int = 0  # since the last quiet period
    last_failure: float = 0.0
    blocked_until: float = 0.0
    checking: int = 0  # key checks of this address waiting or running now


class Throttle:
    """Per source address: at most ``max_checking`` key checks at a time, and after
    ``free_failures`` failed ones a wait before the next, doubling from ``backoff`` up to
    ``max_backoff`` seconds. An address forgets its failures after ``max_backoff`` seconds
    without one. IPv6 addresses count by their /64 (one host usually owns a whole /64).

    Pure: the clock is injected; at most ``max_addresses`` addresses are remembered (the
    oldest are dropped first), so the table's memory is bounded whatever the callers.
    """

    def __init__(
        self,
        *,
        free_failures: int = 5,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        max_checking: int = 2,
        max_addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free_failures = free_failures
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_checking = max_checking
        self.max_addresses = max_addresses
        self.clock = clock
        self._addresses: dict[str, _Address] = {}

    @staticmethod
    def key(address: str | None) -> str:
        if not address:
            return ""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return address
        if isinstance(ip, ipaddress.IPv6Address):
            if ip.ipv4_mapped is not None:
                return str(ip.ipv4_mapped)
            return str(ipaddress.ip_network(f"{ip}/64", strict=False))
        return str(ip)

    def begin(self, address: str | None) -> None:
        """Count a key check that starts now; AuthThrottled if the address must wait."""
        key = self.key(address)
        state = self._addresses.get(key)
        now = self.clock()
        if state is None:
            state = self._addresses[key] = _Address()
            self._bound()
        elif state.failures and now - state.last_failure > self.max_backoff:
            state.failures = 0  # quiet long enough: a clean slate
        if now < state.blocked_until:
            wait = state.blocked_until - now
            raise AuthThrottled(
                f"too many failed authentications from {address}; retry in {wait:.1f} s",
                retry_after=round(wait, 1),
            )
        if state.checking >= self.max_checking:
            raise AuthThrottled(
                f"too many authentications from {address} at once; retry in {self.backoff:.0f} s",
                retry_after=self.backoff,
            )
        state.checking += 1

    def end(self, address: str | None, ok: bool) -> None:
        """The check that :meth:`begin` counted is over: its key was right or wrong."""
        key = self.key(address)
        state = self._addresses.get(key)
        if state is None:
            return
        state.checking = max(0, state.checking - 1)
        if ok:
            return  # failures are not forgiven by a success: they age out (see the class)
        now = self.clock()
        state.failures += 1
        state.last_failure = now
        over = state.failures - self.free_failures
        if over >= 0:
            wait = min(self.backoff * 2**over, self.max_backoff)
            state.blocked_until = now + wait

    def _bound(self) -> None:
        while len(self._addresses) > self.max_addresses:
            oldest = next(iter(self._addresses))
            if self._addresses[oldest].checking:  # in use: move it to the young end
                self._addresses[oldest] = self._addresses.pop(oldest)
                continue
            del self._addresses[oldest]


@dataclass(eq=False)
class _Entry:
    creds: Credentials
    salt: bytes
    digest: bytes
    fast: bytes | None = None  # HMAC of name and key under a per-process secret, once verified


@dataclass
class AuthCounts:
    """What authentication cost since start (exported by ``/metrics``)."""

    key_checks: int = 0  # scrypt runs: the expensive work callers make the hub do
    failures: int = 0  # wrong key or unknown name
    throttled: int = 0  # refused without a key check (Throttle, or MAX_PENDING)


class Registry:
    """The credentials a hub accepts and how many connections each has open (here, and with
    :attr:`shared` on every hub of the deployment)."""

    def __init__(self, *, throttle: Throttle | None = None) -> None:
        self._entries: dict[str, _Entry] = {}
        self._secret = os.urandom(32)
        self.connections: dict[str, int] = {}  # this hub's open connections by service
        # With hubs sharing a store (hub/membership.py): the connections of a credential with
        # max_connections are counted across them too.
        self.shared: SharedSlots | None = None
        self.throttle = throttle or Throttle()
        self.counts = AuthCounts()
        self._pending = 0  # key checks waiting for or in the scrypt pool
        # Web pages an open-access hub answers besides its own (hub/http/origin.py).
        self.allowed_origins: frozenset[str] = frozenset()

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
        try:
            salt, digest = parse_hash(key_hash if key_hash is not None else hash_key(key or ""))
        except ValueError as exc:
            shown = key_hash if key_hash is not None and len(key_hash) <= 24 else "..."
            raise InvalidOption(
                f"credential {name!r}: key_hash {shown!r} is not a hash from "
                f"'taskhub creds hash': {exc}"
            ) from None
        creds = Credentials(
            name,
            tuple(validate_permission(p) for p in sub_permissions),
            tuple(validate_permission(p) for p in pub_permissions),
            max_connections,
        )
        self._entries[name] = _Entry(creds, salt, digest)
        return creds

    async def authenticate(self, name: str, key: str, address: str | None = None) -> Credentials:
        """The credentials of ``name`` if ``key`` is its key; AuthenticationFailed otherwise
        (AuthThrottled, without a key check, when ``address`` tried too much)."""
        if self.open_access:
            return Credentials(name or "anonymous")
        entry = self._entries.get(name)
        fast = hmac.new(self._secret, f"{name}\0{key}".encode(), "sha256").digest()
        if entry is not None and entry.fast is not None and hmac.compare_digest(entry.fast, fast):
            return entry.creds  # this very key verified before
        if self._pending >= MAX_PENDING:
            self.counts.throttled += 1
            raise AuthThrottled("the hub is busy checking keys; retry in 1 s", retry_after=1.0)
        try:
            self.throttle.begin(address)
        except AuthThrottled:
            self.counts.throttled += 1
            raise
        # An unknown name is checked against a random hash: the same one scrypt as a known one.
        salt, digest = (entry.salt, entry.digest) if entry else (os.urandom(16), os.urandom(32))
        ok = False
        self._pending += 1
        self.counts.key_checks += 1
        try:
            loop = asyncio.get_running_loop()
            ok = await loop.run_in_executor(_scrypt_pool(), _verify, key, salt, digest)
        finally:
            self._pending -= 1
            self.throttle.end(address, ok)
        if not ok or entry is None:
            self.counts.failures += 1
            raise AuthenticationFailed(f"unknown credential name or wrong key for {name!r}")
        entry.fast = fast
        return entry.creds

    async def claim_connection(self, creds: Credentials) -> None:
        """Count a new connection of ``creds``; TooManyConnections past its
        ``max_connections``: this hub's connections, and with :attr:`shared` every hub's of
        the deployment (StoreUnavailable when the store cannot count them)."""
        name, limit = creds.name, creds.max_connections
        n = self.connections.get(name, 0)
        if limit is not None and n >= limit:
            raise _too_many(name, n, limit)
        self.connections[name] = n + 1
        if limit is None or self.shared is None:
            return
        try:
            besides = await self.shared.claim(name, limit)
        except BaseException:
            self.release_connection(creds)
            raise
        if besides is not None:
            self.release_connection(creds)
            raise _too_many(name, besides, limit)

    def release_connection(self, creds: Credentials) -> None:
        n = self.connections.get(creds.name, 0) - 1
        if n <= 0:
            self.connections.pop(creds.name, None)
        else:
            self.connections[creds.name] = n
        if creds.max_connections is not None and self.shared is not None:
            self.shared.changed(creds.name)

    def held(self, name: str) -> int:
        """The connections of ``name`` this hub counts now."""
        return self.connections.get(name, 0)


def _too_many(name: str, n: int, limit: int) -> TooManyConnections:
    return TooManyConnections(
        f"{name!r} already has {n} connection(s), its max_connections is {limit}"
    )


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
