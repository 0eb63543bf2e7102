"""An in-memory :class:`clameur.consumer.BatchApplier`: the effect and the offsets kept together.

It stands in for tally's and notify's Postgres appliers behind the same protocol and
passes the same contract suite (``tests/clameur/applier_contract.py``), so the fast tests
and the real ones cannot drift apart.  Besides its effect it records, as an instrument for
tests, how many committed applies carried each record and every offset stored past a
record never applied: a consumer that applies a record twice or skips one is caught.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from clameur.consumer import Batch

T = TypeVar("T")

# Kafka's own ranges: a partition is an int32, an offset an int64.  A store must refuse
# what it could not hold, as Postgres refuses them in tally's and notify's tables.
_PARTITIONS = range(2**31)
_OFFSETS = range(2**63)


@dataclass
class InMemoryStore(Generic[T]):
    """What the appliers of one consumer group share, as instances share one database."""

    effect: dict[tuple[str, int, int], T] = field(default_factory=dict)
    """Each record applied, by ``(topic, partition, offset)``: applying it again changes nothing."""
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    deliveries: Counter[tuple[int, int]] = field(default_factory=Counter)
    """How many committed applies carried each ``(partition, offset)`` (an instrument, not the effect)."""
    gaps: list[tuple[int, int]] = field(default_factory=list)
    """``(partition, offset)`` passed by a stored offset but never applied."""
    transaction: asyncio.Lock = field(default_factory=asyncio.Lock)


class InMemoryApplier(Generic[T]):
    """Applies a batch by keeping its events, with its offsets, in ``store``.

    Like tally's: it prepares (``delay_s``, the database's time: the next batch is read
    meanwhile), waits for the batch before to be applied, then commits.  ``fail_every``:
    every n-th attempt fails after preparing, as a transaction cut by a database restart
    would.  Offsets outside Kafka's ranges are refused before anything is kept.

    As instruments for tests, it also keeps the partitions each :meth:`stored_offsets`
    call asked for (a consumer asks once per assignment, before its seek) and how many
    records this applier committed.
    """

    def __init__(
        self, store: InMemoryStore[T] | None = None, *, delay_s: float = 0.0, fail_every: int = 0
    ) -> None:
        self.store: InMemoryStore[T] = store if store is not None else InMemoryStore()
        self.delay_s = delay_s
        self.fail_every = fail_every
        self.attempts = 0
        self.failures = 0
        self.asked: list[list[int]] = []
        self.committed = 0

    async def stored_offsets(self, topic: str, partitions: Collection[int]) -> dict[int, int]:
        self.asked.append(sorted(partitions))
        offsets = self.store.offsets
        return {
            partition: offsets[topic, partition] for partition in partitions if (topic, partition) in offsets
        }

    async def apply(self, batch: Batch[T]) -> None:
        self.attempts += 1
        attempt = self.attempts
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail_every and attempt % self.fail_every == 0:
            self.failures += 1
            raise ConnectionError("the database went away (test)")
        _refuse_out_of_range(batch.next_offsets)
        await batch.previous_applied()
        async with self.store.transaction:
            self._commit(batch)

    def _commit(self, batch: Batch[T]) -> None:
        store = self.store
        for consumed in batch.events:
            store.effect[batch.topic, consumed.partition, consumed.offset] = consumed.event
        store.deliveries.update((consumed.partition, consumed.offset) for consumed in batch.events)
        self.committed += len(batch.events)
        for partition, offset in batch.next_offsets.items():
            stored = store.offsets.get((batch.topic, partition), 0)
            store.gaps.extend(
                (partition, skipped)
                for skipped in range(stored, offset)
                if (batch.topic, partition, skipped) not in store.effect
            )
            store.offsets[batch.topic, partition] = max(stored, offset)


def _refuse_out_of_range(next_offsets: Mapping[int, int]) -> None:
    for partition, offset in next_offsets.items():
        if partition not in _PARTITIONS or offset not in _OFFSETS:
            raise ValueError(f"partition {partition} or offset {offset} outside Kafka's ranges")
