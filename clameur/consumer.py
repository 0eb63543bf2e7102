"""The batch consumer loop shared by tally and notify.

Contract (see docs/architecture.md, "Guarantees"): no auto-commit; a batch is bounded by size and
time; the applier stores the effect *and* each partition's next offset in one
transaction, so the database, not Kafka, says where to resume.  On every assignment
the loop seeks to the offsets the applier stored (the beginning where it stored none).
After the effect is committed the offsets are also committed to Kafka, best effort and
without holding up the next batch, so standard lag tools work.  A record that cannot be
decoded goes to ``<topic>.dlq`` and the partition keeps flowing.  A failing apply
(database restarting, broker gone) is retried with backoff and nothing is committed
until it succeeds.

Reading and applying overlap: while the applier writes one batch, the next one is
fetched and decoded.  An applier may also take up to ``BatchLimits.applies_in_flight``
batches at once, if it commits each only after the one before
(``Batch.previous_applied``); a revocation waits for all of them.

A rebalance makes the batches read before it stale (they may hold records of partitions
given away, or read from positions the seek to stored offsets then moved): each batch
carries the generation it was read in, a revocation starts a new one, and a stale batch
is dropped rather than applied.  Between a revocation and the next assignment nothing is
read at all: aiokafka would still return records of partitions that another instance
may already be reading.  Nothing is lost by the drop, because the assignment begins
with a seek of every partition to its stored offset.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Generic, NamedTuple, Protocol, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord
from prometheus_client import CollectorRegistry, Counter, Gauge

from clameur.kafka import send_to_dlq

T = TypeVar("T")
R = TypeVar("R")

logger = logging.getLogger(__name__)


class Consumed(NamedTuple, Generic[T]):
    """One decoded record and where it came from (a tuple: one is built per record)."""

    event: T
    partition: int
    offset: int
    timestamp_ms: int


class PreviousBatchNotApplied(Exception):
    """The batch before this one gave up (the consumer is stopping): this one must not commit."""


class Outcome:
    """Whether a batch handed to the applier got applied: settled once, either way."""

    def __init__(self) -> None:
        self._settled = asyncio.Event()
        self._applied = False

    def settle(self, *, applied: bool) -> None:
        self._applied = applied
        self._settled.set()

    async def applied(self) -> None:
        """Return once the batch is applied; raise :class:`PreviousBatchNotApplied` if it gave up."""
        await self._settled.wait()
        if not self._applied:
            raise PreviousBatchNotApplied("the batch before this one was not applied")


@dataclass(frozen=True)
class Batch(Generic[T]):
    """Decoded events in offset order per partition, and the offset to resume from.

    ``next_offsets`` covers every partition the batch read, including partitions whose
    records all went to the DLQ, so the applier stores progress past poison too.
    """

    topic: str
    events: list[Consumed[T]]
    next_offsets: dict[int, int]
    poisoned: int = 0
    # The batch handed to the applier before this one (None: nothing before it is in
    # flight).  See :meth:`previous_applied`.
    previous: Outcome | None = None

    async def previous_applied(self) -> None:
        """Return once the batch before this one is applied (at once when applies do not overlap).

        An applier that takes several batches at once (``BatchLimits.applies_in_flight``)
        waits for this before it commits: a batch committed ahead of one that failed would
        store offsets past records never applied.  Raises :class:`PreviousBatchNotApplied`
        when the batch before gave up, which happens only when the consumer is stopping.
        """
        if self.previous is not None:
            await self.previous.applied()


class BatchApplier(Protocol[T]):
    """Where a consumer's effect lives (tally's counters, notify's supporter list)."""

    async def stored_offsets(self, topic: str, partitions: Collection[int]) -> dict[int, int]:
        """The next offset to read per partition, as last committed with an effect."""
        ...

    async def apply(self, batch: Batch[T]) -> None:
        """Apply the batch and store ``batch.next_offsets`` in one transaction.

        Must be idempotent: after a crash the same records come again.  Raising means
        nothing was applied; the loop retries the same batch.  With
        ``BatchLimits.applies_in_flight`` above 1, a batch is handed over while the one
        before it may still be running or retrying: the applier commits it only after
        :meth:`Batch.previous_applied`.
        """
        ...


class ConsumerMetrics:
    def __init__(self, registry: CollectorRegistry, service: str) -> None:
        self.service = service
        self.records = Counter(
            "clameur_consumer_records", "Records read.", ["service", "topic"], registry=registry
        )
        self.dlq = Counter(
            "clameur_dlq_records", "Records set aside to the DLQ.", ["service", "topic"], registry=registry
        )


