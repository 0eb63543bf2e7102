"""contacts.v1's settings keep the erasure bound on the broker's disk, given the ticks.

What docs/privacy.md and ADR 0004 rest on, tried on the test broker's segment files
(erasure bound 5 s, cleaner backoff 1 s): a tombstoned contact in a quiet partition stays
on disk past the bound (the active segment is never compacted and rolls only on an
append), and goes within a few bounds once ticks are appended.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from clameur.kafka import create_producer
from clameur.topics import CONTACTS_TICK_KEY, Topics, ensure_topics
from tests.conftest import TEST_ERASURE_BOUND_S
from tests.privacy import broker_data_dir, topic_data_contains


async def test_a_tombstoned_contact_leaves_the_disk_once_ticks_roll_the_segment(
    infra: Any, topics: Topics
) -> None:
    data_dir = broker_data_dir(infra)
    email = f"atena.daemi.{uuid.uuid4().hex[:8]}@example.org".encode()
    partition_prefix = f"{topics.contacts}-"
    producer = create_producer(infra.kafka)
    await producer.start()
    try:
        contact = b'{"supporter_key":"k1","email":"' + email + b'","first_name":"Atena","locale":"fa"}'
        await producer.send_and_wait(topics.contacts, value=contact, key=b"k1", partition=0)
        assert topic_data_contains(data_dir, partition_prefix, [email])  # the data is there
        await producer.send_and_wait(topics.contacts, value=None, key=b"k1", partition=0)

        # A quiet partition: twice the bound later, the contact is still on disk.
        await asyncio.sleep(2 * TEST_ERASURE_BOUND_S)
        assert topic_data_contains(data_dir, partition_prefix, [email]), "gone without a roll?"

        # Ticks (as notify's erasure job appends them) roll the segment; the cleaner follows.
        started = time.monotonic()
        while topic_data_contains(data_dir, partition_prefix, [email]):
            assert time.monotonic() - started < 8 * TEST_ERASURE_BOUND_S, "still on disk after 8 bounds"
            await producer.send_and_wait(topics.contacts, value=b"", key=CONTACTS_TICK_KEY, partition=0)
            await asyncio.sleep(TEST_ERASURE_BOUND_S / 2)
    finally:
        await producer.stop()
    print(f"contact gone from disk {time.monotonic() - started:.1f} s after the first tick")


async def test_a_dlq_record_leaves_the_disk_within_its_bound(spare_kafka: Any) -> None:
    """On a broker with the test profile's retention check (1 s): a DLQ's segment past
    the bound is deleted, the active one included, with no further append."""
    data_dir = spare_kafka.data_dir / "logs"
    mine = Topics(prefix=f"t{uuid.uuid4().hex[:8]}.")
    await ensure_topics(
        spare_kafka.bootstrap, mine, signature_partitions=1, erasure_bound_s=TEST_ERASURE_BOUND_S
    )
    dlq = mine.dlq(mine.contacts)
    email = f"nawal.{uuid.uuid4().hex[:8]}@example.org".encode()
    producer = create_producer(spare_kafka.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(dlq, value=b'{"email":"' + email + b'"}', key=b"k1")
    finally:
        await producer.stop()
    assert topic_data_contains(data_dir, f"{dlq}-", [email])  # set aside: on disk
    started = time.monotonic()
    while topic_data_contains(data_dir, f"{dlq}-", [email]):
        # A broker's first retention check waits log.initial.task.delay.ms (30 s) after it
        # starts; this broker has just started.  A running one checks every second.
        assert time.monotonic() - started < 30 + 3 * TEST_ERASURE_BOUND_S, "the DLQ kept it past its bound"
        await asyncio.sleep(0.5)
    print(f"DLQ record gone from disk {time.monotonic() - started:.1f} s after it was written")
