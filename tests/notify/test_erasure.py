"""POST /v1/admin/supporters/erase: the topics say "forgotten", the rows go, the answer is honest."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from notify.contacts import ContactCipher
from notify.erasure import Eraser, ErasureDesk, erasure_router
from notify.ledger import _SUPPORTER_LIST_LOCK
from notify.metrics import NotifyMetrics
from prometheus_client import CollectorRegistry

from clameur.admin import AdminDoor
from clameur.events import SupporterErased, decode_signature_log_event, utc_now
from clameur.kafka import create_producer, partitions_of
from clameur.topics import CONTACTS_TICK_KEY, Topics
from clameur.web import install_problem_handlers
from tests.conftest import TEST_ADMIN_TOKEN, TEST_ERASURE_BOUND_S, TEST_SECRET, Infra
from tests.notify.conftest import RunningNotify, scrape
from tests.notify.forgetting import key_of, rows_of, running_eraser, seed_pending_delivery, seed_supporter
from tests.support import eventually, metric, read_topic


def admin(notify: RunningNotify) -> dict[str, str]:
    return {"authorization": f"Bearer {notify.settings.admin_token.get_secret_value()}"}


async def test_erasure_tombstones_the_contact_announces_to_every_partition_deletes_the_rows_and_says_so(
    notify: RunningNotify, infra: Infra, topics: Topics, new_id: Callable[..., str]
) -> None:
    first, second = new_id("atena"), new_id("nawal")
    email = f"Atena.{first}@example.org"
    key = await seed_supporter(notify.database, email, "Atena", [first, second])
    await seed_pending_delivery(notify.database, first, key)
    # The fault to undo is there: notify holds her address, two cases and a pending email.
    assert await rows_of(notify.database, key) == {
        "contacts": 1,
        "subscriptions": 2,
        "deliveries": 1,
        "unsubscriptions": 0,
    }

    asked_at = utc_now()
    answer = await notify.client.post(
        "/v1/admin/supporters/erase", json={"email": f"  {email.upper()} "}, headers=admin(notify)
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["status"] == "erased"
    assert body["erased"] == {"contact": 1, "subscriptions": 2, "pending_deliveries": 1}
    assert body["remains"]["suppression"] is False  # she may sign again, with fresh consent
    assert "unlinkable marker" in body["remains"]["signatures"]
    completes_at = datetime.fromisoformat(body["completes_at"])
    bound = timedelta(seconds=TEST_ERASURE_BOUND_S)
    assert asked_at + bound <= completes_at <= utc_now() + bound

    assert await rows_of(notify.database, key) == dict.fromkeys(
        ("contacts", "subscriptions", "deliveries", "unsubscriptions"), 0
    )
    contacts = [
        r for r in await read_topic(infra.kafka, topics.contacts, at_least=1) if r.key == key.encode()
    ]
    # A tombstone on every partition, so on the one intake writes the contact to
    # (compaction supersedes within a partition) and on any an older placement used.
    contact_partitions = sorted(await partitions_of(infra.kafka, topics.contacts))
    assert len(contact_partitions) > 1
    assert [r.value for r in contacts] == [None] * len(contact_partitions)
    assert sorted(r.partition for r in contacts) == contact_partitions
    partitions = await partitions_of(infra.kafka, topics.signatures)
    assert len(partitions) == 3
    announced = await read_topic(infra.kafka, topics.signatures, at_least=len(partitions))
    events = [(r.partition, decode_signature_log_event(r.value)) for r in announced]
    assert sorted(p for p, _ in events) == partitions  # every partition, once
    assert all(isinstance(e, SupporterErased) and e.supporter_key == key for _, e in events)
    assert len({e.erasure_id for _, e in events if isinstance(e, SupporterErased)}) == 1
    assert metric(await scrape(notify.client), "clameur_notify_erasures_total", reason="erased") == 1


async def test_an_erasure_is_audited_by_its_erasure_id_never_by_the_email(
    notify: RunningNotify, new_id: Callable[..., str], caplog: pytest.LogCaptureFixture
) -> None:
    email = f"dina.{new_id('dina')}@example.org"
    key = await seed_supporter(notify.database, email, "Dina", [new_id()])
    with caplog.at_level(logging.INFO):
        stranger = await notify.client.post(
            "/v1/admin/supporters/erase", json={"email": email}, headers={"authorization": "Bearer wrong"}
        )
        answer = await notify.client.post(
            "/v1/admin/supporters/erase", json={"email": email}, headers=admin(notify)
        )
    assert (stranger.status_code, answer.status_code) == (401, 200)
    (line,) = [record for record in caplog.records if record.getMessage() == "admin action"]
    assert (line.__dict__["action"], line.__dict__["target"]) == (
        "supporter_erased",
        answer.json()["erasure_id"],
    )
    assert line.__dict__["token_name"] == "admin" and line.__dict__["at"]
    for record in caplog.records:
        described = f"{record.getMessage()} {record.__dict__}".lower()
        assert email.lower() not in described and key not in described, record
    scraped = await scrape(notify.client)
    assert metric(scraped, "clameur_admin_actions_total", service="notify", action="supporter_erased") == 1
    assert metric(scraped, "clameur_admin_auth_failures_total", service="notify") == 1


async def test_erasure_twice_answers_the_second_time_with_nothing_left_to_erase(
    notify: RunningNotify, infra: Infra, topics: Topics, new_id: Callable[..., str]
) -> None:
    email = f"ben.{new_id('ben')}@example.org"
    await seed_supporter(notify.database, email, "Ben", [new_id()])
    first = await notify.client.post(
        "/v1/admin/supporters/erase", json={"email": email}, headers=admin(notify)
    )
    again = await notify.client.post(
        "/v1/admin/supporters/erase", json={"email": email}, headers=admin(notify)
    )
    assert first.status_code == again.status_code == 200
    assert first.json()["erased"]["contact"] == 1
    assert again.json()["erased"] == {"contact": 0, "subscriptions": 0, "pending_deliveries": 0}
    assert first.json()["erasure_id"] != again.json()["erasure_id"]


async def test_erasure_refuses_strangers_and_bad_addresses_with_a_problem_and_changes_nothing(
    notify: RunningNotify, infra: Infra, topics: Topics, new_id: Callable[..., str]
) -> None:
    email = f"chirine.{new_id('c')}@example.org"
    key = await seed_supporter(notify.database, email, "Chirine", [new_id()])
    stranger = await notify.client.post(
        "/v1/admin/supporters/erase", json={"email": email}, headers={"authorization": "Bearer wrong"}
    )
    assert stranger.status_code == 401
    assert stranger.headers["content-type"] == "application/problem+json"
    for body in ({"email": "not an address"}, {"email": email, "extra": 1}, {}):
        refused = await notify.client.post("/v1/admin/supporters/erase", json=body, headers=admin(notify))
        assert refused.status_code == 422, body
        assert refused.headers["content-type"] == "application/problem+json"
    assert (await rows_of(notify.database, key))["contacts"] == 1
    written = await read_topic(infra.kafka, topics.contacts)
    assert written, "notify's contacts ticks run"
    assert {r.key for r in written} == {CONTACTS_TICK_KEY}  # ticks only: no tombstone


async def test_an_erasure_waits_for_a_batch_being_folded_and_then_deletes_what_it_wrote(
    notify: RunningNotify, infra: Infra, topics: Topics, new_id: Callable[..., str]
) -> None:
    """Without the lock, the erasure's DELETE would not see the fold's uncommitted rows: re-created."""
    case_id = new_id("nawal")
    email = f"dina.{case_id}@example.org"
    key = key_of(email)
    async with running_eraser(infra.kafka, infra.database_url, topics) as eraser:
        async with notify.database.acquire() as fold:
            transaction = fold.transaction()
            await transaction.start()
            # A batch being folded: the shared lock, then the supporter's rows, not yet committed.
            await fold.execute(_SUPPORTER_LIST_LOCK.format(mode="_shared"))
            cipher = ContactCipher(TEST_SECRET)
            await fold.execute(
                "INSERT INTO notify.contacts"
                " (supporter_key, email_sealed, first_name_sealed, locale, recorded_at)"
                " VALUES ($1, $2, $3, 'fr', now())",
                key,
                cipher.seal(key, "email", email),
                cipher.seal(key, "first_name", "Dina"),
            )
            erasing = asyncio.create_task(eraser.forget(key, "erased"))

            async def blocked() -> bool:
                waiting = await notify.database.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                )
                return bool(waiting)

            await eventually(blocked, within=15, what="the erasure waiting for the fold's lock")
            assert not erasing.done()
            await transaction.commit()
        done = await erasing
    assert done.erased.contact == 1
    assert (await rows_of(notify.database, key))["contacts"] == 0


async def test_an_erasure_kafka_does_not_acknowledge_answers_503_and_deletes_nothing(
    infra: Infra, new_id: Callable[..., str]
) -> None:
    """Publishing comes first: when it fails, the rows stay and the caller may try again."""
    unprovisioned = Topics(
        prefix=f"{new_id('never')}."
    )  # no such topics: the broker cannot take the tombstone
    pool = await asyncpg.create_pool(infra.database_url, min_size=1, max_size=2)
    assert pool is not None
    producer = create_producer(infra.kafka, request_timeout_ms=1500)
    await producer.start()
    try:
        email = f"eva.{new_id('eva')}@example.org"
        key = await seed_supporter(pool, email, "Eva", [new_id()])
        eraser = Eraser(
            pool,
            producer,
            infra.kafka,
            unprovisioned,
            TEST_SECRET,
            TEST_ERASURE_BOUND_S,
            NotifyMetrics(CollectorRegistry()),
        )
        app = FastAPI()
        install_problem_handlers(app)
        app.include_router(
            erasure_router(
                ErasureDesk(
                    TEST_SECRET,
                    AdminDoor(CollectorRegistry(), "notify", TEST_ADMIN_TOKEN, ()),
                    lambda: eraser,
                )
            )
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://clameur.example.org") as client:
            answer = await client.post(
                "/v1/admin/supporters/erase",
                json={"email": email},
                headers={"authorization": f"Bearer {TEST_ADMIN_TOKEN}"},
            )
        assert answer.status_code == 503, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        assert "Try again" in answer.json()["detail"]
        assert (await rows_of(pool, key))["contacts"] == 1  # nothing deleted
    finally:
        await producer.stop()
        await pool.close()
