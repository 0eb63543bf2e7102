"""What a running intake is made of, built once when the app starts and closed when it stops.

:func:`open_intake` builds every resource from the settings (the producer, the cases.v1
follower, the Turnstile client, the desk that uses them) into one frozen
:class:`IntakeResources`; the routes reach it through :class:`Running`, which the
lifespan fills.  Shutdown order (SIGTERM): uvicorn stops accepting and lets requests in
flight finish, then the producer is flushed and the follower stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import httpx
from prometheus_client import CollectorRegistry

from clameur.buckets import RateLimit, TokenBuckets
from clameur.case_registry import CaseRegistry, follow_cases_forever
from clameur.events import utc_now
from clameur.kafka import create_producer
from clameur.serving import Started
from clameur.supporters import SupporterKeys
from clameur.web import ReadinessCheck
from intake.abuse import ClientAddresses, DomainLimits
from intake.human_check import HumanCheck, TurnstileCheck
from intake.idempotency import IdempotencyWindow
from intake.metrics import IntakeMetrics
from intake.publisher import KafkaSignaturePublisher, PublishMetrics, PublishTimings
from intake.settings import IntakeSettings
from intake.signing import PartnerKeys, SigningDesk
from intake.widgets import WidgetKeys

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IntakeResources:
    """A started intake: its settings, the cases it knows, its producer and its desk."""

    settings: IntakeSettings
    cases: CaseRegistry
    publisher: KafkaSignaturePublisher
    desk: SigningDesk


class Running(Started[IntakeResources]):
    """The resources of the started app, for its routes (:attr:`current`): set by the
    lifespan, cleared after."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__("intake is starting")

    def readiness_checks(self) -> dict[str, ReadinessCheck]:
        """``/readyz``: the cases are read and a producer is connected."""

        async def cases() -> None:
            if not self.current.cases.ready.is_set():
                raise RuntimeError("still reading cases.v1")

        async def broker() -> None:
            await self.current.publisher.check()

        return {"cases": cases, "broker": broker}


@asynccontextmanager
async def open_intake(
    settings: IntakeSettings, registry: CollectorRegistry
) -> AsyncIterator[IntakeResources]:
    """Every resource of intake, started; on exit the producer is flushed and all is closed.

    Intake's metrics are registered on ``registry`` here: one ``open_intake`` per registry.
    """
    cases = CaseRegistry()
    publisher = _publisher(settings, PublishMetrics(registry))
    async with AsyncExitStack() as stack:
        desk = _desk(
            settings,
            cases,
            publisher,
            IntakeMetrics(registry, lambda: float(len(cases))),
            await _human_check(settings, stack),
        )
        await stack.enter_async_context(_following(settings, cases))
        await publisher.start()
        try:
            yield IntakeResources(settings=settings, cases=cases, publisher=publisher, desk=desk)
        finally:
            # uvicorn has stopped accepting and finished the requests in flight.
            await publisher.stop()
    logger.info("intake stopped; producer flushed")


def _publisher(settings: IntakeSettings, metrics: PublishMetrics) -> KafkaSignaturePublisher:
    return KafkaSignaturePublisher(
        topic=settings.topics.signatures,
        contacts_topic=settings.topics.contacts,
        producer_factory=lambda: create_producer(
            settings.kafka_access,
            linger_ms=settings.producer_linger_ms,
            request_timeout_ms=settings.producer_request_timeout_ms,
            client_id="intake",
        ),
        metrics=metrics,
        timings=PublishTimings(
            ack_timeout=settings.broker_ack_timeout,
            probe_interval=settings.broker_probe_interval,
            reset_after=settings.producer_reset_after,
        ),
    )


async def _human_check(settings: IntakeSettings, stack: AsyncExitStack) -> HumanCheck | None:
    if settings.turnstile_secret is None:
        return None
    return TurnstileCheck(
        await stack.enter_async_context(httpx.AsyncClient()),
        secret=settings.turnstile_secret.get_secret_value(),
        verify_url=settings.turnstile_verify_url,
        timeout=settings.turnstile_timeout,
    )


def _desk(
    settings: IntakeSettings,
    cases: CaseRegistry,
    publisher: KafkaSignaturePublisher,
    metrics: IntakeMetrics,
    human_check: HumanCheck | None,
) -> SigningDesk:
    def buckets(burst: int, per_second: float) -> TokenBuckets:
        return TokenBuckets(
            RateLimit(burst, per_second), clock=time.monotonic, max_keys=settings.rate_limit_max_keys
        )

    return SigningDesk(
        cases=cases,
        publisher=publisher,
        keys=SupporterKeys.from_master(settings.secret.get_secret_value()),
        metrics=metrics,
        widgets=WidgetKeys(settings.widget_keys, required=settings.widget_key_required),
        addresses=ClientAddresses(settings.trusted_proxies),
        ip_limits=buckets(settings.rate_limit_ip_burst, settings.rate_limit_ip_per_second),
        domain_limits=DomainLimits(
            buckets(settings.rate_limit_domain_burst, settings.rate_limit_domain_per_second),
            settings.rate_limit_domain_exempt,
        ),
        partners=PartnerKeys(settings.partner_keys),
        idempotency=IdempotencyWindow(
            max_keys=settings.idempotency_max_keys,
            ttl=settings.idempotency_ttl,
            remember=lambda answer: answer.remembered,
        ),
        human_check=human_check,
        clock=utc_now,
        max_body_bytes=settings.max_body_bytes,
        batch_max_body_bytes=settings.batch_max_body_bytes,
        batch_max_items=settings.batch_max_items,
        broker_retry_after=settings.broker_retry_after,
    )


@asynccontextmanager
async def _following(settings: IntakeSettings, cases: CaseRegistry) -> AsyncIterator[None]:
    """``cases`` follows cases.v1 (in the background) until the block ends."""
    follower = asyncio.create_task(
        follow_cases_forever(settings.kafka_access, settings.topics.cases, cases, client_id="intake-cases"),
        name="intake-cases-follower",
    )
    try:
        yield
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
