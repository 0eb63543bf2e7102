"""The ledger's confirmation rows against real Postgres: written once, answered ones flagged at claim."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg
from notify.contacts import ContactCipher
from notify.ledger import DeliveryLedger, request_confirmations

from clameur.events import utc_now
from tests.conftest import TEST_SECRET


async def test_a_confirmation_is_written_once_and_flagged_answered_once_confirmed(
    pool: asyncpg.Pool[Any], new_id: Callable[..., str]
) -> None:
    cipher = ContactCipher(TEST_SECRET)
    case_id, key = new_id("nawal"), new_id("key")
    await pool.execute(
        "INSERT INTO notify.subscriptions"
        " (case_id, supporter_key, signed_at, wants_updates, awaits_confirmation)"
        " VALUES ($1, $2, now(), false, true)",
        case_id,
        key,
    )
    async with pool.acquire() as connection:
        await request_confirmations(connection, [key])  # no contact yet: nothing
        assert (
            await connection.fetchval("SELECT count(*) FROM notify.deliveries WHERE supporter_key = $1", key)
            == 0
        )
        await connection.execute(
            "INSERT INTO notify.contacts VALUES ($1, $2, $3, 'fr', $4)",
            key,
            cipher.seal(key, "email", "amina@example.org"),
            cipher.seal(key, "first_name", "Amina"),
            utc_now(),
        )
        await request_confirmations(connection, [key])
        await request_confirmations(connection, [key])  # again (the other consumer): nothing more
        rows = await connection.fetch(
            "SELECT id, kind, priority FROM notify.deliveries WHERE supporter_key = $1", key
        )
    assert [(row["kind"], row["priority"]) for row in rows] == [("confirmation", 0)]

    await pool.execute("UPDATE notify.subscriptions SET confirmed_at = now() WHERE supporter_key = $1", key)
    ledger = DeliveryLedger(pool, cipher.open)
    # A lease of a moment: rows of earlier tests this claim takes are due again at once.
    claimed = [d for d in await ledger.claim(1000, 0.01) if d.id == rows[0]["id"]]
    assert len(claimed) == 1
    [delivery] = claimed
    assert delivery.answered and delivery.case_id == case_id
    assert delivery.recipient is not None and delivery.recipient.email == "amina@example.org"
