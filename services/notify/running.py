"""What notify runs between start and stop: its connections and its six loops.

:class:`NotifyLifespan` opens the connections once (:class:`Connections`), starts the
loops (:class:`Loops`) and, on shutdown, drains them in the order that loses nothing:
stop claiming and finish the sends in flight (outcomes recorded), stop fanning out, let
both consumers finish their batch, store offsets and leave their groups; then close the
topic reader, the producer, the SMTP connections and the pool.  Whatever opened before a
failure at start is closed too.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from aiokafka import AIOKafkaProducer
from fastapi import FastAPI

from clameur.consumer import BatchApplier, BatchConsumer, BatchLimits, ConsumerMetrics
from clameur.database import create_pool
from clameur.events import (
    CaseEvent,
    CaseState,
    Event,
    SignatureLogEvent,
    Suppression,
    decode_case_event,
    decode_case_state,
    decode_signature_log_event,
    decode_suppression,
)
from clameur.kafka import create_producer
from clameur.serving import Started
from clameur.web import ReadinessCheck
from notify.compaction import keep_ticking
from notify.contacts import ContactCipher, ContactRecord, ContactsApplier, decode_contact_record
from notify.erasure import Eraser
from notify.ledger import CaseNewsApplier, DeliveryLedger, Preferences, SupporterListApplier
from notify.messages import ConfirmationRenderer, MessageRenderer, SenderIdentity, Templates
from notify.metrics import NotifyMetrics
from notify.progress import ReadProgress, TopicEnds
from notify.retention import CaseRetentionApplier, RetentionJob
from notify.retries import RateLimiter
from notify.sending import FanOut, Sender, SendingOptions
from notify.settings import NotifySettings
from notify.smtp import SmtpPool
from notify.suppressions import AddressHashes, SuppressionApplier
from notify.tokens import ConfirmationSigner, TokenSigner

if TYPE_CHECKING:
    import asyncpg

    Pool = asyncpg.Pool[Any]

E = TypeVar("E")

logger = logging.getLogger(__name__)

CLIENT_ID = "clameur-notify"


@dataclass(frozen=True)
class NotifyParts:
    """What notify is made of before it opens anything; built once by ``create_app``."""

    settings: NotifySettings
    metrics: NotifyMetrics
    consumer_metrics: ConsumerMetrics
    templates: Templates
    signer: TokenSigner
    confirmation_signer: ConfirmationSigner
    cipher: ContactCipher
    preferences: Preferences
    """Given its pool when the connections open (the routes hold it from the start)."""


@dataclass(frozen=True)
class Connections:
    """Notify's connections, opened once at start and closed once at stop."""

    pool: Pool
    producer: AIOKafkaProducer
    ends: TopicEnds
    transport: SmtpPool
    contact_ends: TopicEnds
    suppression_ends: TopicEnds


@contextlib.asynccontextmanager
async def open_connections(settings: NotifySettings) -> AsyncIterator[Connections]:
    """Open the pool, the SMTP pool, the producer and the topic reader; close them in reverse."""
    async with contextlib.AsyncExitStack() as opened:
        pool = await create_pool(settings.database_url, min_size=2, max_size=10)
        opened.push_async_callback(pool.close)
        transport = SmtpPool(
            settings.smtp,
            size=settings.notify_smtp_pool_size,
            timeout_s=settings.notify_smtp_timeout_s,
            messages_per_connection=settings.notify_messages_per_connection,
            local_hostname=settings.public_domain,
        )
        opened.push_async_callback(transport.close)
        producer = create_producer(settings.kafka_access, client_id=CLIENT_ID)
        await producer.start()
        opened.push_async_callback(producer.stop)
        ends = TopicEnds(settings.kafka_access, settings.topics.signatures)
        await ends.start()
        opened.push_async_callback(ends.stop)
        contact_ends = TopicEnds(settings.kafka_access, settings.topics.contacts)
        await contact_ends.start()
        opened.push_async_callback(contact_ends.stop)
        suppression_ends = TopicEnds(settings.kafka_access, settings.topics.suppressions)
        await suppression_ends.start()
        opened.push_async_callback(suppression_ends.stop)
        yield Connections(pool, producer, ends, transport, contact_ends, suppression_ends)


