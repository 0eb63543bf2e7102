"""Publishing accepted signatures: 202 only after the broker's ack of every record.

Each accepted action is a ``SignatureAccepted`` on ``signatures.v2`` (key: case id, kept
forever, no personal data) and, when notify will write to the supporter, a ``Contact`` on
the compacted ``contacts.v1`` (key: supporter key, on :func:`clameur.topics.contact_partition`'s
partition, where notify's tombstone goes too).

:class:`KafkaSignaturePublisher` owns one idempotent ``acks=all`` producer for both topics
(a lane per partition of each, sent in rounds shared by both) and three promises:

- **bounded**: :meth:`publish` returns once every record (signatures and contacts alike)
  is acknowledged, or raises
  :class:`BrokerUnavailable` within ``ack_timeout`` seconds (the route answers 503).  A
  record that timed out may still reach the broker later; a retry then makes a duplicate,
  which tally does not count twice (``supporter_key``);
- **fails fast while the broker is down**: after a failure, only one request per
  ``probe_interval`` is let through to probe the broker, the others get 503 at once
  instead of piling records into the producer's buffer during a surge;
- **recovers alone**: a producer whose sender task died, or that has failed for
  ``reset_after`` seconds without one success, is replaced by a new one (started again
  and again until the broker answers), without restarting the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder
from prometheus_client import CollectorRegistry, Counter, Histogram

from clameur.events import Contact, SignatureAccepted
from clameur.retry import Backoff, RetryPolicy
from clameur.topics import contact_partition
from intake.producer_internals import sender_stopped, stop_sender

logger = logging.getLogger(__name__)

ProducerFactory = Callable[[], AIOKafkaProducer]


class BrokerUnavailable(Exception):
    """The broker did not acknowledge in time (or is being reconnected): answer 503."""


class SignaturePublisher(Protocol):
    """Where accepted signatures go; ``publish`` returns only once they are durable."""

    async def publish(
        self, signatures: Sequence[SignatureAccepted], contacts: Sequence[Contact] = ()
    ) -> None:
        """Raise :class:`BrokerUnavailable` unless every signature and contact was acknowledged.

        On failure nothing is promised: some records may have been written (a retry then
        duplicates them: tally counts a supporter once, a contact is keyed by supporter).
        """
        ...

    async def check(self) -> None:
        """Readiness: raise when no producer is connected."""
        ...


class PublishMetrics:
    """``clameur_intake_produce_*``: attempts beside errors, and the time to the ack."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.attempts = Counter(
            "clameur_intake_produce_attempts",
            "Records (signatures and contacts) handed to the producer.",
            registry=registry,
        )
        self.errors = Counter(
            "clameur_intake_produce_errors",
            "Records (signatures and contacts) the broker did not acknowledge in time.",
            registry=registry,
        )
        self.duration = Histogram(
            "clameur_intake_produce_duration_seconds",
            "From send to the broker's acknowledgement.",
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )


@dataclass(frozen=True)
class PublishTimings:
    """Seconds: the wait for an ack, the probe gate, the replacement of a failing producer,
    how often the producer's health is looked at."""

    ack_timeout: float
    probe_interval: float
    reset_after: float
    check_interval: float = 0.5


# Reconnecting a producer while the broker is down: from 0.2 s, doubling, jittered, at most 5 s.
RECONNECT = RetryPolicy(initial_s=0.2, maximum_s=5.0)


