"""Storage engines behind one interface; :func:`open_store` picks one by URL."""

from __future__ import annotations

from taskhub.store.base import DeliveryRecord, EventRecord, Store, TaskRecord, WriteBatch

__all__ = ["DeliveryRecord", "EventRecord", "Store", "TaskRecord", "WriteBatch", "open_store"]


def open_store(url: str) -> Store:
    """``memory://``, ``sqlite:///path/to/file.db`` (or ``sqlite://:memory:``)."""
    if url.startswith("memory:"):
        from taskhub.store.memory import MemoryStore

        return MemoryStore()
    if url.startswith("sqlite:"):
        from taskhub.store.sqlite import SqliteStore

        return SqliteStore.from_url(url)
    raise ValueError(f"unknown store URL {url!r}: use memory:// or sqlite:///path")
