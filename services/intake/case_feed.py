"""Intake's copy of every case: cases.v1 read from the start into a :class:`CaseRegistry`.

This is ``clameur.case_registry.follow_cases`` with two fixes that belong in clameur
(see the report): aiokafka's consumer has no ``force_metadata_update`` (its client does),
so the shared version fails on a topic not yet in the consumer's metadata; and a follower
that fails is started again (with backoff) instead of leaving intake unready for good.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from clameur.case_registry import CaseRegistry
from clameur.events import decode_case_state

logger = logging.getLogger(__name__)


async def follow_cases_forever(bootstrap: str, topic: str, registry: CaseRegistry, *, client_id: str) -> None:
    """Follow ``topic`` into ``registry`` until cancelled, reading it again after a failure."""
    backoff = 0.5
    while True:
        try:
            await follow_cases(bootstrap, topic, registry, client_id=client_id)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            # aiokafka may surface a CancelledError of its own from stop(): not ours, retry.
            logger.warning("following cases.v1 was interrupted; retrying")
        except Exception as exc:  # noqa: BLE001 - broker down: read the topic again when it is back
            logger.warning("following cases.v1 failed; retrying: %s", type(exc).__name__)
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, 10.0)


async def follow_cases(bootstrap: str, topic: str, registry: CaseRegistry, *, client_id: str) -> None:
    """Read ``topic`` from the beginning into ``registry``, set ``registry.ready`` once caught
    up with the end offsets seen at start, then keep following new states."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, client_id=client_id, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = await _partitions_of(consumer, topic)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        end = await consumer.end_offsets(partitions)
        caught_up = {tp for tp in partitions if end[tp] == 0}
        if len(caught_up) == len(partitions):
            registry.ready.set()
        while True:
            fetched = await consumer.getmany(timeout_ms=500, max_records=1000)
            for records in fetched.values():
                for record in records:
                    if record.value is None:
                        continue  # a tombstone: cases are closed, never deleted
                    try:
                        registry.apply(decode_case_state(record.value))
                    except ValidationError:
                        logger.warning(
                            "unreadable case state skipped",
                            extra={"partition": record.partition, "offset": record.offset},
                        )
            if not registry.ready.is_set():
                for tp in partitions:
                    if await consumer.position(tp) >= end[tp]:
                        caught_up.add(tp)
                if len(caught_up) == len(partitions):
                    registry.ready.set()
                    logger.info("case registry caught up", extra={"cases": len(registry)})
    finally:
        await consumer.stop()


async def _partitions_of(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    # The consumer exposes no metadata refresh; its client does (aiokafka 0.14).
    client = consumer._client
    await client.add_topic(topic)
    for _ in range(60):
        found = consumer.partitions_for_topic(topic)
        if found:
            return [TopicPartition(topic, partition) for partition in sorted(found)]
        await client.force_metadata_update()
        await asyncio.sleep(0.5)
    raise RuntimeError(f"topic {topic} does not exist; run `make up` or `python -m clameur.provision topics`")
