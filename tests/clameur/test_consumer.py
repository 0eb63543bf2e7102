"""The batch consumer against a real broker: every record applied once, across a rebalance.

The applier here keeps its effect and its offsets together in memory, as tally and notify
keep theirs in one Postgres transaction; it stands in for them behind the same
:class:`clameur.consumer.BatchApplier` protocol.  A record applied twice (read before the
seek to stored offsets, or prefetched before a rebalance and applied after it) or never
applied fails these tests.  With two batches in flight, so does a batch committed ahead
of the one before it: stored offsets would pass records not applied yet.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Collection
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Gauge

from clameur.consumer import (
    Batch,
    BatchConsumer,
    BatchLimits,
    ConsumerMetrics,
    Outcome,
    PreviousBatchNotApplied,
)
from clameur.kafka import create_producer
from clameur.topics import Topics
from tests.support import eventually


class RecordingApplier:
    """Applies a batch by remembering its records; the offsets are stored with them.

    Like tally's: it prepares (``delay_s``), waits for the batch before to be applied, then
    "commits".  ``fail_every``: every n-th attempt fails after preparing, as a transaction
    cut by a database restart would.  Each commit checks that the offsets it stores pass
    only records applied (the topic's offsets are contiguous: no transactions).
    """

    def __init__(
        self, applied: Counter[tuple[int, int]], offsets: dict[int, int], delay_s: float, fail_every: int = 0
    ) -> None:
        self.applied = applied
        self.offsets = offsets
        self.delay_s = delay_s
        self.fail_every = fail_every
        self.attempts = 0
        self.failures = 0
        self.gaps: list[tuple[int, int]] = []  # (partition, offset) passed by a stored offset, not applied
        self.lock = asyncio.Lock()  # the "transaction": shared by the instances of a group

    async def stored_offsets(self, topic: str, partitions: Collection[int]) -> dict[int, int]:
        return {partition: self.offsets[partition] for partition in partitions if partition in self.offsets}

    async def apply(self, batch: Batch[bytes]) -> None:
        self.attempts += 1
        attempt = self.attempts
        await asyncio.sleep(self.delay_s)  # the database's time: the next batch is read meanwhile
        if self.fail_every and attempt % self.fail_every == 0:
            self.failures += 1
            raise ConnectionError("the database went away (test)")
        await batch.previous_applied()
        async with self.lock:
            self.applied.update((consumed.partition, consumed.offset) for consumed in batch.events)
            for partition, offset in batch.next_offsets.items():
                stored = self.offsets.get(partition, 0)
                self.gaps.extend(
                    (partition, skipped)
                    for skipped in range(stored, offset)
                    if (partition, skipped) not in self.applied
                )
                self.offsets[partition] = max(stored, offset)


async def _produce(bootstrap: str, topic: str, count: int) -> None:
    producer = create_producer(bootstrap, linger_ms=20)
    await producer.start()
    try:
        acks = [await producer.send(topic, b"record %d" % n, key=b"key %d" % (n % 7)) for n in range(count)]
        await asyncio.gather(*acks)
    finally:
        await producer.stop()


def _consumer(
    infra: Any, topics: Topics, group: str, applier: RecordingApplier, name: str, in_flight: int = 1
) -> BatchConsumer[bytes]:
    dlq = create_producer(infra.kafka)
    return BatchConsumer(
        bootstrap=infra.kafka,
        topic=topics.signatures,
        group_id=group,
        decode=bytes,
        applier=applier,
        dlq_producer=dlq,
        metrics=ConsumerMetrics(CollectorRegistry(), name),
        lag=Gauge("lag_records", "Lag.", ["partition"], registry=CollectorRegistry()),
        limits=BatchLimits(
            max_records=50, max_wait_s=0.05, retry_initial_s=0.01, applies_in_flight=in_flight
        ),
        client_id=name,
    )


async def _run(consumer: BatchConsumer[bytes]) -> asyncio.Task[None]:
    await consumer.dlq_producer.start()
    return asyncio.create_task(consumer.run())


async def _stop(consumer: BatchConsumer[bytes], task: asyncio.Task[None]) -> None:
    consumer.stop()
    await asyncio.wait_for(task, timeout=30)
    await consumer.dlq_producer.stop()


@pytest.mark.parametrize("in_flight", [1, 2])
async def test_a_backlog_is_applied_once_each(
    infra: Any, topics: Topics, new_id: Any, in_flight: int
) -> None:
    await _produce(infra.kafka, topics.signatures, 2_000)  # there before the first assignment
    applied: Counter[tuple[int, int]] = Counter()
    applier = RecordingApplier(applied, {}, delay_s=0.02)
    consumer = _consumer(infra, topics, new_id("group"), applier, "one", in_flight)
    task = await _run(consumer)
    try:
        await eventually(lambda: _total(applied, 2_000), within=60, what="2,000 records applied")
        # The topic is now idle: the last batch's offsets must show too, not wait for a next one.
        await eventually(lambda: _lag_is_zero(consumer), within=10, what="the lag gauge at zero")
    finally:
        await _stop(consumer, task)
    assert sum(applied.values()) == len(applied) == 2_000, "a record was applied twice"
    assert not applier.gaps


async def test_with_two_batches_in_flight_a_failed_batch_is_never_overtaken(
    infra: Any, topics: Topics, new_id: Any
) -> None:
    """Every third attempt fails after preparing, while the next batch is already in flight:
    that one must wait for the retry, or the stored offsets would pass the failed records."""
    await _produce(infra.kafka, topics.signatures, 1_000)
    applied: Counter[tuple[int, int]] = Counter()
    applier = RecordingApplier(applied, {}, delay_s=0.01, fail_every=3)
    consumer = _consumer(infra, topics, new_id("group"), applier, "one", in_flight=2)
    task = await _run(consumer)
    try:
        await eventually(lambda: _total(applied, 1_000), within=60, what="1,000 records applied")
    finally:
        await _stop(consumer, task)
    assert applier.failures >= 5, "the test did not fail enough batches to mean anything"
    assert not applier.gaps, f"offsets stored past records not applied: {applier.gaps[:5]}"
    assert sum(applied.values()) == len(applied) == 1_000, "a record was applied twice"


@pytest.mark.parametrize("in_flight", [1, 2])
async def test_a_rebalance_in_the_middle_applies_every_record_once(
    infra: Any, topics: Topics, new_id: Any, in_flight: int
) -> None:
    group = new_id("group")
    applied: Counter[tuple[int, int]] = Counter()
    offsets: dict[int, int] = {}
    shared_lock = asyncio.Lock()
    # Slow applies: a batch read during the rebalance would still be applying when the
    # other instance seeks to the stored offsets.
    first_applier = RecordingApplier(applied, offsets, delay_s=0.3)
    second_applier = RecordingApplier(applied, offsets, delay_s=0.3)
    first_applier.lock = second_applier.lock = shared_lock
    await _produce(infra.kafka, topics.signatures, 1_500)
    first = _consumer(infra, topics, group, first_applier, "first", in_flight)
    first_task = await _run(first)
    second = _consumer(infra, topics, group, second_applier, "second", in_flight)
    second_task: asyncio.Task[None] | None = None
    try:
        await eventually(lambda: _total(applied, 150), within=60, what="the first batches applied")
        second_task = await _run(second)  # joins the group: the partitions are shared anew
        await _produce(infra.kafka, topics.signatures, 300)
        await eventually(lambda: _total(applied, 1_800), within=90, what="1,800 records applied")
    finally:
        await _stop(first, first_task)
        if second_task is not None:
            await _stop(second, second_task)
    twice = [record for record, times in applied.items() if times > 1]
    assert not twice, f"applied more than once: {twice[:5]}"
    assert len(applied) == 1_800
    assert not first_applier.gaps and not second_applier.gaps


async def _total(applied: Counter[tuple[int, int]], at_least: int) -> bool:
    return len(applied) >= at_least


async def _lag_is_zero(consumer: BatchConsumer[bytes]) -> bool:
    assert consumer.lag is not None
    values = [sample.value for metric in consumer.lag.collect() for sample in metric.samples]
    return bool(values) and all(value == 0 for value in values)


# -- the order of batches in flight, without a broker ----------------------------------------------


async def test_a_batch_waits_for_the_one_before_it() -> None:
    previous = Outcome()
    batch: Batch[bytes] = Batch("t", [], {0: 10}, previous=previous)
    waiting = asyncio.create_task(batch.previous_applied())
    await asyncio.sleep(0.05)
    assert not waiting.done()
    previous.settle(applied=True)
    await asyncio.wait_for(waiting, timeout=1)


async def test_a_batch_whose_predecessor_gave_up_does_not_wait_forever() -> None:
    previous = Outcome()
    batch: Batch[bytes] = Batch("t", [], {0: 10}, previous=previous)
    waiting = asyncio.create_task(batch.previous_applied())
    await asyncio.sleep(0.05)
    previous.settle(applied=False)  # the consumer is stopping: this batch must not commit either
    with pytest.raises(PreviousBatchNotApplied):
        await asyncio.wait_for(waiting, timeout=1)


async def test_the_first_batch_in_flight_does_not_wait() -> None:
    await asyncio.wait_for(Batch[bytes]("t", [], {}).previous_applied(), timeout=1)


@pytest.mark.parametrize("field", ["max_records", "read_slice", "applies_in_flight"])
def test_batch_limits_refuse_zero(field: str) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        BatchLimits(**{field: 0})
