"""How far notify's supporter list has read ``signatures.v2``: what the fan-out waits for.

A milestone must reach everyone who signed before it, so :class:`notify.sending.FanOut`
fans an event out only once the supporter list's stored offsets reach where the topic
ended after the event was recorded (see its docstring): a mark taken once, not the end at
each look, which a surge of signatures keeps moving out of reach.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition

from clameur.kafka import Kafka, client_kwargs, partitions_of
from notify.ledger import SupporterListApplier


class TopicEnds:
    """Where a topic ends now, per partition, read with a group-less consumer."""

    def __init__(self, bootstrap: Kafka, topic: str) -> None:
        self.topic = topic
        self._bootstrap = bootstrap
        self._partitions: list[TopicPartition] = []
        self._partitions_learnt_at = 0.0
        self._consumer = AIOKafkaConsumer(
            **client_kwargs(bootstrap), client_id="clameur-notify-ends", enable_auto_commit=False
        )

    async def start(self) -> None:
        await self._consumer.start()

    async def stop(self) -> None:
        await self._consumer.stop()

    async def end_offsets(self) -> dict[int, int]:
        """The next offset past each partition's last record; raises UnknownTopic when it is missing."""
        # Learnt again every 5 minutes (as often as aiokafka refreshes its metadata), so
        # partitions added to the topic count too.
        if not self._partitions or time.monotonic() - self._partitions_learnt_at > 300:
            found = await partitions_of(self._bootstrap, self.topic, client_id="clameur-notify-ends")
            self._partitions = [TopicPartition(self.topic, partition) for partition in found]
            self._partitions_learnt_at = time.monotonic()
        ends = await self._consumer.end_offsets(self._partitions)
        return {tp.partition: offset for tp, offset in ends.items()}


class _StoresOffsets(Protocol):
    async def stored_offsets(self, topic: str, partitions: Collection[int]) -> dict[int, int]: ...


Marks = tuple[dict[int, int], ...]
"""Offsets per partition, one mapping per topic a :class:`ReadProgress` follows."""


class ReadProgress:
    """How far the supporter list (and the stores it needs) has read its topics.

    ``also``: more (topic, applier) pairs followed too (the contacts: a milestone goes to
    a confirmed subscriber only once their contact is stored).
    """

    def __init__(
        self,
        ends: TopicEnds,
        supporters: SupporterListApplier | _StoresOffsets,
        *also: tuple[TopicEnds, _StoresOffsets],
    ) -> None:
        self._followed = ((ends, supporters), *also)

    async def ends_now(self) -> Marks:
        """Where each topic ends now."""
        return tuple([await topic_ends.end_offsets() for topic_ends, _ in self._followed])

    async def reached(self, marks: Marks) -> bool:
        """Whether the stored offsets reach ``marks`` (taken by :meth:`ends_now`) on every topic."""
        for (topic_ends, applier), mark in zip(self._followed, marks, strict=True):
            stored = await applier.stored_offsets(topic_ends.topic, mark.keys())
            if not all(stored.get(partition, 0) >= offset for partition, offset in mark.items()):
                return False
        return True
