"""The fan-out against real Postgres while signatures keep coming: it waits for a mark, not the end."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any
from uuid import uuid4

import asyncpg
import pytest
from notify.contacts import ContactCipher
from notify.ledger import DeliveryLedger
from notify.progress import Marks
from notify.sending import FanOut

from clameur.events import MilestoneReached, utc_now
from tests.conftest import TEST_SECRET


class Surge:
    """A supporter list reading one partition while signatures arrive twice as fast as it reads."""

    def __init__(self) -> None:
        self.stored = 1_000
        self.end = 1_010

    def tick(self) -> None:
        self.stored += 5
        self.end += 10

    async def ends_now(self) -> Marks:
        return ({0: self.end},)

    async def reached(self, marks: Marks) -> bool:
        return all(self.stored >= offset for mark in marks for offset in mark.values())


@pytest.fixture
async def cancelled_after(pool: asyncpg.Pool[Any]) -> AsyncIterator[None]:
    """Deliveries this test's fan-out wrote are cancelled at its end: no later test sends them."""
    started = utc_now()
    yield
    await pool.execute(
        "UPDATE notify.deliveries SET state = 'cancelled' WHERE state = 'pending' AND event_id IN"
        " (SELECT event_id FROM notify.case_events WHERE fanned_out_at >= $1)",
        started,
    )


@pytest.mark.usefixtures("cancelled_after")
async def test_a_milestone_fans_out_during_a_surge_of_signatures(
    pool: asyncpg.Pool[Any], new_id: Callable[..., str]
) -> None:
    case_id, amina = new_id("nawal"), new_id("amina")
    now = utc_now()
    await pool.execute(
        "INSERT INTO notify.subscriptions"
        " (case_id, supporter_key, signed_at, wants_updates, awaits_confirmation, confirmed_at)"
        " VALUES ($1, $2, $3, true, true, $3)",
        case_id,
        amina,
        now - timedelta(minutes=1),
    )
    event = MilestoneReached(
        event_id=uuid4(),
        case_id=case_id,
        threshold=10,
        total=10,
        case_title={"en": "Free Nawal"},
        default_locale="en",
    )
    await pool.execute(
        "INSERT INTO notify.case_events (event_id, case_id, kind, occurred_at, event)"
        " VALUES ($1, $2, 'milestone', $3, $4)",
        event.event_id,
        case_id,
        now,
        event.model_dump(mode="json"),
    )
    surge = Surge()
    fan_out = FanOut(
        DeliveryLedger(pool, ContactCipher(TEST_SECRET).open), surge, grace_s=0, idle_poll_s=0.01
    )
    looks = 0
    while not await pool.fetchval(
        "SELECT fanned_out_at FROM notify.case_events WHERE event_id = $1", event.event_id
    ):
        assert looks < 20, "the milestone waited for the surge to end"
        await fan_out.fan_out_ready()
        surge.tick()
        looks += 1
    # The fault: the supporter list never reached where the topic ended at any look.
    assert surge.stored < surge.end - 10
    assert (
        await pool.fetchval("SELECT supporter_key FROM notify.deliveries WHERE event_id = $1", event.event_id)
        == amina
    )
