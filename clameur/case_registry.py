"""Every case's current state in memory, followed from the compacted ``cases.v1`` topic.

Intake answers 404/410 and checks actions and locales with it, without a database call
per request.  It reads the topic from the beginning without a consumer group (each
instance keeps the whole registry), is ``ready`` once it has caught up with the end
of the topic as it was at start, then follows new states as they come.  A follower
that fails (broker gone) starts again from the beginning, with backoff.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from clameur.events import CaseState, decode_case_state
from clameur.kafka import Kafka, client_kwargs, partitions_of
from clameur.retry import RetryPolicy, Sleep, retry

logger = logging.getLogger(__name__)


class CaseRegistry:
    """Case states by id; a newer ``version`` replaces an older one, never the reverse."""

    def __init__(self) -> None:
        self._cases: dict[str, CaseState] = {}
        self.ready = asyncio.Event()
        self._listeners: list[Callable[[CaseState], None]] = []

    def get(self, case_id: str) -> CaseState | None:
        return self._cases.get(case_id)

    def __len__(self) -> int:
        return len(self._cases)

    def all(self) -> list[CaseState]:
        return list(self._cases.values())

    def on_change(self, listener: Callable[[CaseState], None]) -> None:
        self._listeners.append(listener)

    def apply(self, state: CaseState) -> bool:
        """Keep ``state`` if it is newer than what we have; returns whether it was kept."""
        current = self._cases.get(state.case_id)
        if current is not None and current.version >= state.version:
            return False
        self._cases[state.case_id] = state
        for listener in self._listeners:
            listener(state)
        return True


# A follower that failed starts again after 0.5 s, then up to 10 s between attempts.
FOLLOW_RETRY = RetryPolicy(initial_s=0.5, maximum_s=10.0)


class _Interrupted(Exception):
    """aiokafka surfaced a CancelledError of its own (from ``stop()``): not ours, so retried."""


async def follow_cases_forever(
    bootstrap: Kafka,
    topic: str,
    registry: CaseRegistry,
    *,
    client_id: str,
    policy: RetryPolicy = FOLLOW_RETRY,
    sleep: Sleep = asyncio.sleep,
) -> None:
    """Follow ``topic`` into ``registry`` until cancelled, reading it again after a failure."""

    async def follow_once() -> None:
        try:
            await follow_cases(bootstrap, topic, registry, client_id=client_id)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            raise _Interrupted("interrupted") from None

    # follow_cases returns only if cancelled: every failure (broker down) is retried.
    await retry(f"following {topic}", follow_once, policy, sleep=sleep)


async def follow_cases(bootstrap: Kafka, topic: str, registry: CaseRegistry, *, client_id: str) -> None:
    """Read ``topic`` from the beginning into ``registry``, set ``registry.ready`` once caught
    up with the end offsets seen at start, then keep following new states."""
    consumer = AIOKafkaConsumer(**client_kwargs(bootstrap), client_id=client_id, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [
            TopicPartition(topic, partition)
            for partition in await partitions_of(bootstrap, topic, client_id=client_id)
        ]
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
