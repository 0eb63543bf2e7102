"""The :class:`clameur.consumer.BatchApplier` contract, as one suite every adapter runs.

The pattern of eventsourcing's ``tests/persistence.py``: :class:`BatchApplierContract`
holds the contract's tests and an abstract ``subject`` fixture; a test module subclasses
it once per adapter (``TestInMemoryApplier`` in tests/clameur, tally's
``PostgresCounterStore`` in tests/tally, notify's two appliers in tests/notify) and
provides the fixture.  The tests speak only the protocol (``stored_offsets``, ``apply``,
``Batch``) plus the adapter's way to read back its effect.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import pytest

from clameur.consumer import Batch, BatchApplier, Consumed, Outcome, PreviousBatchNotApplied

T = TypeVar("T")

# A partition a Kafka topic cannot have (partitions are int32): no store can keep its
# offset, so an apply that carries it fails at its last step, after writing its effect.
UNSTORABLE_PARTITION = 2**31


@dataclass(frozen=True)
class Subject(Generic[T]):
    """An adapter under test, and what the suite needs to see its effect."""

    applier: BatchApplier[T]
    new_events: Callable[[int], list[T]]
    """``count`` events, each new to the applier (never applied before)."""
    effect: Callable[[Sequence[T]], Awaitable[Collection[Any]]]
    """What the applier keeps of these events (its rows, its counts), comparable; empty for nothing."""


def batch_of(
    topic: str,
    events: Sequence[T],
    *,
    partition: int = 0,
    first_offset: int = 0,
    previous: Outcome | None = None,
) -> Batch[T]:
    """The events at consecutive offsets of one partition, and the offset after them."""
    consumed = [Consumed(event, partition, first_offset + n, 0) for n, event in enumerate(events)]
    return Batch(topic, consumed, {partition: first_offset + len(events)}, previous=previous)


class BatchApplierContract(Generic[T]):
    """The tests every :class:`BatchApplier` adapter passes; subclass it and give ``subject``."""

    @pytest.fixture
    def subject(self) -> Subject[T]:
        raise NotImplementedError("each adapter's test class provides its subject")

    @pytest.fixture
    def topic(self) -> str:
        """A topic name of this test's own: offsets stored by other tests never show."""
        return f"contract-{uuid.uuid4().hex[:10]}.v1"

    async def test_nothing_is_stored_at_first(self, subject: Subject[T], topic: str) -> None:
        assert await subject.applier.stored_offsets(topic, [0, 1, 2]) == {}
        assert not await subject.effect(subject.new_events(3))

    async def test_apply_stores_the_effect_and_the_next_offsets(
        self, subject: Subject[T], topic: str
    ) -> None:
        events = subject.new_events(6)
        await subject.applier.apply(batch_of(topic, events[:4], partition=0, first_offset=10))
        await subject.applier.apply(batch_of(topic, events[4:], partition=2, first_offset=0))
        assert await subject.applier.stored_offsets(topic, [0, 1, 2]) == {0: 14, 2: 2}
        assert await subject.applier.stored_offsets(topic, [2]) == {2: 2}
        assert await subject.effect(events)

    async def test_offsets_never_move_backwards(self, subject: Subject[T], topic: str) -> None:
        await subject.applier.apply(batch_of(topic, subject.new_events(5), partition=1, first_offset=100))
        await subject.applier.apply(batch_of(topic, subject.new_events(5), partition=1, first_offset=10))
        assert await subject.applier.stored_offsets(topic, [1]) == {1: 105}

    async def test_a_replayed_batch_changes_nothing(self, subject: Subject[T], topic: str) -> None:
        events = subject.new_events(5)
        batch = batch_of(topic, events, partition=0, first_offset=20)
        await subject.applier.apply(batch)
        effect, offsets = await subject.effect(events), await subject.applier.stored_offsets(topic, [0])
        assert effect, "the first apply kept nothing: the replay would prove nothing"
        await subject.applier.apply(batch)
        assert await subject.effect(events) == effect
        assert await subject.applier.stored_offsets(topic, [0]) == offsets == {0: 25}

    async def test_a_failing_apply_stores_nothing(self, subject: Subject[T], topic: str) -> None:
        events = subject.new_events(5)
        good = batch_of(topic, events, partition=0)
        failing = dataclasses.replace(good, next_offsets={**good.next_offsets, UNSTORABLE_PARTITION: 1})
        with pytest.raises(Exception):  # noqa: B017 - any failure: the contract is what it leaves
            await subject.applier.apply(failing)
        assert not await subject.effect(events), "the effect of a failed apply was kept"
        assert await subject.applier.stored_offsets(topic, [0]) == {}
        await subject.applier.apply(good)  # the same batch, retried, goes through
        assert await subject.applier.stored_offsets(topic, [0]) == {0: 5}

    async def test_a_batch_commits_only_after_the_one_before(self, subject: Subject[T], topic: str) -> None:
        events = subject.new_events(4)
        previous = Outcome()
        waiting = asyncio.create_task(
            subject.applier.apply(batch_of(topic, events, partition=0, first_offset=8, previous=previous))
        )
        try:
            await asyncio.sleep(0.3)
            assert not waiting.done(), "the batch did not wait for the one before it"
            assert not await subject.effect(events)
            assert await subject.applier.stored_offsets(topic, [0]) == {}
            previous.settle(applied=True)
            await asyncio.wait_for(waiting, timeout=10)
        finally:
            waiting.cancel()
        assert await subject.effect(events)
        assert await subject.applier.stored_offsets(topic, [0]) == {0: 12}

    async def test_a_batch_whose_predecessor_gave_up_stores_nothing(
        self, subject: Subject[T], topic: str
    ) -> None:
        events = subject.new_events(4)
        previous = Outcome()
        previous.settle(applied=False)
        with pytest.raises(PreviousBatchNotApplied):
            await asyncio.wait_for(
                subject.applier.apply(batch_of(topic, events, partition=0, previous=previous)), timeout=10
            )
        assert not await subject.effect(events)
        assert await subject.applier.stored_offsets(topic, [0]) == {}
