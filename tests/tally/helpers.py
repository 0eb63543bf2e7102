"""What tally's tests share: signature events, producing them, reading the counts."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg

from clameur.events import Action, SignatureAccepted
from clameur.kafka import create_producer
from tests.conftest import TEST_ADMIN_TOKEN, TEST_SECRET

ADMIN = {"Authorization": f"Bearer {TEST_ADMIN_TOKEN}"}


def supporter_key(email: str) -> str:
    """Intake's dedupe key: HMAC-SHA256 of the normalised email (trimmed, lower case)."""
    normalised = email.strip().lower()
    return hmac.new(TEST_SECRET.encode(), normalised.encode(), hashlib.sha256).hexdigest()


def signature(
    case_id: str,
    email: str,
    *,
    country: str = "FR",
    action: Action = Action.SIGNATURE,
    received_at: datetime | None = None,
) -> SignatureAccepted:
    return SignatureAccepted(
        case_id=case_id,
        action=action,
        first_name="Ada",
        last_name="Lovelace",
        country=country,
        locale="fr",
        supporter_key=supporter_key(email),
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
    bootstrap: str, topic: str, events: Iterable[SignatureAccepted | bytes], key: str = ""
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
                futures.append(await producer.send(topic, event.to_json(), key=event.case_id.encode()))
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
