"""Fixtures of notify's tests: a real SMTP server that can refuse, settings, the app in-process."""

from __future__ import annotations

import email
import email.policy
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import EmailMessage
from typing import Any

import asyncpg
import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from notify.app import create_app
from notify.settings import NotifySettings
from notify.supporters import supporter_key

from clameur.events import Consent, Event, MilestoneReached, SignatureAccepted, VictoryDeclared, utc_now
from clameur.kafka import create_producer
from clameur.topics import Topics
from tests.conftest import TEST_SECRET, Infra
from tests.support import free_port


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes

    @property
    def message(self) -> EmailMessage:
        parsed = email.message_from_bytes(self.raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class Refusal:
    code: int
    times: int | None
    """How many times to refuse; ``None`` for always."""


@dataclass
class SmtpSink:
    """A real SMTP server (aiosmtpd) on loopback that keeps what it accepts.

    ``refuse(address, 451, times=2)`` makes it answer RCPT for that address with the
    code, ``times`` times (always when ``None``), then accept.
    """

    port: int = 0
    received: list[Received] = field(default_factory=list)
    refusals: dict[str, int] = field(default_factory=dict)
    _rules: dict[str, Refusal] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def refuse(self, address: str, code: int, times: int | None = None) -> None:
        with self._lock:
            self._rules[address] = Refusal(code, times)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        with self._lock:
            rule = self._rules.get(address)
            if rule is not None and (rule.times is None or rule.times > 0):
                if rule.times is not None:
                    rule.times -= 1
                self.refusals[address] = self.refusals.get(address, 0) + 1
                kind = "try again later" if rule.code < 500 else "no such mailbox"
                return f"{rule.code} {kind}"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        with self._lock:
            self.received.append(Received(str(envelope.mail_from), list(envelope.rcpt_tos), raw))
        return "250 Message accepted for delivery"

    def to(self, address: str) -> list[Received]:
        with self._lock:
            return [mail for mail in self.received if address in mail.rcpt_tos]

    def count(self) -> int:
        with self._lock:
            return len(self.received)


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink(port=free_port())
    controller = Controller(sink, hostname="127.0.0.1", port=sink.port)
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()


@pytest.fixture
def notify_env(service_env: dict[str, str], smtp_sink: SmtpSink) -> dict[str, str]:
    """Environment for a fast notify: short retries, no fan-out grace, quick polls."""
    return {
        **service_env,
        "CLAMEUR_SMTP_URL": f"smtp://127.0.0.1:{smtp_sink.port}",
        "CLAMEUR_PUBLIC_URL": "https://clameur.example.org",
        "CLAMEUR_NOTIFY_SENDER_ADDRESS": "news@clameur.example.org",
        "CLAMEUR_NOTIFY_RETRY_INITIAL_S": "0.2",
        "CLAMEUR_NOTIFY_RETRY_MAX_S": "1",
        "CLAMEUR_NOTIFY_MAX_ATTEMPTS": "5",
        "CLAMEUR_NOTIFY_FANOUT_GRACE_S": "0",
        "CLAMEUR_NOTIFY_IDLE_POLL_S": "0.1",
        "CLAMEUR_NOTIFY_RATE_PER_S": "1000",
        "CLAMEUR_LOG_JSON": "false",
    }


def settings_from(env: dict[str, str]) -> NotifySettings:
    fields = {
        key.removeprefix("CLAMEUR_").lower(): value
        for key, value in env.items()
        if key.startswith("CLAMEUR_")
    }
    return NotifySettings.model_validate(fields)


@dataclass
class RunningNotify:
    app: FastAPI
    client: httpx.AsyncClient
    settings: NotifySettings
    database: asyncpg.Pool[Any]

    async def deliveries(self, event_id: object) -> list[asyncpg.Record]:
        return list(
            await self.database.fetch(
                "SELECT d.*, s.email FROM notify.deliveries d"
                " LEFT JOIN notify.supporters s USING (supporter_key) WHERE d.event_id = $1 ORDER BY d.id",
                event_id,
            )
        )


@pytest.fixture
async def notify(notify_env: dict[str, str], infra: Infra) -> AsyncIterator[RunningNotify]:
    """Notify in this process (lifespan and all), with an HTTP client and a database pool."""
    settings = settings_from(notify_env)
    app = create_app(settings)
    database = await asyncpg.create_pool(infra.database_url, min_size=1, max_size=2)
    assert database is not None
    try:
        async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(
                transport=transport, base_url="https://clameur.example.org"
            ) as client:
                yield RunningNotify(app, client, settings, database)
    finally:
        await database.close()


async def scrape(client: httpx.AsyncClient) -> str:
    response = await client.get("/metrics")
    assert response.status_code == 200
    return response.text


def sample(metrics_text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text (0 when absent)."""
    for line in metrics_text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, label_text = head.partition("{")
        if metric != name:
            continue
        found = dict(part.split("=", 1) for part in label_text.rstrip("}").split(",") if "=" in part)
        if all(found.get(key, "").strip('"') == wanted for key, wanted in labels.items()):
            return float(value)
    return 0.0


def email_of(name: str, case_id: str) -> str:
    return f"{name}.{case_id}@example.org"


def signature(
    case_id: str,
    name: str,
    *,
    locale: str = "fr",
    consent: bool = True,
    first_name: str | None = None,
    received_at: datetime | None = None,
) -> SignatureAccepted:
    """A SignatureAccepted the way intake writes it (email only with consent)."""
    address = email_of(name, case_id)
    return SignatureAccepted(
        case_id=case_id,
        first_name=first_name if first_name is not None else name.capitalize(),
        last_name="Test",
        country="FR",
        locale=locale,
        supporter_key=supporter_key(TEST_SECRET, address),
        email=address if consent else None,
        consent=Consent(updates=consent),
        received_at=received_at or utc_now(),
    )


def milestone(
    case_id: str, threshold: int = 100_000, *, occurred_at: datetime | None = None
) -> MilestoneReached:
    return MilestoneReached(
        case_id=case_id,
        threshold=threshold,
        total=threshold + 12,
        case_title={"fr": "Libérez Nawal", "en": "Free Nawal"},
        default_locale="fr",
        occurred_at=occurred_at or utc_now() + timedelta(milliseconds=1),
    )


def victory(case_id: str) -> VictoryDeclared:
    return VictoryDeclared(
        case_id=case_id,
        headline={"fr": "Nawal est libre : merci !", "en": "Nawal is free: thank you!"},
        message={"fr": "Elle a retrouvé les siens.", "en": "She is back with her family."},
        total=123_456,
        case_title={"fr": "Libérez Nawal", "en": "Free Nawal"},
        default_locale="fr",
    )


async def produce(kafka: str, topic: str, events: Iterable[Event], key: Callable[[Event], str]) -> None:
    producer = create_producer(kafka)
    await producer.start()
    try:
        for event in events:
            await producer.send_and_wait(topic, event.to_json(), key=key(event).encode())
    finally:
        await producer.stop()


async def publish_signatures(infra: Infra, topics: Topics, signatures: Iterable[SignatureAccepted]) -> None:
    await produce(infra.kafka, topics.signatures, signatures, key=lambda e: getattr(e, "case_id"))  # noqa: B009


async def publish_case_events(infra: Infra, topics: Topics, events: Iterable[Event]) -> None:
    await produce(infra.kafka, topics.case_events, events, key=lambda e: getattr(e, "case_id"))  # noqa: B009


async def publish_milestone_after(
    infra: Infra, topics: Topics, signatures: Iterable[SignatureAccepted]
) -> MilestoneReached:
    """Publish the signatures, then a milestone of their case; returns the milestone."""
    signed = list(signatures)
    await publish_signatures(infra, topics, signed)
    event = milestone(signed[0].case_id)
    await publish_case_events(infra, topics, [event])
    return event
