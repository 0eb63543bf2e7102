"""What the invalidation tests share: schema 2 signatures with their sources, batches, the outbox."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from clameur.consumer import Batch, Consumed
from clameur.events import (
    Action,
    InvalidationFilter,
    InvalidationRequested,
    InvalidationRevoked,
    SignatureAccepted,
    SignatureSource,
)
from tests.tally.helpers import signature

LogEvent = SignatureAccepted | InvalidationRequested | InvalidationRevoked


def signed(
    case_id: str,
    email: str,
    *,
    country: str = "FR",
    action: Action = Action.SIGNATURE,
    widget: str | None = "w-home",
    page_url: str | None = "https://amnesty.example/nawal",
    partner: str | None = None,
    received_at: datetime | None = None,
) -> SignatureAccepted:
    """A schema 2 signature of ``email`` from a widget and page (:func:`tests.tally.helpers.signature`)."""
    return signature(
        case_id,
        email,
        country=country,
        action=action,
        received_at=received_at,
        source=SignatureSource(widget=widget, page_url=page_url, partner=partner),
    )


def bot_wave(case_id: str, count: int, domain: str = "bot-farm.example") -> list[SignatureAccepted]:
    """``count`` signatures from one domain, over three countries and two actions."""
    return [
        signed(
            case_id,
            f"bot{n}@{domain}",
            country=("FR", "MA", "BE")[n % 3],
            action=(Action.SIGNATURE, Action.LETTER)[n % 2],
            widget="w-bots",
        )
        for n in range(count)
    ]


def people(case_id: str, count: int, tag: str = "") -> list[SignatureAccepted]:
    return [signed(case_id, f"person{tag}{n}@example.org", country=("FR", "SN")[n % 2]) for n in range(count)]


def requested(
    case_id: str, invalidation_filter: InvalidationFilter, reason: str = "bot wave"
) -> InvalidationRequested:
    return InvalidationRequested(
        invalidation_id=uuid.uuid4(),
        case_id=case_id,
        reason=reason,
        filter=invalidation_filter,
        requested_by="admin",
    )


def revoked(event: InvalidationRequested) -> InvalidationRevoked:
    return InvalidationRevoked(
        invalidation_id=event.invalidation_id, case_id=event.case_id, revoked_by="admin"
    )


def batch(topic: str, events: Sequence[Any], first_offset: int = 0, partition: int = 0) -> Batch[Any]:
    """The events as one batch of one partition, from ``first_offset``."""
    consumed = [Consumed(event, partition, first_offset + n, 0) for n, event in enumerate(events)]
    return Batch(topic, consumed, {partition: first_offset + len(events)})


def expected_counts(signatures: Sequence[SignatureAccepted]) -> dict[tuple[str, str], int]:
    """The counters these (distinct) signatures make: what tally.counters must hold."""
    counts: dict[tuple[str, str], int] = {}
    for s in signatures:
        for key in (("total", ""), ("country", s.country), ("action", s.action.value)):
            counts[key] = counts.get(key, 0) + 1
    return counts


def nonzero(counts: dict[tuple[str, str], int]) -> dict[tuple[str, str], int]:
    return {key: count for key, count in counts.items() if count}


async def outbox_events(pool: asyncpg.Pool[Any], topic: str, case_id: str, kind: str) -> list[dict[str, Any]]:
    """The payloads of ``kind`` staged in tally's outbox for ``topic`` and the case, in order."""
    rows = await pool.fetch(
        "SELECT payload FROM tally.outbox WHERE topic = $1 AND payload->>'case_id' = $2 "
        "AND payload->>'type' = $3 ORDER BY id",
        topic,
        case_id,
        kind,
    )
    return [row["payload"] for row in rows]
