"""The one reminder, a permanent failure, tombstones, and contacts sealed at rest (real services)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from clameur.events import SignatureConfirmed
from clameur.kafka import create_producer
from clameur.topics import CONTACTS_TICK_KEY, Topics
from devstack.mailsink import SmtpSink
from tests.conftest import Infra
from tests.notify.conftest import CONTACTS, RunningNotify, email_of, produce, signature
from tests.notify.forgetting import publish_contacts
from tests.support import eventually, read_topic

REMINDER_S = 1.0


@pytest.fixture
def notify_env(notify_env: dict[str, str]) -> dict[str, str]:
    return {**notify_env, "CLAMEUR_CONFIRMATION_REMINDER_S": str(REMINDER_S)}


async def until_received(sink: SmtpSink, address: str, count: int, within: float = 30.0) -> None:
    """Wait for ``count`` emails to ``address`` (the session's database is shared: a notify
    with a 1 s reminder delay also reminds earlier tests' supporters, so count by address)."""

    async def arrived() -> bool:
        return len(sink.to(address)) >= count

    await eventually(arrived, within=within, what=f"{count} emails to {address}")


async def sign(infra: Infra, topics: Topics, case_id: str, name: str) -> str:
    signed = signature(case_id, name, locale="en", consent=True, awaits_confirmation=True)
    await produce(infra.kafka, topics.signatures, [signed], key=lambda e: case_id)
    await publish_contacts(infra.kafka, topics, [CONTACTS[signed.supporter_key]])
    return signed.supporter_key


async def test_one_reminder_after_the_delay_then_none(
    notify: RunningNotify, smtp_sink: SmtpSink, infra: Infra, topics: Topics, new_id: Callable[..., str]
) -> None:
    case_id = new_id("nawal")
    await sign(infra, topics, case_id, "amina")
    await until_received(smtp_sink, email_of("amina", case_id), 2)
    first, reminder = smtp_sink.to(email_of("amina", case_id))
    assert first.message["Subject"] == "Please confirm your signature"
    assert reminder.message["Subject"] == "Reminder: please confirm your signature"
    await asyncio.sleep(REMINDER_S * 4)  # several more reminder periods, and fan-out passes
    assert len(smtp_sink.to(email_of("amina", case_id))) == 2, "one reminder, then none"


async def test_a_permanent_failure_leaves_it_unconfirmed_with_no_retry_and_no_reminder(
    notify: RunningNotify, smtp_sink: SmtpSink, infra: Infra, topics: Topics, new_id: Callable[..., str]
) -> None:
    case_id = new_id("nawal")
    smtp_sink.refuse(email_of("amina", case_id), 550)
    key = await sign(infra, topics, case_id, "amina")

    async def failed() -> bool:
        state = await notify.database.fetchval(
            "SELECT state FROM notify.deliveries WHERE supporter_key = $1 AND kind = 'confirmation'", key
        )
        return bool(state == "failed")

    await eventually(failed, within=20, what="the 550 to be recorded")
    await asyncio.sleep(REMINDER_S * 4)
    assert smtp_sink.refusals[email_of("amina", case_id)] == 1, "tried once"
    assert (
        await notify.database.fetchval("SELECT count(*) FROM notify.deliveries WHERE supporter_key = $1", key)
        == 1
    ), "no reminder"
    assert (
        await notify.database.fetchval(
            "SELECT confirmed_at FROM notify.subscriptions WHERE supporter_key = $1", key
        )
        is None
    )


async def test_the_database_holds_no_email_or_first_name_in_clear_and_a_tombstone_erases(
    notify: RunningNotify, smtp_sink: SmtpSink, infra: Infra, topics: Topics, new_id: Callable[..., str]
) -> None:
    case_id = new_id("nawal")
    signed = signature(case_id, "amina", first_name="Zuleikha", awaits_confirmation=True)
    await produce(infra.kafka, topics.signatures, [signed], key=lambda e: case_id)
    await publish_contacts(infra.kafka, topics, [CONTACTS[signed.supporter_key]])
    await until_received(smtp_sink, email_of("amina", case_id), 1)  # the contact is stored (and opened)
    assert "Zuleikha" in str(smtp_sink.to(email_of("amina", case_id))[0].message["To"])

    tables = await notify.database.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'notify'"
    )
    dump = ""
    for table in tables:
        # Every row as text (bytea as hex): what a dump of the schema shows.
        rows = await notify.database.fetch(f'SELECT t::text AS row FROM notify."{table["table_name"]}" t')
        dump += "\n".join(row["row"] for row in rows)
    assert signed.supporter_key in dump, "the dump holds the supporter's rows"
    address = email_of("amina", case_id)
    for secret in (address, "Zuleikha", "zuleikha"):
        assert secret not in dump.lower() and secret.encode().hex() not in dump, secret

    producer = create_producer(infra.kafka)
    await producer.start()
    try:
        await producer.send_and_wait(topics.contacts, b"", key=CONTACTS_TICK_KEY)  # a tick: skipped
        await producer.send_and_wait(topics.contacts, None, key=signed.supporter_key.encode())
    finally:
        await producer.stop()

    async def erased() -> bool:
        left = await notify.database.fetchval(
            "SELECT count(*) FROM notify.contacts WHERE supporter_key = $1", signed.supporter_key
        )
        return bool(left == 0)

    await eventually(erased, within=15, what="the tombstone to erase the contact")
    assert await read_topic(infra.kafka, topics.dlq(topics.contacts)) == [], "the tick is no poison"


async def test_no_reminder_once_confirmed(
    notify: RunningNotify, smtp_sink: SmtpSink, infra: Infra, topics: Topics, new_id: Callable[..., str]
) -> None:
    case_id = new_id("nawal")
    key = await sign(infra, topics, case_id, "amina")
    await until_received(smtp_sink, email_of("amina", case_id), 1)
    confirmed = SignatureConfirmed(case_id=case_id, supporter_key=key)
    await produce(infra.kafka, topics.signatures, [confirmed], key=lambda e: case_id)

    async def applied() -> bool:
        at = await notify.database.fetchval(
            "SELECT confirmed_at FROM notify.subscriptions WHERE supporter_key = $1", key
        )
        return at is not None

    await eventually(applied, within=15, what="the confirmation to be read")
    await asyncio.sleep(REMINDER_S * 4)
    assert len(smtp_sink.to(email_of("amina", case_id))) == 1, "no reminder after confirming"
