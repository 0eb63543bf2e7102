"""The raw readers the erasure tests rely on find what is there and only that."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest

from clameur.kafka import create_producer
from clameur.topics import Topics
from devstack.databases import create_database, drop_database
from tests.privacy import broker_data_dir, pg_dump_contains, topic_data_contains
from tests.support import eventually


async def test_a_value_written_to_a_topic_is_found_on_disk_and_one_never_written_is_not(
    infra: Any, topics: Topics
) -> None:
    data_dir = broker_data_dir(infra)
    written = f"nawal.benaissa.{uuid.uuid4().hex}@example.org".encode()
    in_dlq = f"dlq-{uuid.uuid4().hex}".encode()
    never = f"never-{uuid.uuid4().hex}".encode()
    producer = create_producer(infra.kafka)
    await producer.start()
    try:
        await producer.send_and_wait(topics.contacts, value=b'{"email":"' + written + b'"}', key=b"k")
        await producer.send_and_wait(topics.dlq(topics.signatures), value=in_dlq)
    finally:
        await producer.stop()

    async def on_disk() -> bool:
        return len(topic_data_contains(data_dir, topics.prefix, [written, in_dlq])) == 2

    # Acknowledged means in the broker's page cache: readable from the file at once.
    await eventually(on_disk, within=10, what="both values in the segment files")
    found = topic_data_contains(data_dir, topics.prefix, [written, in_dlq, never])
    assert sorted(found.values()) == sorted([written, in_dlq])
    assert any(f"{topics.contacts}-" in path for path in found)
    assert any(f"{topics.dlq(topics.signatures)}-" in path for path in found)
    assert topic_data_contains(data_dir, topics.prefix, [never]) == {}
    # Another prefix's topics are not this test's: nothing of them is read.
    assert topic_data_contains(data_dir, f"other{uuid.uuid4().hex[:6]}.", [written]) == {}


def test_a_scan_needs_a_prefix(infra: Any) -> None:
    with pytest.raises(ValueError, match="prefix"):
        topic_data_contains(broker_data_dir(infra), "", [b"x"])


async def test_pg_dump_finds_a_stored_value_text_or_bytea_and_not_one_never_stored(infra: Any) -> None:
    name = f"clameur_privacy_{uuid.uuid4().hex[:8]}"
    dsn = await create_database(infra.server_dsn, name)
    try:
        as_text = f"atena.daemi.{uuid.uuid4().hex}@example.org".encode()
        as_bytea = f"Atena-{uuid.uuid4().hex}".encode()
        never = f"never-{uuid.uuid4().hex}".encode()
        connection = await asyncpg.connect(dsn)
        try:
            await connection.execute("CREATE SCHEMA notify")
            await connection.execute("CREATE TABLE notify.probe (email text, first_name bytea)")
            await connection.execute("INSERT INTO notify.probe VALUES ($1, $2)", as_text.decode(), as_bytea)
        finally:
            await connection.close()
        found = pg_dump_contains(infra.server_dsn, name, [as_text, as_bytea, never])
        assert set(found) == {as_text, as_bytea}
        assert as_bytea.hex() in found[as_bytea]  # bytea is dumped as hex: found in that form
        assert pg_dump_contains(infra.server_dsn, name, [never]) == {}
    finally:
        await drop_database(infra.server_dsn, name)
