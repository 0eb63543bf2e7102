"""After the erasure bound, the broker's own files of contacts.v1 hold neither the address nor the name.

A private broker (``spare_kafka``), so the test reads the segment files it wrote.  The
ticks of :mod:`notify.compaction` are what roll the segment holding the contact and its
tombstone: without an append, a quiet partition's active segment is never cleaned.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from notify.compaction import keep_ticking

from clameur.kafka import create_producer
from clameur.topics import Topics, ensure_topics
from tests.conftest import TEST_ERASURE_BOUND_S, Infra
from tests.notify.forgetting import contact, publish_contacts, running_eraser
from tests.support import read_topic


def files_holding(broker: Any, topic: str, needle: bytes) -> list[Path]:
    """The files of the topic's partitions (segments, cleaned or to be deleted) holding ``needle``."""
    logs = Path(broker.data_dir) / "logs"
    return [
        path
        for directory in logs.glob(f"{topic}-*")
        for path in directory.iterdir()
        if path.is_file() and needle in path.read_bytes()
    ]


async def test_an_erased_contact_leaves_the_brokers_segment_files_within_the_bound(
    spare_kafka: Any, infra: Infra, new_id: Callable[..., str]
) -> None:
    kafka = spare_kafka.bootstrap
    topics = Topics(prefix=f"{new_id('disk')}.")
    await ensure_topics(kafka, topics, signature_partitions=3, erasure_bound_s=TEST_ERASURE_BOUND_S)
    marker = new_id("x").replace("-", "")
    erased = contact(f"atena.{marker}@example.org", f"Atena{marker}")
    kept = contact(f"kept.{marker}@example.org", f"Kept{marker}")
    await publish_contacts(kafka, topics, [erased, kept])

    # The fault is real: the broker wrote her address and name to its files.
    assert files_holding(spare_kafka, topics.contacts, erased.email.encode())
    assert files_holding(spare_kafka, topics.contacts, erased.first_name.encode())

    producer = create_producer(kafka)
    await producer.start()
    ticking = asyncio.create_task(keep_ticking(producer, kafka, topics.contacts, TEST_ERASURE_BOUND_S))
    started = time.monotonic()
    async with running_eraser(kafka, infra.database_url, topics) as eraser:
        await eraser.forget(erased.supporter_key, "erased")
    try:
        gone_after = None
        # The bound, then the cleaner's wake-up (1 s) and the old files' deletion delay (1 s),
        # with room for a loaded machine.
        while time.monotonic() - started < TEST_ERASURE_BOUND_S + 40:
            if not files_holding(spare_kafka, topics.contacts, erased.email.encode()) and not files_holding(
                spare_kafka, topics.contacts, erased.first_name.encode()
            ):
                gone_after = time.monotonic() - started
                break
            await asyncio.sleep(0.5)
    finally:
        ticking.cancel()
        await asyncio.gather(ticking, return_exceptions=True)
        await producer.stop()
    assert gone_after is not None, "the contact is still in the broker's files"
    # The bound from the erasure, plus the cleaner's wake-up and the old files' deletion delay
    # (1 s each on the test broker) and a second of scheduling on a shared machine.
    assert gone_after <= TEST_ERASURE_BOUND_S + 3, gone_after
    print(f"gone after {gone_after:.1f} s")
    # Compaction removed what was superseded, nothing else: the other supporter's contact stays.
    assert files_holding(spare_kafka, topics.contacts, kept.email.encode())

    # A rebuild (a reader from offset 0) finds no value for her, at most her tombstones
    # (one a partition, until delete.retention.ms).
    replayed = await read_topic(kafka, topics.contacts, at_least=1)
    assert all(r.value is None for r in replayed if r.key == erased.supporter_key.encode())
    assert any(r.key == kept.supporter_key.encode() and r.value for r in replayed)
