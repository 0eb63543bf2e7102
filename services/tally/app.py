"""Tally's application: the counting consumer, the outbox relay and the HTTP API, wired.

The routes are mounted when the app is made; what they use is built when it starts
(:func:`started_tally`) and reached through :class:`Started`.  Everything is torn down
in reverse: on shutdown the consumer finishes its batch, commits it and leaves the group,
the relay stops, the producer flushes, the pool closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from starlette.middleware.cors import CORSMiddleware

from clameur.admin import AdminDoor
from clameur.admission import install_admission
from clameur.consumer import BatchConsumer, BatchLimits, ConsumerMetrics
from clameur.database import create_pool
from clameur.kafka import create_producer
from clameur.retry import RetryPolicy, retry
from clameur.web import (
    HttpMetrics,
    HttpMetricsMiddleware,
    Problem,
    ReadinessCheck,
    install_problem_handlers,
    operations_router,
)
from tally.admin_api import CASE_ACTIONS, admin_router
from tally.case_store import CaseStore, PostgresCaseStore
from tally.counter_store import PostgresCounterStore
from tally.counting import SignatureLogRecord, decode_log_record
from tally.expiry import PendingExpiry
from tally.invalidation_api import (
    INVALIDATION_ACTIONS,
    InvalidationPorts,
    invalidation_router,
    supporter_keys_of,
)
from tally.metrics import SERVICE, TallyMetrics
from tally.outbox import OutboxRelay
from tally.public_api import admission_rules, public_router
from tally.settings import TallySettings
from tally.views import CaseReader, PostgresCaseReader

logger = logging.getLogger(__name__)

_READY_TIMEOUT_S = 5.0
_DRAIN_TIMEOUT_S = 25.0
# The consumer's restarts when it fails (the broker away at start): forever, at most 10 s apart.
_RESTARTS = RetryPolicy(initial_s=0.5, maximum_s=10.0)
_NOT_STARTED = "Tally is starting or stopping; try again in a few seconds."
# Any page may read the counts (the widget); only reads, revalidated by ETag.
_PUBLIC_READS_CORS: dict[str, Any] = {
    "allow_origins": ["*"],
    "allow_methods": ["GET"],
    "allow_headers": ["If-None-Match"],
    "expose_headers": ["ETag"],
    "max_age": 600,
}


def create_app(settings: TallySettings) -> FastAPI:
    """Tally's ASGI app; its lifespan connects to Kafka and Postgres and starts the loops."""
    registry = CollectorRegistry()
    metrics = TallyMetrics(registry)
    started = Started()
    app = FastAPI(title="Clameur tally", lifespan=started.lifespan(settings, registry, metrics))
    install_problem_handlers(app)
    app.include_router(
        public_router(
            lambda: started.tally.reader,
            max_age_s=settings.tally_cache_max_age_s,
            live_interval_s=settings.tally_live_interval_s,
        )
    )
    door = AdminDoor(
        registry, SERVICE, settings.admin_token.get_secret_value(), (*CASE_ACTIONS, *INVALIDATION_ACTIONS)
    )
    app.include_router(admin_router(lambda: started.tally.cases, door, lambda: started.tally.reader))
    app.include_router(
        invalidation_router(lambda: started.tally.invalidations, door, supporter_keys_of(settings))
    )
    app.include_router(operations_router(registry, readiness_checks(started)))
    app.add_middleware(CORSMiddleware, **_PUBLIC_READS_CORS)
    app.add_middleware(HttpMetricsMiddleware, metrics=HttpMetrics(registry, SERVICE))
    install_admission(
        app,
        registry,
        SERVICE,
        settings,
        admission_rules(
            max_in_flight=settings.tally_reads_max_in_flight, max_streams=settings.tally_live_max_streams
        ),
    )
    return app


@dataclass(frozen=True)
class Tally:
    """What the routes use of a started tally."""

    pool: asyncpg.Pool[Any]
    producer: AIOKafkaProducer
    cases: CaseStore
    reader: CaseReader
    invalidations: InvalidationPorts


class Started:
    """The running :class:`Tally`, for routes mounted before it exists.

    Set by :meth:`lifespan` once Kafka and Postgres answer, unset when it ends; a request
    outside it gets a 503 problem.
    """

    def __init__(self) -> None:
        self._tally: Tally | None = None

    @property
    def tally(self) -> Tally:
        if self._tally is None:
            raise Problem(503, _NOT_STARTED, headers={"Retry-After": "5"})
        return self._tally

    def lifespan(
        self, settings: TallySettings, registry: CollectorRegistry, metrics: TallyMetrics
    ) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
        @asynccontextmanager
        async def lifespan(_: FastAPI) -> AsyncIterator[None]:
            async with started_tally(settings, registry, metrics) as tally:
                self._tally = tally
                try:
                    yield
                finally:
                    self._tally = None
            logger.info("tally stopped")

        return lifespan


