"""Unsubscribing from everything keeps only a suppression: neither the address nor the first name."""

from __future__ import annotations

from collections.abc import Callable

from notify.suppressions import address_hash, is_suppressed
from notify.tokens import TokenSigner, UnsubscribeRequest

from clameur.events import decode_suppression
from clameur.kafka import partitions_of
from clameur.topics import CONTACTS_TICK_KEY, Topics
from tests.conftest import TEST_SECRET, Infra
from tests.notify.conftest import RunningNotify, scrape
from tests.notify.forgetting import rows_of, seed_pending_delivery, seed_supporter, tables_holding
from tests.support import metric, read_topic


def unsubscribe_path(key: str, case_id: str | None) -> str:
    return f"/v1/unsubscribe/{TokenSigner(TEST_SECRET).sign(UnsubscribeRequest(key, case_id, 'fr'))}"


async def test_unsubscribing_from_everything_leaves_only_the_suppression(
    notify: RunningNotify, infra: Infra, topics: Topics, new_id: Callable[..., str]
) -> None:
    case_id = new_id("nawal")
    email, name = f"amina.{case_id}@example.org", f"Amina{case_id.replace('-', '')}"
    key = await seed_supporter(notify.database, email, name, [case_id, new_id()])
    await seed_pending_delivery(notify.database, case_id, key)
    # Before: notify holds both, sealed in notify.contacts (a dump shows neither in clear).
    assert (await rows_of(notify.database, key))["contacts"] == 1
    assert await tables_holding(notify.database, email) == []

    answer = await notify.client.post(unsubscribe_path(key, None))
    assert answer.status_code == 200, answer.text

    assert await tables_holding(notify.database, email) == []
    assert await tables_holding(notify.database, name) == []
    assert await rows_of(notify.database, key) == dict.fromkeys(
        ("contacts", "subscriptions", "deliveries", "unsubscriptions"), 0
    )
    hashed = address_hash(TEST_SECRET, email)
    assert await is_suppressed(notify.database, hashed, None)
    published = await read_topic(infra.kafka, topics.suppressions, at_least=1)
    assert [(r.key, decode_suppression(r.value).reason) for r in published] == [
        (f"{hashed}:*".encode(), "unsubscribed")
    ]
    contacts = [
        r for r in await read_topic(infra.kafka, topics.contacts, at_least=1) if r.key != CONTACTS_TICK_KEY
    ]
    contact_partitions = await partitions_of(infra.kafka, topics.contacts)
    assert [(r.key, r.value) for r in contacts] == [(key.encode(), None)] * len(contact_partitions)
    # An unsubscription is not an erasure: the signatures keep their key (no SupporterErased).
    assert await read_topic(infra.kafka, topics.signatures) == []
    assert metric(await scrape(notify.client), "clameur_notify_unsubscribes_total", scope="all") == 1

    again = await notify.client.post(unsubscribe_path(key, None))  # one-click, twice: same page
    assert again.status_code == 200
    assert metric(await scrape(notify.client), "clameur_notify_unsubscribes_total", scope="all") == 1


async def test_unsubscribing_from_one_case_keeps_the_contact_while_another_case_is_followed(
    notify: RunningNotify, infra: Infra, topics: Topics, new_id: Callable[..., str]
) -> None:
    first, second = new_id("nawal"), new_id("atena")
    email = f"ben.{first}@example.org"
    key = await seed_supporter(notify.database, email, "Ben", [first, second])
    hashed = address_hash(TEST_SECRET, email)

    assert (await notify.client.post(unsubscribe_path(key, first))).status_code == 200
    assert await is_suppressed(notify.database, hashed, first)
    assert not await is_suppressed(notify.database, hashed, second)
    assert (await rows_of(notify.database, key))["contacts"] == 1  # still hears about the other case
    written = await read_topic(infra.kafka, topics.contacts)
    assert {r.key for r in written} <= {CONTACTS_TICK_KEY}  # no tombstone

    # The last case followed: nothing left to write about, so the contact goes too.
    assert (await notify.client.post(unsubscribe_path(key, second))).status_code == 200
    assert await is_suppressed(notify.database, hashed, second)
    assert await tables_holding(notify.database, email) == []
    tombstones = [
        r for r in await read_topic(infra.kafka, topics.contacts, at_least=1) if r.key == key.encode()
    ]
    assert [r.value for r in tombstones] == [None] * len(await partitions_of(infra.kafka, topics.contacts))
