"""The batch consumer against a real broker: every record applied once, across a rebalance.

The applier here (:class:`tests.clameur.in_memory.InMemoryApplier`) keeps its effect and
its offsets together in memory, as tally and notify keep theirs in one Postgres
transaction; it stands in for them behind the same :class:`clameur.consumer.BatchApplier`
protocol and passes the same contract suite.  A record applied twice (read before the
seek to stored offsets, or prefetched before a rebalance and applied after it) or never
applied fails these tests.  With two batches in flight, so does a batch committed ahead
of the one before it: stored offsets would pass records not applied yet.
"""

from __future__ import annotations

import asyncio
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
from clameur.retry import RetryPolicy
from clameur.topics import Topics
from tests.clameur.in_memory import InMemoryApplier, InMemoryStore
from tests.support import eventually

PARTITIONS = [0, 1, 2]  # the signatures topic of the ``topics`` fixture


async def _produce(bootstrap: str, topic: str, count: int) -> None:
    producer = create_producer(bootstrap, linger_ms=20)
    await producer.start()
    try:
        # Spread over every partition, whatever the keys hash to: each instance of a group
        # then has records to apply after a rebalance.
        acks = [
            await producer.send(topic, b"record %d" % n, key=b"key %d" % n, partition=n % len(PARTITIONS))
            for n in range(count)
        ]
        await asyncio.gather(*acks)
    finally:
        await producer.stop()


def _consumer(
    infra: Any, topics: Topics, group: str, applier: InMemoryApplier[bytes], name: str, in_flight: int = 1
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
            max_records=50,
            max_wait_s=0.05,
            retry=RetryPolicy(initial_s=0.01, maximum_s=10.0),
            applies_in_flight=in_flight,
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
    store: InMemoryStore[bytes] = InMemoryStore()
    applier = InMemoryApplier(store, delay_s=0.02)
    consumer = _consumer(infra, topics, new_id("group"), applier, "one", in_flight)
    task = await _run(consumer)
    try:
        await eventually(lambda: _total(store, 2_000), within=60, what="2,000 records applied")
        # The topic is now idle: the last batch's offsets must show too, not wait for a next one.
        await eventually(lambda: _lag_is_zero(consumer), within=10, what="the lag gauge at zero")
    finally:
        await _stop(consumer, task)
    assert sum(store.deliveries.values()) == len(store.deliveries) == 2_000, "a record was applied twice"
    assert not store.gaps


async def test_with_two_batches_in_flight_a_failed_batch_is_never_overtaken(
    infra: Any, topics: Topics, new_id: Any
) -> None:
    """Every third attempt fails after preparing, while the next batch is already in flight:
    that one must wait for the retry, or the stored offsets would pass the failed records."""
    await _produce(infra.kafka, topics.signatures, 1_000)
    store: InMemoryStore[bytes] = InMemoryStore()
    applier = InMemoryApplier(store, delay_s=0.01, fail_every=3)
    consumer = _consumer(infra, topics, new_id("group"), applier, "one", in_flight=2)
    task = await _run(consumer)
    try:
        await eventually(lambda: _total(store, 1_000), within=60, what="1,000 records applied")
    finally:
        await _stop(consumer, task)
    assert applier.failures >= 5, "the test did not fail enough batches to mean anything"
    assert not store.gaps, f"offsets stored past records not applied: {store.gaps[:5]}"
    assert sum(store.deliveries.values()) == len(store.deliveries) == 1_000, "a record was applied twice"


@pytest.mark.parametrize("in_flight", [1, 2])
async def test_a_rebalance_in_the_middle_applies_every_record_once(
    infra: Any, topics: Topics, new_id: Any, in_flight: int
) -> None:
    """A second instance joins while the first applies a backlog slowly, so batches are
    being applied and read ahead when the partitions move.  The test first proves that
    this happened (the first instance gave partitions away and kept the rest, the second
    took them and applied records while the first was still running), then that every
    record was applied exactly once and no stored offset passed a record not applied."""
    group = new_id("group")
    store: InMemoryStore[bytes] = InMemoryStore()  # one "database" for the group
    # Slow applies: a batch read during the rebalance would still be applying when the
    # other instance seeks to the stored offsets.
    first_applier = InMemoryApplier(store, delay_s=0.3)
    second_applier = InMemoryApplier(store, delay_s=0.3)
    await _produce(infra.kafka, topics.signatures, 1_500)
    first = _consumer(infra, topics, group, first_applier, "first", in_flight)
    first_task = await _run(first)
    second = _consumer(infra, topics, group, second_applier, "second", in_flight)
    second_task: asyncio.Task[None] | None = None
    try:
        await eventually(lambda: _total(store, 150), within=60, what="the first batches applied")
        second_task = await _run(second)  # joins the group: the partitions are shared anew
        await _produce(infra.kafka, topics.signatures, 300)
        await eventually(
            lambda: _committed(second_applier), within=90, what="the second instance applying records"
        )
        assert not first_task.done(), "the first instance stopped before the second took over"
        await eventually(lambda: _total(store, 1_800), within=120, what="1,800 records applied")
        assert not first_task.done() and not second_task.done(), "an instance stopped on an error"
        # Before either stops: a stop is a rebalance too, that gives the other everything.
        _assert_the_partitions_moved(first_applier, second_applier)
    finally:
        await _stop(first, first_task)
        if second_task is not None:
            await _stop(second, second_task)
    twice = [record for record, times in store.deliveries.items() if times > 1]
    assert not twice, f"applied more than once: {twice[:5]}"
    assert len(store.deliveries) == 1_800
    assert not store.gaps, f"offsets stored past records not applied: {store.gaps[:5]}"


def _assert_the_partitions_moved(first: InMemoryApplier[bytes], second: InMemoryApplier[bytes]) -> None:
    """Each assignment asks the applier for its partitions' stored offsets, once: what each
    instance asked shows what it was assigned, in order."""
    assert first.asked, "the first instance was never assigned anything"
    assert first.asked[0] == PARTITIONS, f"the first instance began with {first.asked[0]}, not all"
    # A smaller assignment after the first one: the first instance's partitions were
    # revoked and only some came back (the group rebalances eagerly: revoke all, assign).
    smaller = [partitions for partitions in first.asked[1:] if len(partitions) < len(PARTITIONS)]
    assert smaller, f"the first instance never lost a partition: it asked for {first.asked}"
    assert second.asked, "the second instance was never assigned a partition"
    assert not set(first.asked[-1]) & set(second.asked[-1]), "both instances hold a partition"
    assert sorted(first.asked[-1] + second.asked[-1]) == PARTITIONS
    assert second.committed > 0 and first.committed > 0


async def _total(store: InMemoryStore[bytes], at_least: int) -> bool:
    return len(store.deliveries) >= at_least


async def _committed(applier: InMemoryApplier[bytes]) -> bool:
    return applier.committed > 0


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
    zero: dict[str, Any] = {field: 0}
    with pytest.raises(ValueError, match="at least 1"):
        BatchLimits(**zero)
