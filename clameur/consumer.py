"""The batch consumer loop shared by tally and notify.

Contract (the consumer habits of our style guide): no auto-commit; a batch is bounded by
size and time; the applier stores the effect *and* each partition's next offset in one
transaction, so the database, not Kafka, says where to resume.  On every assignment the
loop seeks to the offsets the applier stored (the beginning where it stored none).  After
the effect is committed the offsets are also committed to Kafka, best effort and without
holding up the next batch, so standard lag tools work.  A record that cannot be decoded
goes to ``<topic>.dlq`` and the partition keeps flowing.  A failing apply (database
restarting, broker gone) is retried with backoff and nothing is committed until it
succeeds.

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

The loop is a chain of small steps, each with its promise in its docstring (the shape of
arroyo's strategies): :class:`BatchReader` (read a bounded batch), :class:`BatchDecoder`
(decode, or set poison aside to the DLQ by :class:`DeadLetters`), :class:`InOrderApplies`
(apply in order, behind the :class:`AssignmentGate` across rebalances),
:class:`KafkaCommits` (commit what the database has) and :class:`LagReport` (report the
lag).  :class:`BatchConsumer` builds them and runs the three loops: read, apply, commit.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Generic, NamedTuple, Protocol, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord
from prometheus_client import CollectorRegistry, Counter, Gauge

from clameur.kafka import Kafka, client_kwargs, send_to_dlq
from clameur.logs import describe_error
from clameur.retry import RetryPolicy, retry

T = TypeVar("T")
R = TypeVar("R")

Clock = Callable[[], float]
"""Seconds from an arbitrary start, never going back (``time.monotonic`` in production)."""

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
    """Where a consumer's effect lives (tally's counters, notify's supporter list).

    The contract, proven for every adapter by ``tests/clameur/applier_contract.py``:
    nothing is stored at first; :meth:`apply` stores ``batch.next_offsets`` with the
    effect, atomically; stored offsets never move backwards; a replayed batch changes
    nothing; with a batch before it in flight, it commits only after that one.
    """

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
    """How large a batch grows, how long the loop waits, and how it backs off."""

    max_records: int = 500
    """The most records in one batch."""
    max_wait_s: float = 0.25
    """Once a batch's first record has come, how long the reader gathers more."""
    idle_poll_s: float = 1.0
    """How long one read waits when nothing comes (and so how soon a stop is noticed)."""
    retry: RetryPolicy = RetryPolicy(initial_s=0.2, maximum_s=10.0)  # noqa: RUF009 - frozen, shared safely
    """How every retry of the loop backs off: reading stored offsets, applying, sending to the DLQ."""
    fetch_max_wait_ms: int = 50
    """How long the broker may hold a fetch that finds no data.

    aiokafka sends one fetch at a time to a broker, for the partitions with nothing
    buffered: while a surge fills one hot partition and the others are drained, a long poll
    on the drained ones (the broker's 500 ms default) keeps the hot one from being fetched.
    Measured in docs/benchmarks.md (tally): 500 ms spent half of the drain waiting, 50 ms a
    tenth.
    """
    read_slice: int = 500
    """The reader parses and decodes this many records, then lets the applier run: without
    it, every reply from the database waits behind a whole batch being decoded."""
    applies_in_flight: int = 1
    """Batches being applied at once.  1: one after the other.  More lets an applier prepare
    the next batch while the previous one commits (tally), and obliges it to commit them in
    order (``Batch.previous_applied``)."""
    kafka_commit_timeout_s: float = 10.0
    """How long one commit of offsets to Kafka may take before it is skipped (:class:`KafkaCommits`)."""

    def __post_init__(self) -> None:
        if self.max_records < 1 or self.read_slice < 1 or self.applies_in_flight < 1:
            raise ValueError("max_records, read_slice and applies_in_flight must be at least 1")


Retrying = Callable[[str, Callable[[], Awaitable[R]]], Awaitable[R]]


# -- read: a bounded batch of raw records ---------------------------------------------------------


