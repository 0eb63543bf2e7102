"""The Kafka topics (docs/architecture.md, "Topics and events"), and how to create them."""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.admin import NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from clameur.kafka import Kafka, kafka_admin

DAY_S = 24 * 3600.0

CONTACTS_TICK_KEY = b"__tick__"
"""The key of the empty records notify appends to every partition of contacts.v1 now and
then: the broker rolls a segment only on an append, and compaction never touches the
active segment, so a quiet partition would keep an erased contact on disk.  Consumers of
contacts.v1 skip this key."""


def contact_partition(key: bytes, partitions: Sequence[int]) -> int:
    """The partition of contacts.v1 that holds the contact keyed ``key`` (``partitions``: sorted).

    Compaction supersedes a record only by a later one with the same key *in the same
    partition*, so every writer of a contact or its tombstone (intake, notify, a test)
    sends it to this partition explicitly, never through the producer's default
    partitioner.  CRC-32 of the key rather than Kafka's murmur2: the keys are HMAC
    outputs, uniform already, and aiokafka's murmur2 is pure Python (about 9 µs for a
    64-byte key, a third of intake's own work on a signature that writes a contact),
    where ``zlib.crc32`` is C.
    """
    return partitions[zlib.crc32(key) % len(partitions)]


async def send_contact_record(
    producer: AIOKafkaProducer, topic: str, key: bytes, value: bytes | None
) -> None:
    """A contact (``value`` None: its tombstone) sent to :func:`contact_partition`'s partition; acked."""
    partitions = sorted(await producer.partitions_for(topic))
    await producer.send_and_wait(topic, value, key=key, partition=contact_partition(key, partitions))


async def tombstone_contact(producer: AIOKafkaProducer, topic: str, key: bytes) -> None:
    """The tombstone of the contact keyed ``key``, on every partition of ``topic``; each acked.

    Every partition, not only :func:`contact_partition`'s: a contact written before that
    placement (aiokafka's default partitioner, before 2026-12-08), or before the topic
    gained partitions, sits elsewhere, and compaction erases it only by a later record
    with its key in its own partition.  An erasure is rare; a tombstone where the key
    never was costs a record until ``delete.retention.ms``.
    """
    partitions = sorted(await producer.partitions_for(topic))
    sent = [await producer.send(topic, None, key=key, partition=p) for p in partitions]
    for acked in sent:
        await acked


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]


class _Topic:
    """A topic of the set, named under its prefix: ``Topics("t1.").cases`` is ``t1.cases.v1``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, topics: Topics, owner: type[Topics] | None = None) -> str:
        return f"{topics.prefix}{self.name}"


@dataclass(frozen=True)
class Topics:
    """Topic names; a prefix lets a test (or a second stack) use its own set."""

    prefix: str = ""

    signatures = _Topic("signatures.v2")
    """A case's actions and what happens to them; no personal data (kept forever)."""
    contacts = _Topic("contacts.v1")
    """How to write to a supporter (compacted; a tombstone erases)."""
    suppressions = _Topic("suppressions.v1")
    """Addresses never to mail again, as keyed hashes (compacted, never erased)."""
    cases = _Topic("cases.v1")
    case_events = _Topic("case-events.v1")

    @staticmethod
    def dlq(topic: str) -> str:
        return f"{topic}.dlq"

    def specs(
        self, signature_partitions: int = 6, replication: int = 1, erasure_bound_s: float = DAY_S
    ) -> list[TopicSpec]:
        """Every topic with its settings.

        ``erasure_bound_s`` bounds how long personal data outlives its erasure on a topic:
        contacts.v1 rolls and compacts its segments within it (KIP-354), and the dead
        letter queues, which hold raw records, keep nothing longer.
        """
        bound_ms = str(max(1000, int(erasure_bound_s * 1000)))
        keep_forever = {"retention.ms": "-1"}
        if replication > 1:
            # With acks=all, a write then survives the loss of one replica.
            keep_forever["min.insync.replicas"] = str(min(2, replication))
        compacted = {
            "cleanup.policy": "compact",
            **{k: v for k, v in keep_forever.items() if k != "retention.ms"},
        }
        # A segment rolls on the first append after segment.ms: with half the bound, and
        # notify's ticks every quarter (notify/compaction.py), the segment holding a
        # tombstone is rolled and cleanable by 3/4 of the bound after the erasure.
        half_bound_ms = str(max(1000, int(erasure_bound_s * 500)))
        erasable = {
            **compacted,
            # A tombstone supersedes the contact once the segments holding both are rolled
            # and cleaned: within the bound, the old value is gone from disk.
            "max.compaction.lag.ms": half_bound_ms,
            "segment.ms": half_bound_ms,
            "delete.retention.ms": bound_ms,
            "min.cleanable.dirty.ratio": "0.01",
            "file.delete.delay.ms": "1000",
        }
        dead_letters = {"retention.ms": bound_ms, "segment.ms": bound_ms, "file.delete.delay.ms": "1000"}
        return [
            # The source of truth for counts and rebuilds, without personal data: keep it.
            TopicSpec(self.signatures, signature_partitions, dict(keep_forever)),
            TopicSpec(self.contacts, signature_partitions, erasable),
            TopicSpec(self.suppressions, 3, dict(compacted)),
            TopicSpec(self.cases, 1, {**compacted, "min.compaction.lag.ms": "0"}),
            TopicSpec(self.case_events, 3, dict(keep_forever)),
            *(
                TopicSpec(self.dlq(topic), 1, dict(dead_letters))
                for topic in (self.signatures, self.contacts, self.suppressions, self.cases, self.case_events)
            ),
        ]


async def ensure_topics(
    bootstrap: Kafka,
    topics: Topics,
    *,
    signature_partitions: int = 6,
    replication: int = 1,
    erasure_bound_s: float = DAY_S,
) -> list[str]:
    """Create the topics that are missing; returns the names it created."""
    async with kafka_admin(bootstrap) as admin:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(spec.name, spec.partitions, replication, topic_configs=spec.config)
            for spec in topics.specs(signature_partitions, replication, erasure_bound_s)
            if spec.name not in existing
        ]
        if missing:
            # Another instance may create them first: same outcome.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
        return [topic.name for topic in missing]
