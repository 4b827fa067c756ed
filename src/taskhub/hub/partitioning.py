"""The partition count a deployment was set up with, recorded in its store by the first hub
and checked by every later one (docs/deployment.md, "Partitions")."""

from __future__ import annotations

from taskhub.errors import PartitionsMismatch
from taskhub.lifecycle import QUEUE_META
from taskhub.records import MetaRecord, WriteBatch
from taskhub.store import Store

# Where the count lives: a metadata entry of the store's cluster-wide namespace (with one
# partition, the store itself).
PARTITIONS_META = ("cluster", "partitions")


async def check_partition_count(store: Store, partitions: int) -> None:
    """Record ``partitions`` in ``store`` on a first start; raise
    :class:`~taskhub.errors.PartitionsMismatch` (one line naming both numbers) when the store
    was set up with another count.

    A store that records nothing was used by hubs of one partition (or by none): it records
    nothing more for one partition, so its layout stays exactly that of a hub before
    partitions; a hub of several partitions takes it only while it holds no work (its tasks
    and durable queues would be out of every partition's sight).
    """
    kind, key = PARTITIONS_META
    recorded = await store.get_meta(kind, key)
    if recorded is None:
        if partitions == 1:
            return
        if await store.list_tasks(limit=1) or await store.list_meta(QUEUE_META):
            recorded = 1
        else:
            await store.apply(WriteBatch(meta=[MetaRecord(kind, key, partitions)]))
            return
    if recorded != partitions:
        raise PartitionsMismatch(
            f"store {store.url} was set up with {recorded} partition(s) and this hub was "
            f"started with {partitions}: the count is fixed per store, start every hub with "
            f"partitions = {recorded} (or use a new store)",
            recorded=recorded,
            partitions=partitions,
        )