@dataclass(kw_only=True, eq=False)
class KafkaSignaturePublisher:
    """Signatures to Kafka keyed by case id, contacts keyed by supporter key; see the module
    docstring for the promises."""

    topic: str
    contacts_topic: str
    producer_factory: ProducerFactory
    metrics: PublishMetrics
    timings: PublishTimings
    clock: Callable[[], float] = time.monotonic
    _producer: AIOKafkaProducer | None = field(init=False, default=None)
    _lanes: _TopicLanes | None = field(init=False, default=None)
    _supervisor: asyncio.Task[None] | None = field(init=False, default=None)
    _retiring: set[asyncio.Task[None]] = field(init=False, default_factory=set)
    # Failure state: since when every attempt failed, and the probe gate.
    _failing_since: float | None = field(init=False, default=None)
    _next_probe: float = field(init=False, default=0.0)
    _probing: bool = field(init=False, default=False)
    replacements: int = field(init=False, default=0)

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Start supervising; the producer connects in the background (see :meth:`check`)."""
        self._supervisor = asyncio.create_task(self._supervise(), name="intake-producer-supervisor")

    async def stop(self, *, flush_timeout: float = 15.0) -> None:
        """Flush what was sent (bounded by ``flush_timeout``) and close the producer."""
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        producer, self._producer = self._producer, None
        self._lanes = None
        if producer is not None:
            await _stop_quietly(producer, flush_timeout)
        for task in list(self._retiring):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def check(self) -> None:
        producer = self._producer
        if producer is None:
            raise BrokerUnavailable("the producer is not connected to the broker yet")
        if sender_stopped(producer):
            raise BrokerUnavailable("the producer stopped; a new one is being started")

    # -- the hot path --------------------------------------------------------------------

    async def publish(
        self, signatures: Sequence[SignatureAccepted], contacts: Sequence[Contact] = ()
    ) -> None:
        lanes = self._admit()
        records = len(signatures) + len(contacts)
        self.metrics.attempts.inc(records)
        started = time.perf_counter()
        try:
            # Each lane's round of records fails with TimeoutError ``ack_timeout`` after the
            # round began (so no later than that after this call): one timer per round,
            # not one per request.  Only an unknown topic's metadata is waited for here.
            signature_partition = lanes.signatures.partitioner()
            contact_partition = lanes.contacts.partitioner() if contacts else _NOT_NEEDED
            if signature_partition is None or contact_partition is None:
                async with asyncio.timeout(self.timings.ack_timeout):
                    signature_partition = await lanes.signatures.fetch_partitioner()
                    if contacts:
                        contact_partition = await lanes.contacts.fetch_partitioner()
            assert contact_partition is not None
            # Every record is queued before any is awaited: both topics' batches leave together.
            acks = [
                lanes.signatures.add(signature_partition(key), key, signature.to_json())
                for signature in signatures
                for key in (signature.case_id.encode(),)
            ]
            acks += [
                lanes.contacts.add(contact_partition(key), key, contact.to_json())
                for contact in contacts
                for key in (contact.supporter_key.encode(),)
            ]
            await _acknowledged(acks)
        except Exception as exc:
            self._failed()
            self.metrics.errors.inc(records)
            if not isinstance(exc, TimeoutError):
                logger.warning("the broker refused signatures: %s", type(exc).__name__)
            raise BrokerUnavailable(f"the broker did not acknowledge: {type(exc).__name__}") from exc
        self.metrics.duration.observe(time.perf_counter() - started)
        self._succeeded()

    def _admit(self) -> _TopicLanes:
        lanes = self._lanes
        if lanes is None:
            raise BrokerUnavailable("the producer is not connected to the broker")
        if self._failing_since is None:
            return lanes
        now = self.clock()
        if self._probing or now < self._next_probe:
            self.metrics.errors.inc()
            raise BrokerUnavailable("the broker is failing; waiting for it to come back")
        self._probing = True
        self._next_probe = now + self.timings.probe_interval
        return lanes

    def _failed(self) -> None:
        now = self.clock()
        if self._failing_since is None:
            self._failing_since = now
            logger.warning("the broker stopped acknowledging signatures")
        self._next_probe = now + self.timings.probe_interval
        self._probing = False

    def _succeeded(self) -> None:
        if self._failing_since is not None:
            logger.info("the broker acknowledges signatures again")
        self._failing_since = None
        self._probing = False

    # -- recovery ----------------------------------------------------------------------

    def _stuck(self, producer: AIOKafkaProducer) -> bool:
        if sender_stopped(producer):
            return True
        return (
            self._failing_since is not None and self.clock() - self._failing_since >= self.timings.reset_after
        )

    async def _supervise(self) -> None:
        backoff = Backoff(RECONNECT)
        while True:
            if self._producer is None:
                producer = self.producer_factory()
                try:
                    await producer.start()
                except Exception as exc:  # noqa: BLE001 - broker down at start: retry with backoff
                    logger.warning("cannot connect the producer yet: %s", type(exc).__name__)
                    await _stop_quietly(producer, 1.0)
                    await asyncio.sleep(backoff.failed())
                    continue
                backoff.succeeded()
                self._failing_since = None
                self._probing = False
                self._producer = producer
                # One round for both topics: a signature's and its contact's batches leave together.
                rounds = ProducerRounds(producer, self.timings.ack_timeout)
                self._lanes = _TopicLanes(
                    PartitionLanes(producer, self.topic, self.timings.ack_timeout, rounds=rounds),
                    # Where erasure's tombstone goes too (compaction works per partition).
                    PartitionLanes(
                        producer,
                        self.contacts_topic,
                        self.timings.ack_timeout,
                        placement=contact_partition,
                        rounds=rounds,
                    ),
                )
                logger.info("producer connected", extra={"topic": self.topic})
            await asyncio.sleep(self.timings.check_interval)
            current = self._producer
            if current is not None and self._stuck(current):
                logger.warning("replacing a producer that keeps failing")
                self.replacements += 1
                self._producer = None
                self._lanes = None
                retiring = asyncio.create_task(_stop_quietly(current, 5.0))
                self._retiring.add(retiring)
                retiring.add_done_callback(self._retiring.discard)


@dataclass(frozen=True, slots=True)
class _TopicLanes:
    """One producer's lanes: a set per topic, replaced together with the producer."""

    signatures: PartitionLanes
    contacts: PartitionLanes