@dataclass
class BatchLimits:
    max_records: int = 500
    max_wait_s: float = 0.25
    idle_poll_s: float = 1.0
    retry_initial_s: float = 0.2
    retry_max_s: float = 10.0
    # How long the broker may hold a fetch that finds no data.  aiokafka sends one fetch
    # at a time to a broker, for the partitions with nothing buffered: while a surge fills
    # one hot partition and the others are drained, a long poll on the drained ones (the
    # broker's 500 ms default) keeps the hot one from being fetched.  Measured in
    # docs/benchmarks.md (tally): 500 ms spent half of the drain waiting, 50 ms a tenth.
    fetch_max_wait_ms: int = 50
    # The reader parses and decodes this many records, then lets the applier run: without
    # it, every reply from the database waits behind a whole batch being decoded.
    read_slice: int = 500
    # Batches being applied at once.  1: one after the other.  More lets an applier
    # prepare the next batch while the previous one commits (tally), and obliges it to
    # commit them in order (``Batch.previous_applied``).
    applies_in_flight: int = 1
    kafka_commit_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.max_records < 1 or self.read_slice < 1 or self.applies_in_flight < 1:
            raise ValueError("max_records, read_slice and applies_in_flight must be at least 1")


class _SeekToStoredOffsets(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, loop: BatchConsumer[object]) -> None:
        self._loop = loop

    async def on_partitions_revoked(self, revoked: Collection[TopicPartition]) -> None:
        await self._loop.before_rebalance()

    async def on_partitions_assigned(self, assigned: Collection[TopicPartition]) -> None:
        await self._loop.after_rebalance(assigned)


class _PendingCommits:
    """The next offsets to commit to Kafka, per partition: the newest offered wins."""

    def __init__(self) -> None:
        self._offsets: dict[int, int] = {}
        self._ready = asyncio.Event()
        self._closed = False

    def offer(self, next_offsets: dict[int, int]) -> None:
        for partition, offset in next_offsets.items():
            self._offsets[partition] = max(offset, self._offsets.get(partition, offset))
        self._ready.set()

    def close(self) -> None:
        """Nothing more will be offered: :meth:`take` returns what is left, then ``None``."""
        self._closed = True
        self._ready.set()

    async def take(self) -> dict[int, int] | None:
        while not self._offsets:
            if self._closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        offsets, self._offsets = self._offsets, {}
        return offsets


@dataclass(frozen=True)
class _Read(Generic[T]):
    """A decoded batch and the generation of the assignment it was read in."""

    generation: int
    batch: Batch[T]


