"""How far notify's supporter list has read ``signatures.v1``: what the fan-out waits for.

A milestone must reach everyone who signed before it, so :class:`notify.sending.FanOut`
fans an event out only once the supporter list's stored offsets reach where the topic
ended after the event was recorded (see its docstring).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, TopicPartition

from notify.ledger import SupporterListApplier


class TopicEnds:
    """Where a topic ends now, per partition, read with a group-less consumer."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, client_id="clameur-notify-ends", enable_auto_commit=False
        )

    async def start(self) -> None:
        await self._consumer.start()

    async def stop(self) -> None:
        await self._consumer.stop()

    async def end_offsets(self) -> dict[int, int]:
        """The next offset past each partition's last record; raises when the topic is missing."""
        partitions = self._consumer.partitions_for_topic(self.topic)
        if not partitions:
            # Asking for partition 0 makes the client learn the topic's metadata.
            await self._consumer.end_offsets([TopicPartition(self.topic, 0)])
            partitions = self._consumer.partitions_for_topic(self.topic)
        if not partitions:
            raise RuntimeError(f"topic {self.topic} does not exist; run `python -m clameur.provision topics`")
        ends = await self._consumer.end_offsets([TopicPartition(self.topic, p) for p in sorted(partitions)])
        return {tp.partition: offset for tp, offset in ends.items()}


def supporters_caught_up(ends: TopicEnds, supporters: SupporterListApplier) -> Callable[[], Awaitable[bool]]:
    """Whether the supporter list has stored offsets up to where ``ends.topic`` ends now."""

    async def caught_up() -> bool:
        end = await ends.end_offsets()
        stored = await supporters.stored_offsets(ends.topic, end.keys())
        return all(stored.get(partition, 0) >= offset for partition, offset in end.items())

    return caught_up
