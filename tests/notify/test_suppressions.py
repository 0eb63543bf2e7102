"""Suppressions: "It wasn't me" never mails the address again, and a rebuilt notify still knows it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg
import pytest
from asgi_lifespan import LifespanManager
from notify.app import create_app
from notify.erasure import reject_supporter
from notify.settings import NotifySettings
from notify.suppressions import (
    AddressHashes,
    address_hash,
    is_suppressed,
    record_suppression,
    suppressed_among,
)

from clameur.events import SupporterErased, Suppression, decode_signature_log_event, decode_suppression
from clameur.kafka import partitions_of
from clameur.topics import Topics
from tests.conftest import TEST_SECRET, Infra
from tests.notify.forgetting import key_of, rows_of, running_eraser, seed_supporter
from tests.support import eventually, read_topic, settings_from


def test_the_address_hash_sees_through_the_ways_of_typing_one_address() -> None:
    hashes = AddressHashes(TEST_SECRET)
    assert hashes.of(" Jane.Doe+petitions@GMAIL.com ") == hashes.of("janedoe@googlemail.com")
    assert hashes.of("jane@example.org") != hashes.of("jane2@example.org")
    # Its own key: the hash is not the supporter key, and says nothing of it.
    assert hashes.of("jane@example.org") != key_of("jane@example.org")
    assert address_hash(TEST_SECRET, "jane@example.org") == hashes.of("jane@example.org")
    with pytest.raises(ValueError, match="valid"):
        hashes.of("not an address")


async def test_it_wasnt_me_suppresses_the_address_everywhere_forgets_the_supporter_and_announces_it(
    pool: asyncpg.Pool[Any], infra: Infra, topics: Topics, new_id: Callable[..., str]
) -> None:
    case_id = new_id("nawal")
    email = f"Someone.{case_id}@example.org"
    key = await seed_supporter(pool, email, "Nawal", [case_id])
    hashed = address_hash(TEST_SECRET, email)
    assert not await is_suppressed(pool, hashed, case_id)  # not before

    async with running_eraser(infra.kafka, infra.database_url, topics) as eraser:
        done = await reject_supporter(eraser, key, case_id)
        again = await reject_supporter(eraser, key, case_id)  # a second click changes nothing more

    assert done.suppressed and done.erased.contact == 1
    assert not again.suppressed and again.erased.contact == 0  # the address is gone: nothing to hash
    for case in (case_id, new_id("other"), None):
        assert await is_suppressed(pool, hashed, case)
    assert not await is_suppressed(pool, address_hash(TEST_SECRET, f"else.{case_id}@example.org"), None)
    assert await rows_of(pool, key) == dict.fromkeys(
        ("contacts", "subscriptions", "deliveries", "unsubscriptions"), 0
    )
    published = await read_topic(infra.kafka, topics.suppressions, at_least=1)
    assert [(r.key, decode_suppression(r.value).reason) for r in published] == [
        (f"{hashed}:*".encode(), "rejected")
    ]
    assert email.encode() not in published[0].value and email.lower().encode() not in published[0].value
    contacts = [
        r for r in await read_topic(infra.kafka, topics.contacts, at_least=2) if r.key == key.encode()
    ]
    contact_partitions = await partitions_of(infra.kafka, topics.contacts)
    assert [r.value for r in contacts] == [None] * 2 * len(contact_partitions)  # both calls, every partition
    erased = await read_topic(infra.kafka, topics.signatures, at_least=6)
    assert all(isinstance(decode_signature_log_event(r.value), SupporterErased) for r in erased)
    assert len(erased) == 6  # both calls, every one of the 3 partitions


async def test_a_rebuilt_notify_knows_the_suppressions_from_the_topic_alone(
    infra: Infra, topics: Topics, spare_postgres: Any, service_env: dict[str, str], new_id: Callable[..., str]
) -> None:
    case_id = new_id("atena")
    emails = [f"rejecter.{case_id}@example.org", f"unsub.{case_id}@example.org"]
    first = await asyncpg.create_pool(infra.database_url, min_size=1, max_size=2)
    assert first is not None
    try:
        keys = [await seed_supporter(first, email, "X", [case_id, new_id()]) for email in emails]
        async with running_eraser(infra.kafka, infra.database_url, topics) as eraser:
            await reject_supporter(eraser, keys[0], case_id)
            assert await eraser.unsubscribe(keys[1], case_id) is None  # kept: follows another case
    finally:
        await first.close()
    hashes = [address_hash(TEST_SECRET, email) for email in emails]

    # A new, empty database (the first one is out of the picture), notify started on it:
    # its suppressions consumer replays suppressions.v1 from offset 0.
    rebuilt = await asyncpg.create_pool(spare_postgres.dsn, min_size=1, max_size=2)
    assert rebuilt is not None
    try:
        assert await rebuilt.fetchval("SELECT count(*) FROM notify.suppressions") == 0
        settings = settings_from(NotifySettings, {**service_env, "CLAMEUR_DATABASE_URL": spare_postgres.dsn})
        async with LifespanManager(create_app(settings), startup_timeout=60, shutdown_timeout=60):

            async def replayed() -> bool:
                return bool(await rebuilt.fetchval("SELECT count(*) FROM notify.suppressions") == 2)

            await eventually(replayed, within=30, what="the suppressions replayed")
        assert await is_suppressed(rebuilt, hashes[0], None)
        assert await is_suppressed(rebuilt, hashes[1], case_id)
        assert not await is_suppressed(rebuilt, hashes[1], new_id("another"))
    finally:
        await rebuilt.close()


async def test_a_batch_check_finds_exactly_the_suppressed_pairs(
    pool: asyncpg.Pool[Any], new_id: Callable[..., str]
) -> None:
    case_id, other = new_id("nawal"), new_id("atena")
    everywhere, one_case, free = (address_hash(TEST_SECRET, f"{n}.{case_id}@example.org") for n in "abc")
    await record_suppression(pool, Suppression(address_hash=everywhere, reason="rejected"))
    await record_suppression(pool, Suppression(address_hash=one_case, case_id=case_id, reason="unsubscribed"))
    wanted = [(h, c) for h in (everywhere, one_case, free) for c in (case_id, other)]
    assert await suppressed_among(pool, wanted) == {
        (everywhere, case_id),
        (everywhere, other),
        (one_case, case_id),
    }
    assert await suppressed_among(pool, []) == set()
    for address, case in wanted:
        assert await is_suppressed(pool, address, case) == (
            (address, case) in await suppressed_among(pool, wanted)
        )
