"""Publishing accepted signatures to ``signatures.v1``: 202 only after the broker's ack.

:class:`KafkaSignaturePublisher` owns an idempotent ``acks=all`` producer and three
promises:

- **bounded**: :meth:`publish` returns once every record is acknowledged, or raises
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
from typing import Protocol

from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry, Counter, Histogram

from clameur.events import SignatureAccepted

logger = logging.getLogger(__name__)

ProducerFactory = Callable[[], AIOKafkaProducer]


class BrokerUnavailable(Exception):
    """The broker did not acknowledge in time (or is being reconnected): answer 503."""


class SignaturePublisher(Protocol):
    """Where accepted signatures go; ``publish`` returns only once they are durable."""

    async def publish(self, events: Sequence[SignatureAccepted]) -> None:
        """Raise :class:`BrokerUnavailable` unless every event was acknowledged."""
        ...

    async def check(self) -> None:
        """Readiness: raise when no producer is connected."""
        ...


class PublishMetrics:
    """``clameur_intake_produce_*``: attempts beside errors, and the time to the ack."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.attempts = Counter(
            "clameur_intake_produce_attempts", "Records handed to the producer.", registry=registry
        )
        self.errors = Counter(
            "clameur_intake_produce_errors",
            "Records the broker did not acknowledge in time.",
            registry=registry,
        )
        self.duration = Histogram(
            "clameur_intake_produce_duration_seconds",
            "From send to the broker's acknowledgement.",
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )


class KafkaSignaturePublisher:
    """Signatures to Kafka, keyed by case id; see the module docstring for the promises."""

    def __init__(
        self,
        *,
        topic: str,
        producer_factory: ProducerFactory,
        metrics: PublishMetrics,
        ack_timeout: float,
        probe_interval: float,
        reset_after: float,
        clock: Callable[[], float] = time.monotonic,
        check_interval: float = 0.5,
    ) -> None:
        self._topic = topic
        self._new_producer = producer_factory
        self._metrics = metrics
        self._ack_timeout = ack_timeout
        self._probe_interval = probe_interval
        self._reset_after = reset_after
        self._clock = clock
        self._check_interval = check_interval
        self._producer: AIOKafkaProducer | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        # Failure state: since when every attempt failed, and the probe gate.
        self._failing_since: float | None = None
        self._next_probe = 0.0
        self._probing = False
        self.replacements = 0

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
        if producer is not None:
            await _stop_quietly(producer, flush_timeout)
        for task in list(self._retiring):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def check(self) -> None:
        producer = self._producer
        if producer is None:
            raise BrokerUnavailable("the producer is not connected to the broker yet")
        if _sender_died(producer):
            raise BrokerUnavailable("the producer stopped; a new one is being started")

    # -- the hot path --------------------------------------------------------------------

    async def publish(self, events: Sequence[SignatureAccepted]) -> None:
        producer = self._admit()
        self._metrics.attempts.inc(len(events))
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._ack_timeout):
                if len(events) == 1:
                    event = events[0]
                    acked = await producer.send(
                        self._topic, value=event.to_json(), key=event.case_id.encode()
                    )
                    await acked
                else:
                    # Send all first so they share batches, then wait for every ack.
                    pending = [
                        await producer.send(self._topic, value=event.to_json(), key=event.case_id.encode())
                        for event in events
                    ]
                    await asyncio.gather(*pending)
        except Exception as exc:
            self._failed()
            self._metrics.errors.inc(len(events))
            if not isinstance(exc, TimeoutError):
                logger.warning("the broker refused signatures: %s", type(exc).__name__)
            raise BrokerUnavailable(f"the broker did not acknowledge: {type(exc).__name__}") from exc
        self._metrics.duration.observe(time.perf_counter() - started)
        self._succeeded()

    def _admit(self) -> AIOKafkaProducer:
        producer = self._producer
        if producer is None:
            raise BrokerUnavailable("the producer is not connected to the broker")
        if self._failing_since is None:
            return producer
        now = self._clock()
        if self._probing or now < self._next_probe:
            self._metrics.errors.inc()
            raise BrokerUnavailable("the broker is failing; waiting for it to come back")
        self._probing = True
        self._next_probe = now + self._probe_interval
        return producer

    def _failed(self) -> None:
        now = self._clock()
        if self._failing_since is None:
            self._failing_since = now
            logger.warning("the broker stopped acknowledging signatures")
        self._next_probe = now + self._probe_interval
        self._probing = False

    def _succeeded(self) -> None:
        if self._failing_since is not None:
            logger.info("the broker acknowledges signatures again")
        self._failing_since = None
        self._probing = False

    # -- recovery ----------------------------------------------------------------------

    def _stuck(self, producer: AIOKafkaProducer) -> bool:
        if _sender_died(producer):
            return True
        return self._failing_since is not None and self._clock() - self._failing_since >= self._reset_after

    async def _supervise(self) -> None:
        backoff = 0.2
        while True:
            if self._producer is None:
                producer = self._new_producer()
                try:
                    await producer.start()
                except Exception as exc:  # noqa: BLE001 - broker down at start: retry with backoff
                    logger.warning("cannot connect the producer yet: %s", type(exc).__name__)
                    await _stop_quietly(producer, 1.0)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                backoff = 0.2
                self._failing_since = None
                self._probing = False
                self._producer = producer
                logger.info("producer connected", extra={"topic": self._topic})
            await asyncio.sleep(self._check_interval)
            current = self._producer
            if current is not None and self._stuck(current):
                logger.warning("replacing a producer that keeps failing")
                self.replacements += 1
                self._producer = None
                retiring = asyncio.create_task(_stop_quietly(current, 5.0))
                self._retiring.add(retiring)
                retiring.add_done_callback(self._retiring.discard)


def _sender_died(producer: AIOKafkaProducer) -> bool:
    # aiokafka keeps its sender loop in a task; if that task ended, nothing will ever be sent.
    sender = getattr(producer, "_sender", None)
    task = getattr(sender, "sender_task", None)
    return task is not None and task.done()


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
            sender = getattr(producer, "_sender", None)
            if sender is not None:
                await sender.close()  # cancels the sender loop, which would retry forever
            await producer.client.close()
    except Exception as exc:  # noqa: BLE001 - best effort: the process must go on serving
        logger.warning("producer connections did not close: %s", type(exc).__name__)