class Loops:
    """Notify's background loops: the consumers, the fan-out, the sender, the pending gauge,
    and erasure's: the contacts ticks (compaction within the bound) and the retention job."""

    def __init__(self, parts: NotifyParts, connections: Connections, eraser: Eraser) -> None:
        settings, pool, metrics = parts.settings, connections.pool, parts.metrics
        topics = settings.topics
        self.ledger = DeliveryLedger(pool, parts.cipher.open)
        self.metrics = metrics
        prefix = settings.notify_group_prefix
        if prefix is None:
            prefix = settings.topic_prefix
        supporters = SupporterListApplier(
            pool, f"{prefix}notify-supporters", on_recorded=metrics.supporters_recorded.inc
        )
        news = CaseNewsApplier(pool, f"{prefix}notify-deliveries")
        self.supporters: BatchConsumer[SignatureLogEvent] = _consumer(
            parts,
            connections,
            topics.signatures,
            supporters,
            decode_signature_log_event,
            BatchLimits(max_records=2000),
        )
        contacts = ContactsApplier(
            pool, f"{prefix}notify-contacts", parts.cipher, AddressHashes(settings.secret.get_secret_value())
        )
        self.contacts = _contacts_consumer(parts, connections, contacts)
        self.case_news: BatchConsumer[CaseEvent] = _consumer(
            parts, connections, topics.case_events, news, decode_case_event, BatchLimits()
        )
        suppressions = SuppressionApplier(pool, f"{prefix}notify-suppressions")
        self.suppressions: BatchConsumer[Suppression] = _consumer(
            parts, connections, topics.suppressions, suppressions, decode_suppression, BatchLimits()
        )
        self.fan_out = FanOut(
            self.ledger,
            # News waits for the suppressions too: a notify on a fresh database mails no one
            # suppressed before it has read them all.
            ReadProgress(
                connections.ends,
                supporters,
                (connections.contact_ends, contacts),
                (connections.suppression_ends, suppressions),
            ),
            grace_s=settings.notify_fanout_grace_s,
            idle_poll_s=settings.notify_idle_poll_s,
            # A rebuild writes no reminder: its confirmations were answered or reminded live.
            reminder_after_s=settings.confirmation_reminder_s if settings.notify_send else None,
        )
        self.sender = _sender(parts, connections.transport, self.ledger)
        self._erasure_loops(parts, connections, eraser, prefix)
        # A rebuild (CLAMEUR_NOTIFY_SEND=false) never runs the sender: nothing is claimed or sent.
        self.sending = settings.notify_send
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def _erasure_loops(
        self, parts: NotifyParts, connections: Connections, eraser: Eraser, prefix: str
    ) -> None:
        """The cases' retention clocks, the contacts ticks and the retention job."""
        settings, pool = parts.settings, connections.pool
        self.case_clocks: BatchConsumer[CaseState] = _consumer(
            parts,
            connections,
            settings.topics.cases,
            CaseRetentionApplier(pool, f"{prefix}notify-retention"),
            decode_case_state,
            BatchLimits(),
        )
        self.ticks = functools.partial(
            keep_ticking,
            connections.producer,
            settings.kafka_access,
            settings.topics.contacts,
            settings.erasure_bound_s,
        )
        self.retention = RetentionJob(
            pool,
            eraser,
            parts.metrics,
            settings.retention_days,
            confirmation_expiry_s=settings.confirmation_expiry_s,
        )
        self.retention_every_s = settings.retention_interval_s

    def start(self) -> None:
        self._tasks = {
            "supporters": asyncio.create_task(self.supporters.run(), name="notify-supporters"),
            "case-news": asyncio.create_task(self.case_news.run(), name="notify-case-news"),
            "contacts": asyncio.create_task(self.contacts.run(), name="notify-contacts"),
            "fan-out": asyncio.create_task(self.fan_out.run(), name="notify-fan-out"),
            "pending": asyncio.create_task(watch_pending(self.ledger, self.metrics), name="notify-pending"),
            "suppressions": asyncio.create_task(self.suppressions.run(), name="notify-suppressions"),
            "case-clocks": asyncio.create_task(self.case_clocks.run(), name="notify-case-clocks"),
        }
        if self.sending:
            # A rebuild publishes nothing on the live topics: no ticks, no retention
            # (its tombstones), no sender; only the live notify does these.
            self._tasks["sender"] = asyncio.create_task(self.sender.run(), name="notify-sender")
            self._tasks["contacts-ticks"] = asyncio.create_task(self.ticks(), name="notify-contacts-ticks")
            self._tasks["retention"] = asyncio.create_task(
                self.retention.run(self.retention_every_s), name="notify-retention"
            )
        for name, task in self._tasks.items():
            task.add_done_callback(_log_unexpected_end(name))

    def stopped(self) -> list[str]:
        """The loops that have ended (none should, before :meth:`drain`)."""
        return sorted(name for name, task in self._tasks.items() if task.done())

    async def drain(self) -> None:
        """Stop sending first, then fanning out, then reading: each finishes what it holds."""
        self.sender.stop()
        self.fan_out.stop()
        if "sender" in self._tasks:
            await _finish(self._tasks["sender"], "sender")
        await _finish(self._tasks["fan-out"], "fan-out")
        self.supporters.stop()
        self.case_news.stop()
        self.contacts.stop()
        self.suppressions.stop()
        self.case_clocks.stop()
        await _finish(self._tasks["supporters"], "supporters consumer")
        await _finish(self._tasks["case-news"], "case news consumer")
        await _finish(self._tasks["contacts"], "contacts consumer")
        await _finish(self._tasks["suppressions"], "suppressions consumer")
        await _finish(self._tasks["case-clocks"], "case clocks consumer")
        # The ticks and a retention pass hold nothing that a restart would lose.
        timers = [self._tasks[n] for n in ("pending", "contacts-ticks", "retention") if n in self._tasks]
        for task in timers:
            task.cancel()
        await asyncio.gather(*timers, return_exceptions=True)


