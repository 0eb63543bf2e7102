"""A suppressed address gets no mail at send time, on the live notify and on a rebuilt one."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import asyncpg
from asgi_lifespan import LifespanManager
from notify.app import create_app
from notify.erasure import reject_supporter
from notify.settings import NotifySettings

from clameur.events import MilestoneReached, SignatureAccepted, utc_now
from clameur.topics import Topics
from devstack.mailsink import SmtpSink
from tests.conftest import Infra
from tests.notify.conftest import (
    CONTACTS,
    RunningNotify,
    email_of,
    milestone,
    publish_case_events,
    publish_signatures,
    signature,
)
from tests.notify.forgetting import running_eraser
from tests.support import eventually, settings_from

SETTLE_S = 1.5


async def mail_to(sink: SmtpSink, address: str, count: int, within: float = 30.0) -> None:
    async def arrived() -> bool:
        return len(sink.to(address)) >= count

    await eventually(arrived, within=within, what=f"{count} emails to {address}")


async def confirmed_with_contact(database: asyncpg.Pool[Any], key: str, case_id: str) -> None:
    """Wait until notify would mail ``key`` news of ``case_id``: contact stored, subscription confirmed."""

    async def ready() -> bool:
        return bool(
            await database.fetchval(
                "SELECT EXISTS (SELECT 1 FROM notify.contacts WHERE supporter_key = $1"
                " AND address_hash IS NOT NULL) AND EXISTS (SELECT 1 FROM notify.subscriptions"
                " WHERE supporter_key = $1 AND case_id = $2 AND confirmed_at IS NOT NULL)",
                key,
                case_id,
            )
        )

    await eventually(ready, within=30, what="the supporter's contact and confirmed subscription stored")


async def rejected_then_signs_again(
    notify: RunningNotify, infra: Infra, topics: Topics, first: str, second: str
) -> tuple[SignatureAccepted, SignatureAccepted]:
    """Amina signs ``first``, answers "It wasn't me", then her address signs ``second`` (fresh
    contact, confirmed) next to Ben: without the send-time check, she would get its news."""
    amina = signature(first, "amina")
    await publish_signatures(infra, topics, [amina])
    await confirmed_with_contact(notify.database, amina.supporter_key, first)
    async with running_eraser(infra.kafka, infra.database_url, topics) as eraser:
        done = await reject_supporter(eraser, amina.supporter_key, first)
    assert done.suppressed
    again = amina.model_copy(update={"case_id": second, "received_at": utc_now()})
    CONTACTS[amina.supporter_key] = CONTACTS[amina.supporter_key].model_copy(
        update={"recorded_at": utc_now()}
    )
    ben = signature(second, "ben")
    await publish_signatures(infra, topics, [again, ben])
    # The fault is in place: her contact is back and her subscription of ``second`` confirmed.
    await confirmed_with_contact(notify.database, amina.supporter_key, second)
    return amina, ben


async def test_a_rejected_address_gets_no_mail_live_nor_from_a_rebuilt_notify(
    notify: RunningNotify,
    smtp_sink: SmtpSink,
    infra: Infra,
    topics: Topics,
    notify_env: dict[str, str],
    spare_postgres: Any,
    new_id: Callable[..., str],
) -> None:
    first, second = new_id("nawal"), new_id("atena")
    amina, _ben = await rejected_then_signs_again(notify, infra, topics, first, second)
    amina_address, ben_address = email_of("amina", first), email_of("ben", second)
    event: MilestoneReached = milestone(second)
    await publish_case_events(infra, topics, [event])

    await mail_to(smtp_sink, ben_address, 1)
    await asyncio.sleep(SETTLE_S)
    assert smtp_sink.to(amina_address) == []
    rows = {row["supporter_key"]: row for row in await notify.deliveries(event.event_id)}
    assert rows[amina.supporter_key]["state"] == "cancelled"
    assert rows[amina.supporter_key]["last_error"] == "suppressed"

    # A rebuild: a fresh database, groups of its own, every topic replayed from offset 0.
    env = {
        **notify_env,
        "CLAMEUR_DATABASE_URL": spare_postgres.dsn,
        "CLAMEUR_NOTIFY_GROUP_PREFIX": f"{new_id('rebuilt')}-",
    }
    rebuilt = await asyncpg.create_pool(spare_postgres.dsn, min_size=1, max_size=2)
    assert rebuilt is not None
    try:
        async with LifespanManager(create_app(settings_from(NotifySettings, env)), startup_timeout=60):
            # It replays and sends: Ben hears of the milestone again (what proves it ran).
            await mail_to(smtp_sink, ben_address, 2, within=60)
            await asyncio.sleep(SETTLE_S)
        assert smtp_sink.to(amina_address) == []
        assert await rebuilt.fetchval("SELECT count(*) FROM notify.suppressions") == 1
    finally:
        await rebuilt.close()
