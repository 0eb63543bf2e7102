"""Fixtures of notify's tests: settings, the app in-process, events (the SMTP sink is tests/conftest.py's)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from notify.app import create_app
from notify.contacts import ContactCipher
from notify.progress import TopicEnds
from notify.settings import NotifySettings
from notify.supporters import supporter_key

from clameur.database import create_pool
from clameur.events import (
    Consent,
    Contact,
    Event,
    MilestoneReached,
    SignatureAccepted,
    SignatureConfirmed,
    VictoryDeclared,
    utc_now,
)
from clameur.kafka import create_producer
from clameur.topics import Topics
from devstack.mailsink import SmtpSink
from tests.conftest import TEST_SECRET, Infra
from tests.notify.forgetting import publish_contacts
from tests.support import eventually, settings_from

CONTACTS: dict[str, Contact] = {}
"""The contact intake would write with each signature these helpers make (by supporter key)."""


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


@dataclass
class RunningNotify:
    app: FastAPI
    client: httpx.AsyncClient
    settings: NotifySettings
    database: asyncpg.Pool[Any]

    async def deliveries(self, event_id: object) -> list[dict[str, Any]]:
        """The event's delivery rows, each with the supporter's email opened (``None``: no contact)."""
        cipher = ContactCipher(TEST_SECRET)
        rows = await self.database.fetch(
            "SELECT d.*, k.email_sealed FROM notify.deliveries d"
            " LEFT JOIN notify.contacts k USING (supporter_key) WHERE d.event_id = $1 ORDER BY d.id",
            event_id,
        )
        return [
            {
                **dict(row),
                "email": None
                if row["email_sealed"] is None
                else cipher.open(row["supporter_key"], "email", row["email_sealed"]),
            }
            for row in rows
        ]


@pytest.fixture
async def pool(infra: Infra) -> AsyncIterator[asyncpg.Pool[Any]]:
    """A pool on the test database, for tests that drive notify's stores directly."""
    created = await create_pool(infra.database_url, min_size=1, max_size=4)
    yield created
    await created.close()


@pytest.fixture
def notify_overrides() -> dict[str, Any]:
    """Settings by field name on top of ``notify_env`` (a module overrides this fixture)."""
    return {}


@pytest.fixture
async def notify(
    notify_env: dict[str, str], notify_overrides: dict[str, Any], infra: Infra
) -> AsyncIterator[RunningNotify]:
    """Notify in this process (lifespan and all), with an HTTP client and a database pool."""
    settings = settings_from(NotifySettings, notify_env, **notify_overrides)
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
    awaits_confirmation: bool = False,
) -> SignatureAccepted:
    """A schema-2 SignatureAccepted the way intake writes it; its contact goes in :data:`CONTACTS`."""
    address = email_of(name, case_id)
    key = supporter_key(TEST_SECRET, address)
    CONTACTS[key] = Contact(
        supporter_key=key,
        email=address,
        first_name=first_name if first_name is not None else name.capitalize(),
        locale=locale,
    )
    return SignatureAccepted(
        case_id=case_id,
        country="FR",
        locale=locale,
        supporter_key=key,
        email_domain="example.org",
        consent=Consent(updates=consent),
        awaits_confirmation=awaits_confirmation,
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


async def publish_signatures(
    infra: Infra, topics: Topics, signatures: Iterable[SignatureAccepted], *, wait: bool = True
) -> None:
    """Publish signatures of supporters whose addresses are already confirmed, then their contacts.

    For the tests of news: each consenting signature is followed by its
    ``SignatureConfirmed``; with ``wait``, the contacts go out only once notify has read
    signatures.v2 to its end (so no confirmation email is asked for).  Without it (notify
    not running yet), both topics are on the broker before notify reads either.
    """
    signed = list(signatures)
    confirmed = [
        SignatureConfirmed(case_id=s.case_id, supporter_key=s.supporter_key)
        for s in signed
        if s.consent.updates
    ]
    await produce(infra.kafka, topics.signatures, [*signed, *confirmed], key=lambda e: getattr(e, "case_id"))  # noqa: B009
    if wait:
        await signatures_read(infra, topics)
    await publish_contacts(
        infra.kafka, topics, [CONTACTS[s.supporter_key] for s in signed if s.consent.updates]
    )


async def signatures_read(infra: Infra, topics: Topics, within: float = 30.0) -> None:
    """Wait until notify's supporter list has stored offsets to the end of signatures.v2."""
    ends = TopicEnds(infra.kafka, topics.signatures)
    await ends.start()
    database = await asyncpg.connect(infra.database_url)
    try:

        async def caught_up() -> bool:
            end = await ends.end_offsets()
            rows = await database.fetch(
                "SELECT partition, next_offset FROM notify.consumer_offsets"
                " WHERE group_id = $1 AND topic = $2",
                f"{topics.prefix}notify-supporters",
                topics.signatures,
            )
            stored = {row["partition"]: row["next_offset"] for row in rows}
            return all(stored.get(partition, 0) >= offset for partition, offset in end.items())

        await eventually(caught_up, within=within, what="notify to read signatures.v2 to its end")
    finally:
        await database.close()
        await ends.stop()


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
