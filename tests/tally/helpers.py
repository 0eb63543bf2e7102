"""What tally's tests share: signature events, producing them, reading the counts."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
from tally.counter_store import OFFSETS

from clameur.events import Action, SignatureAccepted, SignatureLogEvent, SignatureSource
from clameur.kafka import create_producer
from clameur.supporters import SupporterKeys
from tests.conftest import TEST_ADMIN_TOKEN, TEST_SECRET

ADMIN = {"Authorization": f"Bearer {TEST_ADMIN_TOKEN}"}

_KEYS = SupporterKeys.from_master(TEST_SECRET)


def supporter_key(email: str) -> str:
    """Intake's dedupe key of ``email``, computed by the same code as intake's."""
    return _KEYS.of_address(email)


def signature(
    case_id: str,
    email: str,
    *,
    country: str = "FR",
    action: Action = Action.SIGNATURE,
    received_at: datetime | None = None,
    awaits_confirmation: bool = False,
    source: SignatureSource | None = None,
) -> SignatureAccepted:
    """A schema 2 signature of ``email``: its supporter key and domain, never the address."""
    return SignatureAccepted(
        case_id=case_id,
        action=action,
        country=country,
        locale="fr",
        supporter_key=supporter_key(email),
        email_domain=email.rpartition("@")[2].strip().lower(),
        awaits_confirmation=awaits_confirmation,
        source=source or SignatureSource(),
        received_at=received_at or datetime.now(UTC),
    )


def many(
    case_id: str, count: int, *, countries: Sequence[str] = ("FR", "MA", "BE"), tag: str = ""
) -> list[SignatureAccepted]:
    """``count`` distinct supporters of ``case_id``, spread over ``countries``."""
    return [
        signature(case_id, f"supporter{tag}{n}@example.org", country=countries[n % len(countries)])
        for n in range(count)
    ]


async def produce(
    bootstrap: str, topic: str, events: Iterable[SignatureLogEvent | bytes], key: str = ""
) -> None:
    """Send events (or raw bytes: poison) keyed by case id, like intake; waits for every ack."""
    producer = create_producer(bootstrap, linger_ms=20)
    await producer.start()
    try:
        futures = []
        for event in events:
            if isinstance(event, bytes):
                futures.append(await producer.send(topic, event, key=(key or "poison").encode()))
            else:
                case_id = getattr(event, "case_id", "")  # SupporterErased goes to every partition
                if case_id:
                    futures.append(await producer.send(topic, event.to_json(), key=case_id.encode()))
                    continue
                for partition in sorted(await producer.partitions_for(topic)):
                    futures.append(await producer.send(topic, event.to_json(), partition=partition))
        for future in futures:
            await future
    finally:
        await producer.stop()


async def counters(database_url: str, case_id: str) -> dict[tuple[str, str], int]:
    """``{("total", ""): n, ("country", "FR"): n, ("action", "signature"): n}`` of a case."""
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(
            "SELECT dimension, key, count FROM tally.counters WHERE case_id = $1", case_id
        )
    finally:
        await connection.close()
    return {(row["dimension"], row["key"]): row["count"] for row in rows}


async def total(database_url: str, case_id: str) -> int:
    return (await counters(database_url, case_id)).get(("total", ""), 0)


async def stored_offsets(database_url: str, topic: str) -> int:
    """How many records of ``topic`` tally has applied: its stored next offsets, summed."""
    connection = await asyncpg.connect(database_url)
    try:
        return sum((await OFFSETS.read(connection, topic)).values())
    finally:
        await connection.close()


async def scrape(url: str) -> str:
    """The Prometheus text of a service running at ``url``."""
    async with httpx.AsyncClient(base_url=url, timeout=5.0) as client:
        return (await client.get("/metrics")).text


def case_body(case_id: str, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": case_id,
        "title": {"fr": "Nawal Benaissa : stop au harcèlement", "en": "Nawal Benaissa: stop the harassment"},
        "goal": 500_000,
        "milestones": [10_000, 50_000, 100_000, 250_000],
        "actions": ["signature", "letter"],
        "default_locale": "fr",
        "locales": ["fr", "en"],
        "target": "Ministère de l'Intérieur",
    }
    body.update(overrides)
    return body
