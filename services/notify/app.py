"""The notify service: supporter list, case news, sending, unsubscribe and erasure.

``create_app(settings)`` builds nothing at import time; its lifespan builds the pool,
the producer, the consumers and the loops, and on shutdown drains them in order: stop
claiming and finish the sends in flight (outcomes recorded), stop fanning out, let
both consumers finish their batch, store offsets and leave their groups, then close
the producer, the SMTP connections and the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from clameur.consumer import BatchConsumer, BatchLimits, ConsumerMetrics
from clameur.database import create_pool
from clameur.events import CaseEvent, SignatureAccepted, decode_case_event, decode_signature
from clameur.kafka import create_producer, partitions_of
from clameur.web import HttpMetrics, HttpMetricsMiddleware, install_problem_handlers, operations_router
from notify.erasure import ErasureDesk, erasure_router
from notify.ledger import CaseNewsApplier, DeliveryLedger, Preferences, SupporterListApplier, stored_offsets
from notify.messages import MessageRenderer, SenderIdentity, Templates
from notify.metrics import NotifyMetrics
from notify.retries import RateLimiter, RetryPolicy
from notify.sending import FanOut, Sender, SendingOptions
from notify.settings import NotifySettings
from notify.smtp import SmtpPool
from notify.tokens import TokenSigner
from notify.unsubscribe import UnsubscribePages, unsubscribe_router

logger = logging.getLogger(__name__)

SERVICE = "notify"


class TopicEnds:
    """Where a topic ends now, per partition, read with a group-less consumer."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self._bootstrap = bootstrap
        self._partitions: list[TopicPartition] = []
        self._partitions_learnt_at = 0.0
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, client_id="clameur-notify-ends", enable_auto_commit=False
        )

    async def start(self) -> None:
        await self._consumer.start()

    async def stop(self) -> None:
        await self._consumer.stop()

    async def end_offsets(self) -> dict[int, int]:
        # Learnt again every 5 minutes (as often as aiokafka refreshes its metadata), so
        # partitions added to the topic count too; raises UnknownTopic until it exists.
        if not self._partitions or time.monotonic() - self._partitions_learnt_at > 300:
            found = await partitions_of(self._bootstrap, self.topic, client_id="clameur-notify-ends")
            self._partitions = [TopicPartition(self.topic, partition) for partition in found]
            self._partitions_learnt_at = time.monotonic()
        ends = await self._consumer.end_offsets(self._partitions)
        return {tp.partition: offset for tp, offset in ends.items()}


def _supporters_caught_up(
    ends: TopicEnds, applier: SupporterListApplier, topic: str
) -> Callable[[], Awaitable[bool]]:
    async def caught_up() -> bool:
        end = await ends.end_offsets()
        stored = await stored_offsets(applier.pool, applier.group_id, topic, end.keys())
        return all(stored.get(partition, 0) >= offset for partition, offset in end.items())

    return caught_up


async def _watch_pending(ledger: DeliveryLedger, metrics: NotifyMetrics, every_s: float = 5.0) -> None:
    while True:
        try:
            metrics.pending.set(await ledger.pending_count())
        except Exception as error:  # noqa: BLE001 - a gauge must not stop the service
            logger.info("pending deliveries not counted", extra={"error": type(error).__name__})
        await asyncio.sleep(every_s)


