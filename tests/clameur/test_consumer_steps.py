"""The consumer's steps one by one, without a broker: each keeps the promise its docstring makes.

Kafka is replaced by small fakes of the few calls each step makes, time by a clock the
test moves, and retrying by a function that tries once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaConnectionError
from aiokafka.structs import ConsumerRecord
from prometheus_client import CollectorRegistry, Gauge

from clameur.consumer import (
    AssignmentGate,
    Batch,
    BatchDecoder,
    BatchLimits,
    BatchReader,
    Consumed,
    ConsumerMetrics,
    DeadLetters,
    InOrderApplies,
    KafkaCommits,
    LagReport,
    _Read,
)
from tests.clameur.in_memory import InMemoryApplier, InMemoryStore

R = TypeVar("R")
TOPIC = "signatures.v2"


def _record(partition: int, offset: int, value: bytes | None = b"ok") -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(TOPIC, partition, offset, 0, 0, None, value, None, 0, len(value or b""), [])


async def _once(what: str, attempt: Callable[[], Awaitable[R]]) -> R:
    return await attempt()


class FakeKafka:
    """The calls of AIOKafkaConsumer the steps make, from lists the test fills."""

    def __init__(self, clock: list[float] | None = None, per_fetch_s: float = 0.0) -> None:
        self.fetches: list[list[ConsumerRecord[bytes, bytes]]] = []
        self.clock = clock
        self.per_fetch_s = per_fetch_s
        self.assigned: set[TopicPartition] = set()
        self.commits: list[dict[TopicPartition, int]] = []
        self.commit_error: Exception | None = None
        self.highwaters: dict[TopicPartition, int] = {}

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Any]]:
        if self.clock is not None:
            self.clock[0] += self.per_fetch_s
        if not self.fetches:
            return {}
        records = self.fetches.pop(0)[:max_records]
        return {TopicPartition(TOPIC, 0): records}

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self.commit_error is not None:
            raise self.commit_error
        self.commits.append(offsets)

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.highwaters.get(tp)


# -- read -------------------------------------------------------------------------------------------


async def test_the_reader_never_takes_more_than_max_records() -> None:
    kafka = FakeKafka()
    kafka.fetches = [[_record(0, n) for n in range(start, start + 40)] for start in range(0, 400, 40)]
    limits = BatchLimits(max_records=100, read_slice=40, max_wait_s=60)
    reader = BatchReader(cast(AIOKafkaConsumer, kafka), limits, lambda: 0.0, lambda: False)
    records = await reader.read()
    assert [record.offset for record in records] == list(range(100))


async def test_the_reader_stops_gathering_once_max_wait_has_passed_by_its_clock() -> None:
    now = [0.0]
    kafka = FakeKafka(clock=now, per_fetch_s=0.1)  # each fetch takes 0.1 s of the test's time
    kafka.fetches = [[_record(0, n)] for n in range(50)]
    limits = BatchLimits(max_wait_s=0.25)
    reader = BatchReader(cast(AIOKafkaConsumer, kafka), limits, lambda: now[0], lambda: False)
    records = await reader.read()
    # The deadline is 0.35 (first fetch done at 0.1): fetches end at 0.2, 0.3, 0.4, then it stops.
    assert len(records) == 4
    assert len(kafka.fetches) == 46


async def test_the_reader_returns_nothing_when_nothing_came() -> None:
    reader = BatchReader(cast(AIOKafkaConsumer, FakeKafka()), BatchLimits(), lambda: 0.0, lambda: False)
    assert await reader.read() == []


# -- decode or set aside ----------------------------------------------------------------------------


class FakeDlq:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None]] = []

    async def send_and_wait(
        self, topic: str, *, value: bytes | None, key: bytes | None, headers: Any
    ) -> None:
        self.sent.append((topic, value))


def _decode(value: bytes) -> str:
    if value.startswith(b"poison"):
        raise ValueError("not an event")
    return value.decode()


async def test_poison_goes_to_the_dlq_and_the_offsets_pass_it() -> None:
    dlq = FakeDlq()
    registry = CollectorRegistry()
    metrics = ConsumerMetrics(registry, "test")
    dead_letters = DeadLetters(cast(AIOKafkaProducer, dlq), metrics, TOPIC, _once)
    decoder = BatchDecoder(TOPIC, _decode, dead_letters, metrics, read_slice=2)
    records = [_record(0, 7, b"a"), _record(1, 3, b"poison"), _record(0, 8, None), _record(0, 9, b"b")]
    batch = await decoder.decode(records)
    assert [(c.event, c.partition, c.offset) for c in batch.events] == [("a", 0, 7), ("b", 0, 9)]
    assert batch.next_offsets == {0: 10, 1: 4}
    assert batch.poisoned == 2
    assert dlq.sent == [(f"{TOPIC}.dlq", b"poison"), (f"{TOPIC}.dlq", None)]
    assert registry.get_sample_value("clameur_dlq_records_total", {"service": "test", "topic": TOPIC}) == 2
    assert (
        registry.get_sample_value("clameur_consumer_records_total", {"service": "test", "topic": TOPIC}) == 4
    )


# -- apply in order ---------------------------------------------------------------------------------


def _read(generation: int, partition: int, first: int, count: int) -> _Read[bytes]:
    events = [Consumed(b"%d" % n, partition, n, 0) for n in range(first, first + count)]
    return _Read(generation, Batch(TOPIC, events, {partition: first + count}))


async def test_a_batch_read_before_a_revocation_is_dropped_not_applied() -> None:
    gate = AssignmentGate()
    gate.open()
    store: InMemoryStore[bytes] = InMemoryStore()
    applied: list[dict[int, int]] = []
    applies = InOrderApplies(InMemoryApplier(store), gate, 1, _once, lambda b: applied.append(b.next_offsets))
    stale = _read(gate.generation, 0, 0, 5)
    await applies.revoke()
    assert not gate.is_open and gate.generation == 1
    await applies.hand_over(stale)
    await applies.finish()
    assert applied == [] and not store.effect
    await applies.hand_over(_read(gate.generation, 0, 0, 5))
    await applies.finish()
    assert applied == [{0: 5}]


async def test_batches_in_flight_are_applied_in_order_and_a_revocation_waits_for_them() -> None:
    gate = AssignmentGate()
    applied: list[int] = []
    applier: InMemoryApplier[bytes] = InMemoryApplier(delay_s=0.05)
    applies = InOrderApplies(applier, gate, 3, _once, lambda b: applied.append(b.next_offsets[0]))
    for first in (0, 10, 20):
        await applies.hand_over(_read(0, 0, first, 10))
    await applies.revoke()  # returns once all three are applied
    assert applied == [10, 20, 30]
    assert applier.store.offsets == {(TOPIC, 0): 30}
    await applies.finish()


class FirstBatchFails(InMemoryApplier[bytes]):
    """The first batch handed over fails (and is not retried here); the others apply as usual."""

    async def apply(self, batch: Batch[bytes]) -> None:
        if batch.previous is None:
            await asyncio.sleep(0.05)
            raise ConnectionError("the database went away (test)")
        await super().apply(batch)


async def test_a_batch_given_up_makes_the_ones_after_it_store_nothing() -> None:
    applier = FirstBatchFails()
    applies = InOrderApplies(applier, AssignmentGate(), 2, _once, lambda b: None)
    await applies.hand_over(_read(0, 0, 0, 5))
    with pytest.raises(ConnectionError):
        await applies.hand_over(_read(0, 0, 5, 5))  # waits for room: the first gives up
    await applies.abandon()
    assert applier.store.offsets == {} and not applier.store.effect


# -- commit -----------------------------------------------------------------------------------------


async def test_commits_take_the_newest_offset_of_each_partition_still_assigned() -> None:
    kafka = FakeKafka()
    kafka.assigned = {TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)}
    commits = KafkaCommits(cast(AIOKafkaConsumer, kafka), TOPIC, timeout_s=1)
    commits.offer({0: 10, 2: 4})
    commits.offer({0: 20, 1: 5})
    commits.close()
    await asyncio.wait_for(commits.run(), timeout=1)
    assert kafka.commits == [{TopicPartition(TOPIC, 0): 20, TopicPartition(TOPIC, 1): 5}]


async def test_a_failed_kafka_commit_is_skipped_not_raised() -> None:
    kafka = FakeKafka()
    kafka.assigned = {TopicPartition(TOPIC, 0)}
    kafka.commit_error = KafkaConnectionError()
    commits = KafkaCommits(cast(AIOKafkaConsumer, kafka), TOPIC, timeout_s=1)
    commits.offer({0: 10})
    commits.close()
    await asyncio.wait_for(commits.run(), timeout=1)
    assert kafka.commits == []


# -- report -----------------------------------------------------------------------------------------


def test_the_lag_is_the_highwater_minus_the_next_offset_never_below_zero() -> None:
    kafka = FakeKafka()
    kafka.highwaters = {TopicPartition(TOPIC, 0): 100, TopicPartition(TOPIC, 1): 5}
    lag = Gauge("lag", "Lag.", ["partition"], registry=CollectorRegistry())
    LagReport(cast(AIOKafkaConsumer, kafka), TOPIC, lag).observe({0: 60, 1: 9, 2: 3})
    values = {
        sample.labels["partition"]: sample.value for family in lag.collect() for sample in family.samples
    }
    assert values == {"0": 40, "1": 0}  # partition 2: no high-water mark known yet


# -- the gate ---------------------------------------------------------------------------------------


async def test_the_gate_is_closed_until_opened_and_every_close_starts_a_generation() -> None:
    gate = AssignmentGate()
    assert not await gate.wait_open(0.01)
    gate.open()
    assert await gate.wait_open(0.01)
    gate.close()
    gate.close()
    assert not gate.is_open and gate.generation == 2