def _not_needed(key: bytes) -> int:
    raise AssertionError("no contact to place")


_NOT_NEEDED: Callable[[bytes], int] = _not_needed


async def _acknowledged(acks: list[asyncio.Future[None]]) -> None:
    """Wait for every ack; the first failure raises (the others' are marked seen)."""
    # shield: a request that gives up must not cancel its neighbours' ack.  One by one:
    # all are in flight already, and a request has one or two (gather costs more).
    for ack in acks:
        await asyncio.shield(ack)


async def _stop_quietly(producer: AIOKafkaProducer, within: float) -> None:
    """Stop ``producer`` (flushing what it can) within ``within`` seconds; never raises.

    A producer retired while the broker is down cannot flush; after ``within`` its
    connections are closed anyway, so nothing of it outlives the call.
    """
    try:
        async with asyncio.timeout(within):
            await producer.stop()
        return
    except Exception as exc:  # noqa: BLE001 - a producer being retired may fail in any way
        logger.warning("producer did not stop cleanly: %s", type(exc).__name__)
    try:
        async with asyncio.timeout(within):
            await stop_sender(producer)  # the sender loop would retry forever
            await producer.client.close()
    except Exception as exc:  # noqa: BLE001 - best effort: the process must go on serving
        logger.warning("producer connections did not close: %s", type(exc).__name__)