class BatchReader:
    """Fetches one batch of raw records from the partitions assigned.

    Promises: at most ``max_records`` records, in offset order within each partition; once
    the first record has come, no longer than ``max_wait_s`` more (by ``clock``) is spent
    gathering the rest, and less when ``stopping()`` turns true; an empty list when nothing
    came within ``idle_poll_s``.  It takes records ``read_slice`` at a time and gives way
    to other tasks between slices (aiokafka parses buffered records all at once when they
    are taken).  Kafka errors propagate.
    """

    def __init__(
        self, consumer: AIOKafkaConsumer, limits: BatchLimits, clock: Clock, stopping: Callable[[], bool]
    ) -> None:
        self._consumer = consumer
        self._limits = limits
        self._clock = clock
        self._stopping = stopping

    async def read(self) -> list[ConsumerRecord[bytes, bytes]]:
        limits = self._limits
        fetched = await self._consumer.getmany(
            timeout_ms=int(limits.idle_poll_s * 1000), max_records=min(limits.max_records, limits.read_slice)
        )
        records = [record for partition_records in fetched.values() for record in partition_records]
        deadline = self._clock() + limits.max_wait_s
        while records and len(records) < limits.max_records and not self._stopping():
            remaining = deadline - self._clock()
            if remaining <= 0:
                break
            await asyncio.sleep(0)
            more = await self._consumer.getmany(
                timeout_ms=max(1, int(remaining * 1000)),
                max_records=min(limits.max_records - len(records), limits.read_slice),
            )
            records.extend(record for partition_records in more.values() for record in partition_records)
        return records


# -- decode or set aside: events, and poison to the DLQ -------------------------------------------


class DeadLetters:
    """Sets poison aside to ``<topic>.dlq`` (arroyo's DLQ policy, in small).

    Promises: :meth:`set_aside` returns once the DLQ has acknowledged the record, sent with
    the error in its headers and retried until then; it counts the record in the DLQ metric
    and logs where it came from.  Raises only when the DLQ cannot be reached and the
    consumer is stopping.
    """

    def __init__(
        self, producer: AIOKafkaProducer, metrics: ConsumerMetrics, topic: str, retrying: Retrying[None]
    ) -> None:
        self._producer = producer
        self._counted = metrics.dlq.labels(metrics.service, topic)
        self._retrying = retrying

    async def set_aside(self, record: ConsumerRecord[bytes, bytes], error: Exception) -> None:
        await self._retrying("send to DLQ", functools.partial(send_to_dlq, self._producer, record, error))
        self._counted.inc()
        logger.warning(
            "record set aside to the DLQ",
            extra={
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "error": type(error).__name__,
            },
        )