@dataclass
class BatchConsumer(Generic[T]):
    """Reads ``topic`` in a consumer group and hands decoded batches to ``applier``.

    ``decode`` turns the raw value into an event and raises on poison.  ``lag`` (a gauge
    labelled by ``partition``) is set after each batch to high-water mark minus the
    stored offset.
    """

    bootstrap: str
    topic: str
    group_id: str
    decode: Callable[[bytes], T]
    applier: BatchApplier[T]
    dlq_producer: AIOKafkaProducer
    metrics: ConsumerMetrics
    limits: BatchLimits = field(default_factory=BatchLimits)
    lag: Gauge | None = None
    client_id: str = "clameur"
    # Held while a batch is fetched and decoded, and by the seek after a rebalance.
    _read_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Held while a batch is handed to the applier, and by a revocation while it waits for
    # the batches in flight.
    _apply_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Applies started and not yet taken back by the loop, oldest first.
    _in_flight: collections.deque[asyncio.Task[None]] = field(default_factory=collections.deque)
    # The outcome of the last batch handed to the applier.
    _last_handed: Outcome | None = None
    # Bumped by every revocation: batches read in an older generation are dropped.
    _generation: int = 0
    # Set from the end of an assignment (after the seek) to the next revocation: nothing
    # is read outside it, because until the new assignment arrives aiokafka still returns
    # records of partitions that may already be another instance's.
    _assigned: asyncio.Event = field(default_factory=asyncio.Event)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _consumer: AIOKafkaConsumer | None = None
    _started: asyncio.Event = field(default_factory=asyncio.Event)

    async def before_rebalance(self) -> None:
        """Partitions are being revoked: finish the batches being applied (their offsets
        get stored), and make every batch read so far stale."""
        async with self._apply_lock:
            if self._in_flight:  # the loop takes them back, and sees their errors
                await asyncio.wait(list(self._in_flight))
            self._assigned.clear()
            self._generation += 1

    async def after_rebalance(self, assigned: Collection[TopicPartition]) -> None:
        """Seek to the stored offsets, then let reading resume (nothing was read since the
        revocation)."""
        async with self._read_lock:
            await self.seek_to_stored(assigned)
            self._assigned.set()

    async def seek_to_stored(self, assigned: Collection[TopicPartition]) -> None:
        consumer = self._consumer
        assert consumer is not None
        mine = [tp for tp in assigned if tp.topic == self.topic]
        if not mine:
            return
        stored = await self._retrying(
            "read stored offsets",
            lambda: self.applier.stored_offsets(self.topic, [tp.partition for tp in mine]),
        )
        for tp in mine:
            if tp.partition in stored:
                consumer.seek(tp, stored[tp.partition])
            else:
                await consumer.seek_to_beginning(tp)
        logger.info(
            "partitions assigned",
            extra={"topic": self.topic, "partitions": sorted(tp.partition for tp in mine), "stored": stored},
        )

    async def wait_started(self) -> None:
        await self._started.wait()

    def stop(self) -> None:
        """Ask the loop to finish its batch, commit, and leave the group."""
        self._stopping.set()

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group_id,
            client_id=self.client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_bytes=16 * 1024 * 1024,
            fetch_max_wait_ms=self.limits.fetch_max_wait_ms,
        )
        self._consumer = consumer
        # Start the counters at zero so the first poison record shows as an increase.
        self.metrics.dlq.labels(self.metrics.service, self.topic)
        self.metrics.records.labels(self.metrics.service, self.topic)
        consumer.subscribe([self.topic], listener=_SeekToStoredOffsets(self))  # type: ignore[arg-type]
        await consumer.start()
        self._started.set()
        # One batch waits here while another is applied: reading overlaps the database.
        ready: asyncio.Queue[_Read[T] | None] = asyncio.Queue(maxsize=1)
        # Offsets the database has, on their way to Kafka without holding up the next batch.
        commits = _PendingCommits()
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._read_batches(consumer, ready))
                tasks.create_task(self._apply_batches(consumer, ready, commits))
                tasks.create_task(self._commit_to_kafka(consumer, commits))
        except BaseExceptionGroup as group:
            # One task failed (the others were cancelled by it): raise what went wrong.
            raise group.exceptions[0] from None
        finally:
            await consumer.stop()

    async def _read_batches(self, consumer: AIOKafkaConsumer, ready: asyncio.Queue[_Read[T] | None]) -> None:
        while not self._stopping.is_set():
            if not self._assigned.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._assigned.wait(), self.limits.idle_poll_s)
                continue
            # The read lock spans fetch and decode: the seek after a rebalance never
            # races a half-gathered batch.
            async with self._read_lock:
                if not self._assigned.is_set():
                    continue  # revoked while waiting for the lock
                # Read with the flag, without an await between: a revocation from here on
                # bumps the generation, and this batch is dropped.
                generation = self._generation
                records = await self._fetch_batch(consumer)
                if not records:
                    continue
                batch = await self._decode(records)
            await ready.put(_Read(generation, batch))
        await ready.put(None)  # stopping: the applier finishes what was read, then returns

    async def _apply_batches(
        self, consumer: AIOKafkaConsumer, ready: asyncio.Queue[_Read[T] | None], commits: _PendingCommits
    ) -> None:
        try:
            while (read := await ready.get()) is not None:
                async with self._apply_lock:
                    if read.generation != self._generation:
                        logger.info(
                            "batch read before a rebalance dropped; its records are read again",
                            extra={
                                "topic": self.topic,
                                "records": len(read.batch.events) + read.batch.poisoned,
                            },
                        )
                        continue
                    outcome = Outcome()
                    batch = dataclasses.replace(read.batch, previous=self._last_handed)
                    self._last_handed = outcome
                    task = asyncio.create_task(self._apply(consumer, batch, outcome, commits))
                    self._in_flight.append(task)
                while len(self._in_flight) >= self.limits.applies_in_flight:
                    await self._take_back_oldest()
            while self._in_flight:
                await self._take_back_oldest()
        finally:
            try:
                # Stopping on an error: the applies still in flight roll back, and are awaited.
                tasks = list(self._in_flight)
                for task in tasks:
                    task.cancel()
                for result in await asyncio.gather(*tasks, return_exceptions=True):
                    if isinstance(result, Exception) and not isinstance(result, PreviousBatchNotApplied):
                        logger.warning("apply in flight failed while stopping", extra={"error": repr(result)})
            finally:
                commits.close()  # the committer sends what is left, then returns

    async def _apply(
        self, consumer: AIOKafkaConsumer, batch: Batch[T], outcome: Outcome, commits: _PendingCommits
    ) -> None:
        try:
            await self._retrying("apply batch", functools.partial(self.applier.apply, batch))
        except BaseException:
            outcome.settle(applied=False)  # the batches after this one must not wait for it
            raise
        outcome.settle(applied=True)
        # At once, not when the loop takes the task back (that waits for the next batch):
        # the last batch of a surge moves the lag gauge and Kafka's offsets too.  Batches
        # settle in order, so offers are made in order.
        commits.offer(batch.next_offsets)
        self._observe_lag(consumer, batch)

    async def _take_back_oldest(self) -> None:
        """Wait for the oldest apply in flight; raises if it gave up (the consumer is stopping)."""
        await self._in_flight[0]
        self._in_flight.popleft()

    async def _fetch_batch(self, consumer: AIOKafkaConsumer) -> list[ConsumerRecord[bytes, bytes]]:
        limits = self.limits
        # aiokafka parses records when they are taken, in one go when they are already
        # buffered: take them a slice at a time and give way between slices.
        fetched = await consumer.getmany(
            timeout_ms=int(limits.idle_poll_s * 1000), max_records=min(limits.max_records, limits.read_slice)
        )
        records = [record for partition_records in fetched.values() for record in partition_records]
        deadline = time.monotonic() + limits.max_wait_s
        while records and len(records) < limits.max_records and not self._stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await asyncio.sleep(0)
            more = await consumer.getmany(
                timeout_ms=max(1, int(remaining * 1000)),
                max_records=min(limits.max_records - len(records), limits.read_slice),
            )
            records.extend(record for partition_records in more.values() for record in partition_records)
        return records

    async def _decode(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> Batch[T]:
        events: list[Consumed[T]] = []
        next_offsets: dict[int, int] = {}
        poisoned = 0
        for n, record in enumerate(records, 1):
            if n % self.limits.read_slice == 0:
                await asyncio.sleep(0)  # let the applier run
            next_offsets[record.partition] = max(next_offsets.get(record.partition, 0), record.offset + 1)
            try:
                if record.value is None:
                    raise ValueError("record has no value")
                event = self.decode(record.value)
            except Exception as error:  # noqa: BLE001 - any decoding failure is poison, set aside
                poisoned += 1
                await self._retrying(
                    "send to DLQ", functools.partial(send_to_dlq, self.dlq_producer, record, error)
                )
                self.metrics.dlq.labels(self.metrics.service, self.topic).inc()
                logger.warning(
                    "record set aside to the DLQ",
                    extra={
                        "topic": record.topic,
                        "partition": record.partition,
                        "offset": record.offset,
                        "error": type(error).__name__,
                    },
                )
                continue
            events.append(Consumed(event, record.partition, record.offset, record.timestamp))
        self.metrics.records.labels(self.metrics.service, self.topic).inc(len(records))
        return Batch(self.topic, events, next_offsets, poisoned)

    async def _retrying(self, what: str, attempt: Callable[[], Awaitable[R]]) -> R:
        delay = self.limits.retry_initial_s
        while True:
            try:
                return await attempt()
            except Exception as error:
                if self._stopping.is_set():
                    raise
                logger.warning(
                    "%s failed; retrying in %.1f s",
                    what,
                    delay,
                    extra={"error": f"{type(error).__name__}: {error}"},
                )
                await asyncio.sleep(delay * (0.5 + random.random()))  # noqa: S311 - jitter, not crypto
                delay = min(delay * 2, self.limits.retry_max_s)

    async def _commit_to_kafka(self, consumer: AIOKafkaConsumer, commits: _PendingCommits) -> None:
        """Commit what the database has to Kafka too, best effort, until the applier is done.

        Only the newest offset of each partition matters, so the offsets of batches applied
        while a commit is on its way go together in the next one.
        """
        while (offsets := await commits.take()) is not None:
            assigned = consumer.assignment()
            mine = {
                tp: offset
                for partition, offset in offsets.items()
                if (tp := TopicPartition(self.topic, partition)) in assigned
            }
            if not mine:
                continue
            try:
                # Bounded: with the broker gone, aiokafka would wait for a coordinator forever
                # and a graceful stop with it.
                await asyncio.wait_for(consumer.commit(mine), timeout=self.limits.kafka_commit_timeout_s)
            except (KafkaError, TimeoutError) as error:
                # Postgres holds the truth; this commit only feeds lag tools.
                logger.info("Kafka offset commit skipped", extra={"error": type(error).__name__})

    def _observe_lag(self, consumer: AIOKafkaConsumer, batch: Batch[T]) -> None:
        if self.lag is None:
            return
        for partition, offset in batch.next_offsets.items():
            highwater = consumer.highwater(TopicPartition(self.topic, partition))
            if highwater is not None:
                self.lag.labels(str(partition)).set(max(0, highwater - offset))