class _GroupApplier(BatchApplier[E], Protocol[E]):
    """An applier that keeps its offsets under its consumer group (both of notify's do)."""

    group_id: str


def _consumer(
    parts: NotifyParts,
    connections: Connections,
    topic: str,
    applier: _GroupApplier[E],
    decode: Callable[[bytes], E],
    limits: BatchLimits,
) -> BatchConsumer[E]:
    """A consumer of ``topic`` in the applier's group; poison goes to the DLQ through notify's producer."""
    return BatchConsumer(
        bootstrap=parts.settings.kafka_access,
        topic=topic,
        group_id=applier.group_id,
        decode=decode,
        applier=applier,
        dlq_producer=connections.producer,
        metrics=parts.consumer_metrics,
        limits=limits,
        client_id=CLIENT_ID,
    )


def _contacts_consumer(
    parts: NotifyParts, connections: Connections, contacts: ContactsApplier
) -> BatchConsumer[ContactRecord]:
    """contacts.v1 is read record by record with its key (a tombstone has no value)."""
    return BatchConsumer(
        bootstrap=parts.settings.kafka_access,
        topic=parts.settings.topics.contacts,
        group_id=contacts.group_id,
        decode=_never,
        decode_record=decode_contact_record,
        applier=contacts,
        dlq_producer=connections.producer,
        metrics=parts.consumer_metrics,
        limits=BatchLimits(max_records=2000),
        client_id=CLIENT_ID,
    )


def _sender(parts: NotifyParts, transport: SmtpPool, ledger: DeliveryLedger) -> Sender:
    settings = parts.settings
    identity = SenderIdentity(
        settings.notify_sender_address, settings.notify_sender_name, settings.public_url
    )
    options = SendingOptions(
        concurrency=settings.notify_concurrency,
        claim_batch=settings.notify_claim_batch,
        lease_s=settings.notify_lease_s,
        idle_poll_s=settings.notify_idle_poll_s,
        crash_after_smtp=settings.notify_crash_after_smtp,
    )
    return Sender(
        ledger,
        MessageRenderer(parts.templates, identity, parts.signer),
        transport,
        parts.metrics,
        settings.email_retries,
        RateLimiter(settings.notify_rate_per_s, time.monotonic, burst=settings.notify_concurrency),
        options,
        confirmations=ConfirmationRenderer(
            parts.templates, identity, parts.confirmation_signer, settings.confirmation_expiry_s
        ),
    )