@asynccontextmanager
async def started_tally(
    settings: TallySettings, registry: CollectorRegistry, metrics: TallyMetrics
) -> AsyncIterator[Tally]:
    """Tally's pool, producer, consumer and relay, started; stopped in reverse on exit."""
    topics = settings.topics
    async with AsyncExitStack() as stack:
        pool = await create_pool(settings.database_url, min_size=2, max_size=10)
        stack.push_async_callback(pool.close)
        producer = create_producer(settings.kafka_access, client_id="tally")
        await producer.start()
        stack.push_async_callback(producer.stop)
        relay = OutboxRelay(
            pool,
            producer,
            [topics.cases, topics.case_events, topics.signatures],
            metrics,
            poll_s=settings.tally_relay_poll_s,
        )
        if not settings.tally_publish:
            # A rebuild: a relay stopped before it runs publishes nothing to the live topics.
            relay.stop()
        counter_store = PostgresCounterStore(
            pool,
            metrics,
            topics.case_events,
            confirmation_expiry=timedelta(seconds=settings.confirmation_expiry_s),
            crash_at=settings.tally_crash_at if settings.env == "test" else None,
            on_outbox_written=relay.wake,
        )
        consumer = signature_consumer(settings, counter_store, producer, registry, metrics)
        expiry = PendingExpiry(
            pool,
            metrics,
            expiry=timedelta(seconds=settings.confirmation_expiry_s),
            grace=timedelta(seconds=settings.tally_expiry_grace_s),
            interval_s=settings.tally_expiry_interval_s,
        )
        await stack.enter_async_context(_running(consumer, relay, expiry))
        logger.info("tally started", extra={"topic": topics.signatures, "group": settings.tally_group_id})
        yield Tally(
            pool,
            producer,
            PostgresCaseStore(pool, topics, on_outbox_written=relay.wake),
            PostgresCaseReader(pool, cache_s=settings.tally_read_cache_s),
            InvalidationPorts(pool, topics.signatures, relay.wake),
        )


def signature_consumer(
    settings: TallySettings,
    counter_store: PostgresCounterStore,
    producer: AIOKafkaProducer,
    registry: CollectorRegistry,
    metrics: TallyMetrics,
) -> BatchConsumer[SignatureLogRecord]:
    """The consumer of signatures.v2 that counts into ``counter_store``; poison goes out by ``producer``."""
    return BatchConsumer(
        bootstrap=settings.kafka_access,
        topic=settings.topics.signatures,
        group_id=settings.tally_group_id,
        decode=decode_log_record,
        applier=counter_store,
        dlq_producer=producer,
        metrics=ConsumerMetrics(registry, SERVICE),
        limits=BatchLimits(
            max_records=settings.tally_batch_max_records,
            max_wait_s=settings.tally_batch_max_wait_s,
            applies_in_flight=settings.tally_batches_in_flight,
        ),
        lag=metrics.consumer_lag,
        client_id="tally",
    )


@asynccontextmanager
async def _running(
    consumer: BatchConsumer[SignatureLogRecord], relay: OutboxRelay, expiry: PendingExpiry
) -> AsyncIterator[None]:
    """The consumer, the relay and the expiry job run until exit.

    On exit the consumer finishes its batch, commits it and leaves the group (if it takes
    longer than ``_DRAIN_TIMEOUT_S`` it is cancelled, and its batch is read again by
    whoever gets the partitions), and the relay stops.
    """
    stopping = asyncio.Event()
    consuming = asyncio.create_task(_supervised(consumer.run, stopping, "signature consumer"))
    relaying = asyncio.create_task(relay.run())
    expiring = asyncio.create_task(expiry.run())
    try:
        yield
    finally:
        stopping.set()
        consumer.stop()
        relay.stop()
        expiry.stop()
        try:
            await asyncio.wait_for(asyncio.shield(consuming), _DRAIN_TIMEOUT_S)
        except TimeoutError:
            logger.error("the consumer did not drain in time; its batch will be replayed")
            consuming.cancel()
        await asyncio.gather(consuming, relaying, expiring, return_exceptions=True)


def readiness_checks(started: Started) -> dict[str, ReadinessCheck]:
    async def postgres() -> None:
        await asyncio.wait_for(started.tally.pool.fetchval("SELECT 1"), _READY_TIMEOUT_S)

    async def kafka() -> None:
        await asyncio.wait_for(started.tally.producer.client.fetch_all_metadata(), _READY_TIMEOUT_S)

    return {"postgres": postgres, "kafka": kafka}


async def _supervised(run: Callable[[], Awaitable[None]], stopping: asyncio.Event, what: str) -> None:
    """Run ``run`` to its end; restart it with backoff if it fails (the broker away at start).

    Once ``stopping`` is set nothing is restarted, and a failure ends it quietly.
    """

    async def unless_stopping() -> None:
        if not stopping.is_set():
            await run()

    async def pause(seconds: float) -> None:  # cut short by a shutdown
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), seconds)

    try:
        await retry(what, unless_stopping, _RESTARTS, stopping=stopping.is_set, sleep=pause)
    except Exception:
        # retry gives up only when stopping (the policy retries forever): nothing to restart.
        if not stopping.is_set():
            raise
