"""The Kafka topics (docs/architecture.md, "Topics and events"), and how to create them."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]


@dataclass(frozen=True)
class Topics:
    """Topic names; a prefix lets a test (or a second stack) use its own set."""

    prefix: str = ""

    @property
    def signatures(self) -> str:
        return f"{self.prefix}signatures.v1"

    @property
    def cases(self) -> str:
        return f"{self.prefix}cases.v1"

    @property
    def case_events(self) -> str:
        return f"{self.prefix}case-events.v1"

    @staticmethod
    def dlq(topic: str) -> str:
        return f"{topic}.dlq"

    def specs(self, signature_partitions: int = 6, replication: int = 1) -> list[TopicSpec]:
        week_ms = str(7 * 24 * 3600 * 1000)
        keep_forever = {"retention.ms": "-1"}
        if replication > 1:
            # With acks=all, a write then survives the loss of one replica.
            keep_forever["min.insync.replicas"] = str(min(2, replication))
        return [
            # The signature stream is the source of truth for rebuilds: keep it.
            TopicSpec(self.signatures, signature_partitions, dict(keep_forever)),
            TopicSpec(
                self.cases,
                1,
                {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"},
            ),
            TopicSpec(self.case_events, 3, dict(keep_forever)),
            TopicSpec(self.dlq(self.signatures), 1, {"retention.ms": week_ms}),
            TopicSpec(self.dlq(self.cases), 1, {"retention.ms": week_ms}),
            TopicSpec(self.dlq(self.case_events), 1, {"retention.ms": week_ms}),
        ]


async def ensure_topics(
    bootstrap: str, topics: Topics, *, signature_partitions: int = 6, replication: int = 1
) -> list[str]:
    """Create the topics that are missing; returns the names it created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(spec.name, spec.partitions, replication, topic_configs=spec.config)
            for spec in topics.specs(signature_partitions, replication)
            if spec.name not in existing
        ]
        if missing:
            # Another instance may create them first: same outcome.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
        return [topic.name for topic in missing]
    finally:
        await admin.close()