class BatchDecoder(Generic[T]):
    """Turns raw records into a :class:`Batch`.

    Promises: every record either becomes a :class:`Consumed` event, in the order read, or
    (``decode`` raised, or it has no value) is set aside by ``dead_letters`` and counted in
    ``poisoned``; ``next_offsets`` holds, for every partition read, one past its last
    record, poison included.  Gives way to other tasks every ``read_slice`` records.
    Raises only what :meth:`DeadLetters.set_aside` raises.
    """

    def __init__(
        self,
        topic: str,
        decode: Callable[[bytes], T],
        dead_letters: DeadLetters,
        metrics: ConsumerMetrics,
        read_slice: int,
        decode_record: Callable[[ConsumerRecord[bytes, bytes]], T] | None = None,
    ) -> None:
        self._topic = topic
        self._decode = decode
        # A compacted topic's reader needs the key and the null value of a tombstone.
        self._decode_record = decode_record
        self._dead_letters = dead_letters
        self._read_slice = read_slice
        self._records = metrics.records.labels(metrics.service, topic)

    async def decode(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> Batch[T]:
        decode, read_slice = self._decode, self._read_slice
        events: list[Consumed[T]] = []
        next_offsets: dict[int, int] = {}
        poisoned = 0
        for n, record in enumerate(records, 1):
            if n % read_slice == 0:
                await asyncio.sleep(0)  # let the applier run
            next_offsets[record.partition] = max(next_offsets.get(record.partition, 0), record.offset + 1)
            try:
                if self._decode_record is not None:
                    event = self._decode_record(record)
                elif record.value is None:
                    raise ValueError("record has no value")
                else:
                    event = decode(record.value)
            except Exception as error:  # noqa: BLE001 - any decoding failure is poison, set aside
                poisoned += 1
                await self._dead_letters.set_aside(record, error)
                continue
            events.append(Consumed(event, record.partition, record.offset, record.timestamp))
        self._records.inc(len(records))
        return Batch(self._topic, events, next_offsets, poisoned)


# -- apply in order: the gate across rebalances, and the applies in flight -------------------------


class AssignmentGate:
    """Whether reading is allowed now, and which batches a rebalance made stale.

    Promises: reading is allowed only from :meth:`open` (after the seek to stored offsets)
    to the next :meth:`close` (a revocation), because until the new assignment arrives
    aiokafka still returns records of partitions that may already be another instance's;
    every :meth:`close` starts a new ``generation``, so a batch tagged with an older one is
    stale.  ``reading`` is held over a batch's fetch and decode and over the seek, so the
    two never interleave.
    """

    def __init__(self) -> None:
        self.generation = 0
        self.reading = asyncio.Lock()
        self._open = asyncio.Event()

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    def open(self) -> None:
        self._open.set()

    def close(self) -> None:
        self._open.clear()
        self.generation += 1

    async def wait_open(self, timeout_s: float) -> bool:
        """Whether the gate is open, waiting up to ``timeout_s`` for it."""
        if not self._open.is_set():
            try:
                await asyncio.wait_for(self._open.wait(), timeout_s)
            except TimeoutError:
                return False
        return True


@dataclass(frozen=True)
class _Read(Generic[T]):
    """A decoded batch and the generation of the assignment it was read in."""

    generation: int
    batch: Batch[T]


@dataclass(eq=False)
class InOrderApplies(Generic[T]):
    """Hands batches to the applier in the order read, up to ``applies_in_flight`` at once.

    Promises:

    - a batch read in an older generation than the gate's (before a revocation) is dropped,
      never applied; its records are read again after the seek to stored offsets;
    - each batch carries the :class:`Outcome` of the batch handed over before it
      (``Batch.previous``); every outcome settles once, applied or not;
    - an apply is retried with backoff until it succeeds; it gives up only when the
      consumer stops, and then the batches after it raise :class:`PreviousBatchNotApplied`
      instead of waiting;
    - ``on_applied(batch)`` is called as soon as a batch is applied, in the order handed over;
    - :meth:`revoke` waits for every apply in flight, then closes the gate, with no batch
      handed over in between.
    """

    applier: BatchApplier[T]
    gate: AssignmentGate
    applies_in_flight: int
    retrying: Retrying[None]
    on_applied: Callable[[Batch[T]], None]

    def __post_init__(self) -> None:
        # Held while a batch is handed over, and by a revocation while it waits for the
        # batches in flight.
        self._handing_over = asyncio.Lock()
        # Applies started and not yet taken back by the loop, oldest first.
        self._in_flight: collections.deque[asyncio.Task[None]] = collections.deque()
        self._last_handed: Outcome | None = None

    async def hand_over(self, read: _Read[T]) -> None:
        """Start applying ``read``'s batch unless it is stale; return once there is room for
        the next (raises what the oldest apply raised when it gave up)."""
        async with self._handing_over:
            if read.generation != self.gate.generation:
                logger.info(
                    "batch read before a rebalance dropped; its records are read again",
                    extra={
                        "topic": read.batch.topic,
                        "records": len(read.batch.events) + read.batch.poisoned,
                    },
                )
                return
            outcome = Outcome()
            batch = dataclasses.replace(read.batch, previous=self._last_handed)
            self._last_handed = outcome
            self._in_flight.append(asyncio.create_task(self._apply(batch, outcome)))
        while len(self._in_flight) >= self.applies_in_flight:
            await self._take_back_oldest()

    async def finish(self) -> None:
        """Wait for every apply in flight, oldest first; raises what one raised."""
        while self._in_flight:
            await self._take_back_oldest()

    async def abandon(self) -> None:
        """Stopping on an error: cancel the applies still in flight (they roll back) and await them."""
        tasks = list(self._in_flight)
        for task in tasks:
            task.cancel()
        for result in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(result, Exception) and not isinstance(result, PreviousBatchNotApplied):
                logger.warning(
                    "apply in flight failed while stopping", extra={"error": describe_error(result)}
                )

    async def revoke(self) -> None:
        """Partitions are being revoked: finish the applies in flight (their offsets get
        stored), then close the gate, making every batch read so far stale."""
        async with self._handing_over:
            if self._in_flight:  # the loop takes them back, and sees their errors
                await asyncio.wait(list(self._in_flight))
            self.gate.close()

    async def _apply(self, batch: Batch[T], outcome: Outcome) -> None:
        try:
            await self.retrying("apply batch", functools.partial(self.applier.apply, batch))
        except BaseException:
            outcome.settle(applied=False)  # the batches after this one must not wait for it
            raise
        outcome.settle(applied=True)
        # At once, not when the loop takes the task back (that waits for the next batch):
        # the last batch of a surge moves the lag gauge and Kafka's offsets too.  Batches
        # settle in order, so this is called in order.
        self.on_applied(batch)

    async def _take_back_oldest(self) -> None:
        await self._in_flight[0]
        self._in_flight.popleft()


async def seek_to_stored(
    consumer: AIOKafkaConsumer,
    applier: BatchApplier[T],
    topic: str,
    assigned: Collection[TopicPartition],
    retrying: Retrying[dict[int, int]],
) -> None:
    """Move each assigned partition of ``topic`` to the offset the applier stored, or to the
    beginning where it stored none (reading the stored offsets is retried)."""
    mine = [tp for tp in assigned if tp.topic == topic]
    if not mine:
        return
    stored = await retrying(
        "read stored offsets", lambda: applier.stored_offsets(topic, [tp.partition for tp in mine])
    )
    for tp in mine:
        if tp.partition in stored:
            consumer.seek(tp, stored[tp.partition])
        else:
            await consumer.seek_to_beginning(tp)
    logger.info(
        "partitions assigned",
        extra={"topic": topic, "partitions": sorted(tp.partition for tp in mine), "stored": stored},
    )


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Finishes the applies before partitions go; seeks to stored offsets before reading resumes."""

    def __init__(
        self, applies: InOrderApplies[T], gate: AssignmentGate, seek: Callable[..., Awaitable[None]]
    ) -> None:
        self._applies = applies
        self._gate = gate
        self._seek = seek

    async def on_partitions_revoked(self, revoked: Collection[TopicPartition]) -> None:
        await self._applies.revoke()

    async def on_partitions_assigned(self, assigned: Collection[TopicPartition]) -> None:
        # Nothing was read since the revocation: seek, then let reading resume.
        async with self._gate.reading:
            await self._seek(assigned)
            self._gate.open()


# -- commit: what the database has, to Kafka too ---------------------------------------------------


class KafkaCommits:
    """Commits to Kafka the offsets the database already has, best effort, off the batch path.

    Promises: :meth:`offer` never waits; :meth:`run` commits, for the partitions still
    assigned, the newest offset offered for each (offers made while a commit is on its way
    go together in the next one), each commit bounded by ``timeout_s``; a Kafka error or a
    timeout is logged and skipped (Postgres holds the truth; this only feeds lag tools);
    after :meth:`close`, :meth:`run` commits what is left and returns.
    """

    def __init__(self, consumer: AIOKafkaConsumer, topic: str, timeout_s: float) -> None:
        self._consumer = consumer
        self._topic = topic
        self._timeout_s = timeout_s
        self._offsets: dict[int, int] = {}
        self._ready = asyncio.Event()
        self._closed = False

    def offer(self, next_offsets: dict[int, int]) -> None:
        for partition, offset in next_offsets.items():
            self._offsets[partition] = max(offset, self._offsets.get(partition, offset))
        self._ready.set()

    def close(self) -> None:
        self._closed = True
        self._ready.set()

    async def run(self) -> None:
        while (offsets := await self._take()) is not None:
            assigned = self._consumer.assignment()
            mine = {
                tp: offset
                for partition, offset in offsets.items()
                if (tp := TopicPartition(self._topic, partition)) in assigned
            }
            if not mine:
                continue
            try:
                # Bounded: with the broker gone, aiokafka would wait for a coordinator forever
                # and a graceful stop with it.
                await asyncio.wait_for(self._consumer.commit(mine), timeout=self._timeout_s)
            except (KafkaError, TimeoutError) as error:
                logger.info("Kafka offset commit skipped", extra={"error": type(error).__name__})

    async def _take(self) -> dict[int, int] | None:
        while not self._offsets:
            if self._closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        offsets, self._offsets = self._offsets, {}
        return offsets


# -- report: the lag gauge ---------------------------------------------------------------------------


class LagReport:
    """Sets ``lag{partition}`` to the high-water mark minus the batch's next offset (never
    below 0), for each partition of an applied batch whose high-water mark is known; does
    nothing without a gauge."""

    def __init__(self, consumer: AIOKafkaConsumer, topic: str, lag: Gauge | None) -> None:
        self._consumer = consumer
        self._topic = topic
        self._lag = lag

    def observe(self, next_offsets: dict[int, int]) -> None:
        if self._lag is None:
            return
        for partition, offset in next_offsets.items():
            highwater = self._consumer.highwater(TopicPartition(self._topic, partition))
            if highwater is not None:
                self._lag.labels(str(partition)).set(max(0, highwater - offset))


# -- the loop ----------------------------------------------------------------------------------------


@dataclass(kw_only=True, eq=False)
class BatchConsumer(Generic[T]):
    """Reads ``topic`` in a consumer group and hands decoded batches to ``applier``."""

    bootstrap: Kafka
    topic: str
    group_id: str
    decode: Callable[[bytes], T]
    """Turns a record's value into an event; raises on poison, which goes to ``<topic>.dlq``."""
    applier: BatchApplier[T]
    dlq_producer: AIOKafkaProducer
    """Publishes the poison; the caller starts and stops it (it may serve other purposes)."""
    metrics: ConsumerMetrics
    limits: BatchLimits = dataclasses.field(default_factory=BatchLimits)
    lag: Gauge | None = None
    """Labelled by ``partition``: set after each batch to high-water mark minus the stored offset."""
    client_id: str = "clameur"
    clock: Clock = time.monotonic
    """Bounds the time spent gathering a batch."""
    decode_record: Callable[[ConsumerRecord[bytes, bytes]], T] | None = None
    """Used instead of ``decode`` when given: sees the whole record (its key, and the null
    value of a compacted topic's tombstone)."""

    def __post_init__(self) -> None:
        self._stopping = asyncio.Event()
        self._started = asyncio.Event()

    async def wait_started(self) -> None:
        await self._started.wait()

    def stop(self) -> None:
        """Ask the loop to finish its batch, commit, and leave the group."""
        self._stopping.set()

    async def run(self) -> None:
        """Consume until :meth:`stop`; raises what made a step fail (the others are cancelled)."""
        consumer = self._kafka_consumer()
        gate = AssignmentGate()
        commits = KafkaCommits(consumer, self.topic, self.limits.kafka_commit_timeout_s)
        lag = LagReport(consumer, self.topic, self.lag)

        def applied(batch: Batch[T]) -> None:
            commits.offer(batch.next_offsets)
            lag.observe(batch.next_offsets)

        applies = InOrderApplies(self.applier, gate, self.limits.applies_in_flight, self._retrying, applied)
        seek = functools.partial(seek_to_stored, consumer, self.applier, self.topic, retrying=self._retrying)
        consumer.subscribe([self.topic], listener=_Rebalance(applies, gate, seek))
        await consumer.start()
        self._started.set()
        reader = BatchReader(consumer, self.limits, self.clock, self._stopping.is_set)
        dead_letters = DeadLetters(self.dlq_producer, self.metrics, self.topic, self._retrying)
        decoder = BatchDecoder(
            self.topic, self.decode, dead_letters, self.metrics, self.limits.read_slice, self.decode_record
        )
        # One batch waits here while another is applied: reading overlaps the database.
        ready: asyncio.Queue[_Read[T] | None] = asyncio.Queue(maxsize=1)
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._read_batches(gate, reader, decoder, ready))
                tasks.create_task(self._apply_batches(applies, ready, commits))
                tasks.create_task(commits.run())
        except BaseExceptionGroup as group:
            # One task failed (the others were cancelled by it): raise what went wrong.
            raise group.exceptions[0] from None
        finally:
            await consumer.stop()

    def _kafka_consumer(self) -> AIOKafkaConsumer:
        # Start the counters at zero so the first poison record shows as an increase.
        self.metrics.dlq.labels(self.metrics.service, self.topic)
        self.metrics.records.labels(self.metrics.service, self.topic)
        return AIOKafkaConsumer(
            **client_kwargs(self.bootstrap),
            group_id=self.group_id,
            client_id=self.client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_bytes=16 * 1024 * 1024,
            fetch_max_wait_ms=self.limits.fetch_max_wait_ms,
        )

    async def _read_batches(
        self,
        gate: AssignmentGate,
        reader: BatchReader,
        decoder: BatchDecoder[T],
        ready: asyncio.Queue[_Read[T] | None],
    ) -> None:
        while not self._stopping.is_set():
            if not await gate.wait_open(self.limits.idle_poll_s):
                continue
            # The read lock spans fetch and decode: the seek after a rebalance never
            # races a half-gathered batch.
            async with gate.reading:
                if not gate.is_open:
                    continue  # revoked while waiting for the lock
                # Read with the flag, without an await between: a revocation from here on
                # starts a new generation, and this batch is dropped.
                generation = gate.generation
                records = await reader.read()
                if not records:
                    continue
                batch = await decoder.decode(records)
            await ready.put(_Read(generation, batch))
        await ready.put(None)  # stopping: the applier finishes what was read, then returns

    async def _apply_batches(
        self, applies: InOrderApplies[T], ready: asyncio.Queue[_Read[T] | None], commits: KafkaCommits
    ) -> None:
        try:
            while (read := await ready.get()) is not None:
                await applies.hand_over(read)
            await applies.finish()
        finally:
            try:
                await applies.abandon()  # only on an error: none are left otherwise
            finally:
                commits.close()  # the committer sends what is left, then returns

    async def _retrying(self, what: str, attempt: Callable[[], Awaitable[R]]) -> R:
        """``attempt()`` until it returns, backing off; re-raises once the consumer is stopping."""
        return await retry(what, attempt, self.limits.retry, stopping=self._stopping.is_set)