class PartitionLanes:
    """Records of concurrent requests sent together: one producer batch per partition and round.

    ``producer.send`` costs a future, a lookup and a partitioner call per record; at
    thousands of requests a second that was a quarter of intake's CPU.  Here each
    partition has a lane: records wait in it while the producer's current round is on its
    way, then all of them leave as one batch (``producer.send_batch``), and everyone
    waiting on that batch is answered by its single acknowledgement.  The lanes of one
    producer share its :class:`ProducerRounds`, so the signatures' and the contacts' batches
    leave together (see there).

    The promises are the producer's own: the batch is idempotent and ``acks=all`` (the
    sequence number is given when the batch is drained, as for ``send``); a record's
    partition is the default partitioner's (murmur2 of the key), so one case keeps one
    partition and its order; a lane sends one batch after another, in arrival order.
    The murmur2 is pure Python, so each key's partition is remembered (a case id comes
    back thousands of times).

    ``placement``: instead, the topic's own rule (key, sorted partitions) -> partition,
    for keys seen about once (supporter keys), where a memo would only churn.
    """

    # What ``create_producer`` leaves the producer with; a key's partition is computed
    # once per partition count and remembered (the hash is pure Python).
    _partitioner = DefaultPartitioner()

    def __init__(
        self,
        producer: AIOKafkaProducer,
        topic: str,
        ack_timeout: float,
        *,
        placement: Callable[[bytes, Sequence[int]], int] | None = None,
        rounds: ProducerRounds | None = None,
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._placement = placement
        self._rounds = rounds if rounds is not None else ProducerRounds(producer, ack_timeout)
        self._partitions: set[int] | None = None
        self._ordered: list[int] = []
        self._partition_of: dict[bytes, int] = {}

    def partitioner(self) -> Callable[[bytes], int] | None:
        """The key -> partition function, or ``None`` until the topic's metadata is known."""
        partitions = self._producer.client.cluster.partitions_for_topic(self._topic)
        if partitions is None:
            return None
        if partitions != self._partitions:
            # More partitions (or the first look): compute every key's partition again.
            self._partitions = set(partitions)
            self._ordered = sorted(partitions)
            self._partition_of = {}
        return self._partition

    async def fetch_partitioner(self) -> Callable[[bytes], int]:
        """:meth:`partitioner`, after asking the broker for the topic's metadata."""
        await self._producer.partitions_for(self._topic)
        partition_of = self.partitioner()
        if partition_of is None:
            raise BrokerUnavailable(f"no partitions known for {self._topic}")
        return partition_of

    def _partition(self, key: bytes) -> int:
        if self._placement is not None:
            return self._placement(key, self._ordered)
        partition = self._partition_of.get(key)
        if partition is None:
            if len(self._partition_of) >= _MAX_KEYS_REMEMBERED:
                self._partition_of.clear()
            # As the producer calls it: (key, all partitions by id, those available).
            partition = int(self._partitioner(key, self._ordered, self._ordered))
            self._partition_of[key] = partition
        return partition

    def add(self, partition: int, key: bytes, value: bytes) -> asyncio.Future[None]:
        """Queue one record; the future is done when the broker acknowledged its batch.

        Callers share the future: await it through :func:`asyncio.shield`.
        """
        return self._rounds.add(self._topic, partition, key, value)


_MAX_KEYS_REMEMBERED = 100_000


class ProducerRounds:
    """One producer's records in rounds: every partition's batch of a round is handed over at once.

    The producer keeps one request in flight per broker and, once it is answered, sends
    the batches that are ready.  Lanes that each sent their next batch when their own
    acknowledgement came back fell out of step: the first to hand one over started the
    next request alone, the others waited a whole round trip for the one after (with a
    contact on six partitions per signature, most requests carried one or two batches of
    the seven).  Here a round starts when the previous one is answered, and hands every
    batch waiting, of every topic and partition, to the producer before it yields: they
    leave in one request per broker.

    Each partition of a round keeps its own acknowledgement, so a batch the broker
    refuses fails only the records of that partition; a partition's records fail with
    ``TimeoutError`` ``ack_timeout`` seconds after its round began collecting them.
    """

    def __init__(self, producer: AIOKafkaProducer, ack_timeout: float) -> None:
        self._producer = producer
        self._ack_timeout = ack_timeout
        self._waiting: dict[tuple[str, int], _Lane] = {}
        self._sender: asyncio.Task[None] | None = None

    def add(self, topic: str, partition: int, key: bytes, value: bytes) -> asyncio.Future[None]:
        """Queue one record for the next round; see :meth:`PartitionLanes.add`."""
        lane = self._waiting.get((topic, partition))
        if lane is None:
            lane = self._waiting[(topic, partition)] = _Lane()
            # Its records get TimeoutError if not acknowledged in time.
            asyncio.get_running_loop().call_later(self._ack_timeout, _expire, lane.acked)
        lane.records.append((key, value))
        if self._sender is None:
            self._sender = asyncio.create_task(self._send())
        return lane.acked

    async def _send(self) -> None:
        try:
            while self._waiting:
                round_, self._waiting = self._waiting, {}
                try:
                    await self._send_round(round_)
                except asyncio.CancelledError:
                    for lane in round_.values():
                        _settle(lane.acked, BrokerUnavailable("the producer is stopping"))
                    raise
        finally:
            self._sender = None

    async def _send_round(self, round_: dict[tuple[str, int], _Lane]) -> None:
        # Every batch of the round is handed over before any is awaited (first batches
        # first: a partition's second batch waits for its first to be drained).
        handed: list[tuple[int, str, int, BatchBuilder, _Lane]] = []
        for (topic, partition), lane in round_.items():
            try:
                batches = self._batches(lane.records)
            except ValueError as exc:
                _settle(lane.acked, exc)
                continue
            handed += [(index, topic, partition, batch, lane) for index, batch in enumerate(batches)]
        handed.sort(key=lambda item: item[0])
        delivered: list[tuple[_Lane, asyncio.Future[object]]] = []
        for _, topic, partition, batch, lane in handed:
            if lane.acked.done():
                continue  # an earlier batch of its partition failed, or the round timed out
            try:
                delivered.append((lane, await self._producer.send_batch(batch, topic, partition=partition)))
            except Exception as exc:  # noqa: BLE001 - handed to the partition's waiters; publish() decides
                _settle(lane.acked, exc)
        outcomes = await asyncio.gather(*(future for _, future in delivered), return_exceptions=True)
        for (lane, _), outcome in zip(delivered, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                _settle(lane.acked, outcome)
        # ``acked`` may be done already: its round timed out (see ``_expire``).
        for lane in round_.values():
            _settle(lane.acked, None)

    def _batches(self, records: list[tuple[bytes, bytes]]) -> list[BatchBuilder]:
        """``records`` in closed producer batches; ``ValueError`` if one record fits in none."""
        batches = []
        while records:
            batch = self._producer.create_batch()
            taken = 0
            for key, value in records:
                if batch.append(key=key, value=value, timestamp=None) is None:
                    break
                taken += 1
            if taken == 0:
                raise ValueError("a record is larger than a producer batch")
            # Closed: the accumulator sends it at once (no linger; the round gathered).
            batch.close()
            batches.append(batch)
            records = records[taken:]
        return batches


class _Lane:
    __slots__ = ("acked", "records")

    def __init__(self) -> None:
        self.records: list[tuple[bytes, bytes]] = []
        self.acked: asyncio.Future[None] = _ack_future()


def _ack_future() -> asyncio.Future[None]:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    # Every waiter may have given up (timeout): mark a failure as seen, so asyncio does
    # not log "exception was never retrieved" for it.
    future.add_done_callback(_seen)
    return future


def _expire(acked: asyncio.Future[None]) -> None:
    _settle(acked, TimeoutError())


def _settle(acked: asyncio.Future[None], error: BaseException | None) -> None:
    if acked.done():
        return
    if error is None:
        acked.set_result(None)
    else:
        acked.set_exception(error)


def _seen(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()