def create_app(settings: NotifySettings) -> FastAPI:
    """The notify ASGI app; everything it needs is built in its lifespan."""
    registry = CollectorRegistry()
    metrics = NotifyMetrics(registry)
    http_metrics = HttpMetrics(registry, SERVICE)
    consumer_metrics = ConsumerMetrics(registry, SERVICE)
    templates = Templates()
    signer = TokenSigner(settings.secret.get_secret_value())
    topics = settings.topics
    preferences = Preferences()
    state: dict[str, Any] = {}

    async def database_check() -> None:
        await state["pool"].fetchval("SELECT 1")

    async def kafka_check() -> None:
        await asyncio.wait_for(state["ends"].end_offsets(), timeout=5)

    async def smtp_check() -> None:
        await asyncio.wait_for(state["transport"].check(), timeout=5)

    async def loops_check() -> None:
        stopped = sorted(name for name, task in state.get("tasks", {}).items() if task.done())
        if stopped:
            raise RuntimeError(f"background loops stopped: {', '.join(stopped)}")

    checks: dict[str, Callable[[], Awaitable[None]]] = {
        "postgres": database_check,
        "kafka": kafka_check,
        "loops": loops_check,
    }
    if settings.notify_ready_checks_smtp:
        checks["smtp"] = smtp_check

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await create_pool(settings.database_url, min_size=2, max_size=10)
        producer = create_producer(settings.kafka, client_id="clameur-notify")
        ends = TopicEnds(settings.kafka, topics.signatures)
        transport = SmtpPool(
            settings.smtp,
            size=settings.notify_smtp_pool_size,
            timeout_s=settings.notify_smtp_timeout_s,
            messages_per_connection=settings.notify_messages_per_connection,
            local_hostname=settings.public_domain,
        )
        state.update(pool=pool, ends=ends, transport=transport)
        await producer.start()
        await ends.start()
        ledger = DeliveryLedger(pool)
        preferences.attach(pool)
        supporters = SupporterListApplier(
            pool, f"{settings.topic_prefix}notify-supporters", on_recorded=metrics.supporters_recorded.inc
        )
        supporter_consumer: BatchConsumer[SignatureAccepted] = BatchConsumer(
            bootstrap=settings.kafka,
            topic=topics.signatures,
            group_id=supporters.group_id,
            decode=decode_signature,
            applier=supporters,
            dlq_producer=producer,
            metrics=consumer_metrics,
            limits=BatchLimits(max_records=2000),
            client_id="clameur-notify",
        )
        news = CaseNewsApplier(pool, f"{settings.topic_prefix}notify-deliveries")
        news_consumer: BatchConsumer[CaseEvent] = BatchConsumer(
            bootstrap=settings.kafka,
            topic=topics.case_events,
            group_id=news.group_id,
            decode=decode_case_event,
            applier=news,
            dlq_producer=producer,
            metrics=consumer_metrics,
            client_id="clameur-notify",
        )
        renderer = MessageRenderer(
            templates,
            SenderIdentity(settings.notify_sender_address, settings.notify_sender_name, settings.public_url),
            signer,
        )
        sender = Sender(
            ledger,
            renderer,
            transport,
            metrics,
            RetryPolicy(
                settings.notify_max_attempts, settings.notify_retry_initial_s, settings.notify_retry_max_s
            ),
            RateLimiter(settings.notify_rate_per_s, time.monotonic, burst=settings.notify_concurrency),
            SendingOptions(
                concurrency=settings.notify_concurrency,
                claim_batch=settings.notify_claim_batch,
                lease_s=settings.notify_lease_s,
                idle_poll_s=settings.notify_idle_poll_s,
                crash_after_smtp=settings.notify_crash_after_smtp,
            ),
        )
        fan_out = FanOut(
            ledger,
            _supporters_caught_up(ends, supporters, topics.signatures),
            grace_s=settings.notify_fanout_grace_s,
            idle_poll_s=settings.notify_idle_poll_s,
        )
        tasks = {
            "supporters": asyncio.create_task(supporter_consumer.run(), name="notify-supporters"),
            "case-news": asyncio.create_task(news_consumer.run(), name="notify-case-news"),
            "fan-out": asyncio.create_task(fan_out.run(), name="notify-fan-out"),
            "sender": asyncio.create_task(sender.run(), name="notify-sender"),
            "pending": asyncio.create_task(_watch_pending(ledger, metrics), name="notify-pending"),
        }
        for name, task in tasks.items():
            task.add_done_callback(_log_unexpected_end(name))
        state["tasks"] = tasks
        logger.info("notify started", extra={"port": settings.notify_port})
        try:
            yield
        finally:
            logger.info("notify draining")
            sender.stop()
            fan_out.stop()
            await _finish(tasks["sender"], "sender")
            await _finish(tasks["fan-out"], "fan-out")
            supporter_consumer.stop()
            news_consumer.stop()
            await _finish(tasks["supporters"], "supporters consumer")
            await _finish(tasks["case-news"], "case news consumer")
            tasks["pending"].cancel()
            await asyncio.gather(tasks["pending"], return_exceptions=True)
            await producer.stop()
            await ends.stop()
            await transport.close()
            await pool.close()
            logger.info("notify stopped")

    app = FastAPI(title="Clameur notify", lifespan=lifespan, docs_url=None, redoc_url=None)
    install_problem_handlers(app)
    app.add_middleware(HttpMetricsMiddleware, metrics=http_metrics)
    app.include_router(operations_router(registry, checks))
    app.include_router(unsubscribe_router(UnsubscribePages(signer, templates, preferences, metrics)))
    app.include_router(
        erasure_router(
            ErasureDesk(
                settings.secret.get_secret_value(), settings.admin_token.get_secret_value(), preferences
            )
        )
    )
    return app


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
