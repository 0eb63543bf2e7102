"""Helpers of the erasure, suppression and retention tests: notify's rows, written directly."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid4

import asyncpg
from notify.contacts import ContactCipher
from notify.erasure import Eraser
from notify.metrics import NotifyMetrics
from notify.supporters import supporter_key
from notify.suppressions import AddressHashes
from prometheus_client import CollectorRegistry

from clameur.events import Contact, utc_now
from clameur.kafka import create_producer
from clameur.topics import Topics, send_contact_record
from tests.conftest import TEST_ERASURE_BOUND_S, TEST_SECRET

if TYPE_CHECKING:
    Pool = asyncpg.Pool[Any]


def key_of(email: str) -> str:
    return supporter_key(TEST_SECRET, email)


async def seed_supporter(
    database: Pool,
    email: str,
    first_name: str,
    case_ids: Iterable[str],
    locale: str = "fr",
    *,
    confirmed: bool = True,
    signed_at: datetime | None = None,
) -> str:
    """A consenting supporter following ``case_ids``: their contact sealed in notify.contacts
    (with its address hash) and their subscriptions (confirmed, unless ``confirmed`` is
    False: then awaiting confirmation since ``signed_at``); returns the key."""
    key = key_of(email)
    cipher = ContactCipher(TEST_SECRET)
    await database.execute(
        "INSERT INTO notify.contacts"
        " (supporter_key, email_sealed, first_name_sealed, locale, recorded_at, address_hash)"
        " VALUES ($1, $2, $3, $4, now(), $5)",
        key,
        cipher.seal(key, "email", email),
        cipher.seal(key, "first_name", first_name),
        locale,
        AddressHashes(TEST_SECRET).of(email),
    )
    for case_id in case_ids:
        await database.execute(
            "INSERT INTO notify.subscriptions"
            " (case_id, supporter_key, signed_at, awaits_confirmation, confirmed_at)"
            " VALUES ($1, $2, COALESCE($3, now()), $4, CASE WHEN $4 THEN NULL ELSE now() END)",
            case_id,
            key,
            signed_at,
            not confirmed,
        )
    return key


async def seed_pending_delivery(database: Pool, case_id: str, key: str) -> UUID:
    """A milestone of ``case_id`` and one pending delivery of it to ``key``."""
    event_id = uuid4()
    await database.execute(
        "INSERT INTO notify.case_events (event_id, case_id, kind, occurred_at, event)"
        " VALUES ($1, $2, 'milestone', now(), $3::jsonb)",
        event_id,
        case_id,
        json.dumps({}),
    )
    await database.execute(
        "INSERT INTO notify.deliveries (event_id, supporter_key, kind) VALUES ($1, $2, 'milestone')",
        event_id,
        key,
    )
    return event_id


async def rows_of(database: Pool, key: str) -> dict[str, int]:
    """How many rows notify holds on the supporter, per table."""
    counts = {}
    for table in ("contacts", "subscriptions", "deliveries", "unsubscriptions"):
        counts[table] = int(
            await database.fetchval(f"SELECT count(*) FROM notify.{table} WHERE supporter_key = $1", key)
        )
    return counts


def contact(email: str, first_name: str, locale: str = "fr") -> Contact:
    return Contact(supporter_key=key_of(email), email=email, first_name=first_name, locale=locale)


@asynccontextmanager
async def running_eraser(
    kafka: str, database_url: str, topics: Topics, metrics: NotifyMetrics | None = None
) -> AsyncIterator[Eraser]:
    """An :class:`Eraser` on its own pool and producer, as notify's lifespan builds one."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=3)
    assert pool is not None
    producer = create_producer(kafka)
    await producer.start()
    try:
        yield Eraser(
            pool,
            producer,
            kafka,
            topics,
            TEST_SECRET,
            TEST_ERASURE_BOUND_S,
            metrics or NotifyMetrics(CollectorRegistry()),
        )
    finally:
        await producer.stop()
        await pool.close()


async def publish_contacts(kafka: str, topics: Topics, contacts: Iterable[Contact]) -> None:
    """Contacts on contacts.v1 as intake writes them (key: the supporter key)."""
    producer = create_producer(kafka)
    await producer.start()
    try:
        for written in contacts:
            await send_contact_record(
                producer, topics.contacts, written.supporter_key.encode(), written.to_json()
            )
    finally:
        await producer.stop()


def now_iso() -> str:
    return utc_now().isoformat()


async def tables_holding(database: Pool, needle: str) -> list[str]:
    """The tables of the notify schema with a row whose text holds ``needle`` (a pg_dump, table by table)."""
    tables = await database.fetch(
        "SELECT table_name FROM information_schema.tables"
        " WHERE table_schema = 'notify' AND table_type = 'BASE TABLE'"
    )
    holding = []
    for row in tables:
        found = await database.fetchval(
            f'SELECT EXISTS (SELECT 1 FROM notify."{row["table_name"]}" t WHERE t::text ILIKE $1)',
            f"%{needle}%",
        )
        if found:
            holding.append(row["table_name"])
    return holding
