"""Tally's application: the counting consumer, the outbox relay and the HTTP API, wired.

Everything is built in the lifespan and torn down in reverse: on shutdown the consumer
finishes its batch, commits it and leaves the group, the relay stops, the producer
flushes, the pool closes.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from starlette.middleware.cors import CORSMiddleware

from clameur.consumer import BatchConsumer, BatchLimits, ConsumerMetrics
from clameur.database import create_pool
from clameur.kafka import create_producer
from clameur.web import HttpMetrics, HttpMetricsMiddleware, install_problem_handlers, operations_router
from tally.admin_api import admin_router
from tally.case_store import PostgresCaseStore
from tally.counter_store import PostgresCounterStore
from tally.counting import Countable, decode_countable
from tally.metrics import SERVICE, TallyMetrics
from tally.outbox import OutboxRelay
from tally.public_api import public_router
from tally.settings import TallySettings
from tally.views import PostgresCaseReader

logger = logging.getLogger(__name__)

_READY_TIMEOUT_S = 5.0
_DRAIN_TIMEOUT_S = 25.0


def create_app(settings: TallySettings) -> FastAPI:
    """Tally's ASGI app; its lifespan connects to Kafka and Postgres and starts the loops.

    Routes that need the database are mounted in the lifespan, once it is reachable.
    """
    registry = CollectorRegistry()
    metrics = TallyMetrics(registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await create_pool(settings.database_url, min_size=2, max_size=10)
        producer = create_producer(settings.kafka, client_id="tally")
        try:
            await producer.start()
        except BaseException:
            await pool.close()
            raise
        topics = settings.topics
        relay = OutboxRelay(
            pool, producer, [topics.cases, topics.case_events], metrics, poll_s=settings.tally_relay_poll_s
        )
        counter_store = PostgresCounterStore(
            pool,
            metrics,
            topics.case_events,
            crash_at=settings.tally_crash_at if settings.env == "test" else None,
            on_outbox_written=relay.wake,
        )
        consumer: BatchConsumer[Countable] = BatchConsumer(
            bootstrap=settings.kafka,
            topic=topics.signatures,
            group_id=settings.tally_group_id,
            decode=decode_countable,
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
        stopping = asyncio.Event()
        case_store = PostgresCaseStore(pool, topics, on_outbox_written=relay.wake)
        reader = PostgresCaseReader(pool, cache_s=settings.tally_read_cache_s)
        app.include_router(
            public_router(
                reader,
                max_age_s=settings.tally_cache_max_age_s,
                live_interval_s=settings.tally_live_interval_s,
            )
        )
        app.include_router(admin_router(case_store, settings.admin_token))
        app.include_router(operations_router(registry, readiness_checks(pool, producer)))
        consuming = asyncio.create_task(_supervised(consumer.run, stopping, "signature consumer"))
        relaying = asyncio.create_task(relay.run())
        logger.info("tally started", extra={"topic": topics.signatures, "group": settings.tally_group_id})
        try:
            yield
        finally:
            stopping.set()
            consumer.stop()
            relay.stop()
            try:
                await asyncio.wait_for(asyncio.shield(consuming), _DRAIN_TIMEOUT_S)
            except TimeoutError:
                logger.error("the consumer did not drain in time; its batch will be replayed")
                consuming.cancel()
            await asyncio.gather(consuming, relaying, return_exceptions=True)
            await producer.stop()
            await pool.close()
            logger.info("tally stopped")

    app = FastAPI(title="Clameur tally", lifespan=lifespan)
    install_problem_handlers(app)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=["*"],
        allow_methods=["GET"],
        allow_headers=["If-None-Match"],
        expose_headers=["ETag"],
        max_age=600,
    )
    app.add_middleware(HttpMetricsMiddleware, metrics=HttpMetrics(registry, SERVICE))
    return app


def readiness_checks(
    pool: asyncpg.Pool[Any], producer: AIOKafkaProducer
) -> dict[str, Callable[[], Awaitable[None]]]:
    async def postgres() -> None:
        await asyncio.wait_for(pool.fetchval("SELECT 1"), _READY_TIMEOUT_S)

    async def kafka() -> None:
        await asyncio.wait_for(producer.client.fetch_all_metadata(), _READY_TIMEOUT_S)

    return {"postgres": postgres, "kafka": kafka}


async def _supervised(run: Callable[[], Awaitable[None]], stopping: asyncio.Event, what: str) -> None:
    """Run ``run`` until ``stopping``; restart it with backoff if it fails (broker away at start)."""
    delay = 0.5
    while not stopping.is_set():
        try:
            await run()
        except Exception as error:  # noqa: BLE001 - transient: logged, retried
            if stopping.is_set():
                return
            logger.warning(
                "%s failed; restarting in %.1f s",
                what,
                delay,
                extra={"error": f"{type(error).__name__}: {error}"},
            )
            await asyncio.sleep(delay * (0.5 + random.random()))  # noqa: S311 - jitter
            delay = min(delay * 2, 10.0)
        else:
            return
