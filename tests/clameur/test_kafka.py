"""A topic's partitions, the one way (clameur.kafka.partitions_of), and the case follower's retries."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from clameur.case_registry import CaseRegistry, follow_cases_forever
from clameur.kafka import UnknownTopic, partitions_of
from clameur.retry import RetryPolicy
from clameur.topics import Topics


async def test_the_partitions_of_a_topic_are_listed_in_order(infra: Any, topics: Topics) -> None:
    assert await partitions_of(infra.kafka, topics.signatures) == [0, 1, 2]


async def test_a_topic_never_provisioned_says_what_to_do(infra: Any, new_id: Any) -> None:
    with pytest.raises(UnknownTopic, match="provision"):
        await partitions_of(infra.kafka, new_id("no-such-topic"))


async def test_the_case_follower_backs_off_while_its_topic_is_missing(infra: Any, new_id: Any) -> None:
    delays: list[float] = []

    async def sleep(delay: float) -> None:
        delays.append(delay)
        if len(delays) == 4:
            raise asyncio.CancelledError  # as the app's shutdown would cancel it

    registry = CaseRegistry()
    policy = RetryPolicy(initial_s=0.5, maximum_s=10.0)
    with pytest.raises(asyncio.CancelledError):
        await follow_cases_forever(
            infra.kafka, new_id("cases"), registry, client_id="test", policy=policy, sleep=sleep
        )
    assert not registry.ready.is_set()
    # Doubling from 0.5 s, each spread over [0.5, 1.5) of its nominal delay.
    for attempt, delay in enumerate(delays, 1):
        nominal = 0.5 * 2 ** (attempt - 1)
        assert 0.5 * nominal <= delay < 1.5 * nominal