def _never(value: bytes) -> ContactRecord:
    raise AssertionError("contacts.v1 is decoded whole (decode_record)")


def signatures_publisher(
    settings: NotifySettings, running: Callable[[], Running]
) -> Callable[[Event, str], Any]:
    """Publish on signatures.v2 through notify's producer, waiting for the ack."""

    async def publish(event: Event, key: str) -> None:
        producer = running().connections.producer
        await producer.send_and_wait(settings.topics.signatures, event.to_json(), key=key.encode())

    return publish


async def watch_pending(ledger: DeliveryLedger, metrics: NotifyMetrics, every_s: float = 5.0) -> None:
    """Keep the pending-deliveries gauge current until cancelled."""
    while True:
        try:
            metrics.pending.set(await ledger.pending_count())
        except Exception as error:  # noqa: BLE001 - a gauge must not stop the service
            logger.info("pending deliveries not counted", extra={"error": type(error).__name__})
        await asyncio.sleep(every_s)


@dataclass(frozen=True)
class Running:
    """What the lifespan opened and started, while it runs."""

    connections: Connections
    loops: Loops
    eraser: Eraser


class NotifyLifespan:
    """Notify's lifespan: opens and starts everything at start, drains and closes it at stop.

    Routes and readiness checks are made before it runs; they reach what it opened
    through :attr:`running`.
    """

    def __init__(self, parts: NotifyParts) -> None:
        self.parts = parts
        self._running = Started[Running]("notify is not running (starting or stopping)")

    @property
    def running(self) -> Running:
        return self._running.current

    @contextlib.asynccontextmanager
    async def __call__(self, app: FastAPI) -> AsyncIterator[None]:
        settings = self.parts.settings
        async with open_connections(settings) as connections:
            self.parts.preferences.attach(connections.pool)
            eraser = Eraser(
                connections.pool,
                connections.producer,
                settings.kafka_access,
                settings.topics,
                settings.secret.get_secret_value(),
                settings.erasure_bound_s,
                self.parts.metrics,
            )
            loops = Loops(self.parts, connections, eraser)
            loops.start()
            with self._running.serving(Running(connections, loops, eraser)):
                logger.info("notify started", extra={"port": settings.notify_port})
                try:
                    yield
                finally:
                    logger.info("notify draining")
                    await loops.drain()
        logger.info("notify stopped")


def readiness_checks(settings: NotifySettings, running: Callable[[], Running]) -> dict[str, ReadinessCheck]:
    """Postgres, Kafka and the loops (and the SMTP server when asked): ``/readyz``'s checks."""

    async def postgres() -> None:
        await running().connections.pool.fetchval("SELECT 1")

    async def kafka() -> None:
        await asyncio.wait_for(running().connections.ends.end_offsets(), timeout=5)

    async def smtp() -> None:
        await asyncio.wait_for(running().connections.transport.check(), timeout=5)

    async def loops() -> None:
        stopped = running().loops.stopped()
        if stopped:
            raise RuntimeError(f"background loops stopped: {', '.join(stopped)}")

    checks: dict[str, ReadinessCheck] = {"postgres": postgres, "kafka": kafka, "loops": loops}
    if settings.notify_ready_checks_smtp:
        checks["smtp"] = smtp
    return checks


def _log_unexpected_end(name: str) -> Callable[[asyncio.Task[None]], None]:
    def log(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("background loop %s stopped", name, exc_info=task.exception())

    return log


async def _finish(task: asyncio.Task[None], what: str, timeout_s: float = 20.0) -> None:
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout=timeout_s)
    except TimeoutError:
        logger.warning("%s did not stop in time; cancelling", what)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    except Exception:
        logger.exception("%s ended with an error", what)
