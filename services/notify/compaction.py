"""Ticks on contacts.v1: what makes the broker compact an erased contact away within the bound.

The broker never compacts a partition's active segment, and rolls a segment only when
something is appended to it (after ``segment.ms`` / ``max.compaction.lag.ms``: half the
erasure bound, clameur/topics.py).  In a quiet partition the segment holding a contact
and its tombstone would stay active, and on disk, indefinitely.  So notify appends a tiny
record (key ``CONTACTS_TICK_KEY``, null value: nothing personal, and compaction keeps only
the latest tick) to every partition every quarter bound: the segment holding a tombstone
rolls by 3/4 of the bound after it, and the cleaner (waking every
``log.cleaner.backoff.ms``, 15 s by default) then removes the superseded contact and
deletes the old file after ``file.delete.delay.ms`` (1 s).  Consumers of contacts.v1 skip
the tick's key.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaProducer

from clameur.kafka import Kafka, partitions_of
from clameur.topics import CONTACTS_TICK_KEY

logger = logging.getLogger(__name__)


async def tick(producer: AIOKafkaProducer, bootstrap: Kafka, topic: str) -> int:
    """Append one tick to every partition of ``topic``; returns how many, acks awaited."""
    partitions = await partitions_of(bootstrap, topic, client_id="clameur-notify")
    sends = [await producer.send(topic, None, key=CONTACTS_TICK_KEY, partition=p) for p in partitions]
    for sent in sends:
        await sent
    return len(partitions)


def tick_interval_s(erasure_bound_s: float) -> float:
    """A quarter of the bound: with segment.ms half the bound, a segment rolls within 3/4 of it."""
    return erasure_bound_s / 4


async def keep_ticking(
    producer: AIOKafkaProducer, bootstrap: Kafka, topic: str, erasure_bound_s: float
) -> None:
    """Tick every quarter bound until cancelled; a failed tick is logged and tried at the next one."""
    every_s = tick_interval_s(erasure_bound_s)
    while True:
        try:
            await tick(producer, bootstrap, topic)
        except Exception as error:  # noqa: BLE001 - a missed tick is retried; the loop must live
            logger.warning("contacts tick failed", extra={"error": type(error).__name__})
        await asyncio.sleep(every_s)
