"""The batch transaction against a real Postgres: dedupe, offsets, milestones under concurrency."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime
from typing import Any

import asyncpg
from prometheus_client import CollectorRegistry
from tally.case_store import PostgresCaseStore
from tally.cases import CaseCreate, new_case
from tally.counter_store import PostgresCounterStore
from tally.counting import SignatureLogRecord
from tally.metrics import TallyMetrics

from clameur.consumer import Batch, Consumed, Outcome
from clameur.events import Action, SignatureAccepted
from clameur.topics import Topics
from tests.tally.helpers import case_body, counters, many, signature


def _batch(
    topic: str, events: list[SignatureAccepted], partition: int = 0, first_offset: int = 0
) -> Batch[SignatureLogRecord]:
    consumed: list[Consumed[SignatureLogRecord]] = [
        Consumed(event, partition, first_offset + n, 0) for n, event in enumerate(events)
    ]
    return Batch(topic, consumed, {partition: first_offset + len(events)})


def _store(pool: asyncpg.Pool[Any], topics: Topics) -> PostgresCounterStore:
    return PostgresCounterStore(pool, TallyMetrics(CollectorRegistry()), topics.case_events)


async def _create(pool: asyncpg.Pool[Any], topics: Topics, case_id: str, milestones: list[int]) -> None:
    request = CaseCreate.model_validate(case_body(case_id, milestones=milestones))
    await PostgresCaseStore(pool, topics).create(new_case(request, datetime.now(UTC)))


async def test_a_replayed_batch_changes_nothing(
    pool: asyncpg.Pool[Any], topics: Topics, new_id: Any, infra: Any
) -> None:
    case_id = new_id("nawal")
    store = _store(pool, topics)
    events = [*many(case_id, 20), signature(case_id, "x@example.org", action=Action.LETTER)]
    await store.apply(_batch(topics.signatures, events))
    before = await counters(infra.database_url, case_id)
    await store.apply(_batch(topics.signatures, events))
    assert await counters(infra.database_url, case_id) == before
    assert before[("total", "")] == 21
    assert before[("action", "letter")] == 1
    assert before[("country", "FR")] + before[("country", "MA")] + before[("country", "BE")] == 21


async def test_the_same_supporter_in_other_spellings_counts_once(
    pool: asyncpg.Pool[Any], topics: Topics, new_id: Any, infra: Any
) -> None:
    case_id = new_id("nawal")
    store = _store(pool, topics)
    spellings = ["nawal.fan@example.org", "  Nawal.Fan@Example.ORG", "NAWAL.FAN@EXAMPLE.ORG  "]
    await store.apply(_batch(topics.signatures, [signature(case_id, spellings[0])]))
    await store.apply(
        _batch(topics.signatures, [signature(case_id, e, country="MA") for e in spellings], first_offset=1)
    )
    assert await counters(infra.database_url, case_id) == {
        ("total", ""): 1,
        ("country", "FR"): 1,
        ("action", "signature"): 1,
    }


async def test_a_batch_commits_only_after_the_one_before(
    pool: asyncpg.Pool[Any], topics: Topics, new_id: Any, infra: Any
) -> None:
    """Tally stages a batch while the one before it commits; it must not commit first, or
    the stored offset would pass records never counted (the first batch may yet fail)."""
    case_id = new_id("nawal")
    store = _store(pool, topics)
    first_events = many(case_id, 10)
    second_events = [*many(case_id, 5, tag="b"), first_events[0]]  # a supporter of the first, again
    first = _batch(topics.signatures, first_events, partition=3)
    previous = Outcome()
    second = dataclasses.replace(
        _batch(topics.signatures, second_events, partition=3, first_offset=10), previous=previous
    )
    waiting = asyncio.create_task(store.apply(second))
    try:
        await asyncio.sleep(0.5)
        assert not waiting.done(), "the second batch did not wait for the first"
        assert await counters(infra.database_url, case_id) == {}
        assert await store.stored_offsets(topics.signatures, [3]) == {}
        await asyncio.wait_for(store.apply(first), timeout=10)
        previous.settle(applied=True)
        await asyncio.wait_for(waiting, timeout=10)
    finally:
        waiting.cancel()
    assert (await counters(infra.database_url, case_id))[("total", "")] == 15
    assert await store.stored_offsets(topics.signatures, [3]) == {3: 16}


async def test_stored_offsets_never_move_backwards(
    pool: asyncpg.Pool[Any], topics: Topics, new_id: Any
) -> None:
    case_id = new_id("nawal")
    store = _store(pool, topics)
    await store.apply(_batch(topics.signatures, many(case_id, 5), partition=2, first_offset=100))
    await store.apply(_batch(topics.signatures, many(case_id, 5), partition=2, first_offset=10))
    assert await store.stored_offsets(topics.signatures, [0, 1, 2]) == {2: 105}


async def test_a_milestone_crossed_by_concurrent_batches_fires_once(
    pool: asyncpg.Pool[Any], topics: Topics, new_id: Any
) -> None:
    case_id = new_id("nawal")
    thresholds = [10, 20, 30, 40, 50]
    await _create(pool, topics, case_id, thresholds)
    # Eight batches at once, from two "instances", some sharing supporters: each one alone
    # would cross some thresholds, and totals interleave.
    stores = [_store(pool, topics), _store(pool, topics)]
    batches = [
        _batch(topics.signatures, many(case_id, 9, tag=f"b{n % 6}"), partition=n % 3, first_offset=n * 10)
        for n in range(8)
    ]
    await asyncio.gather(*(stores[n % 2].apply(batch) for n, batch in enumerate(batches)))
    rows = await pool.fetch(
        "SELECT payload FROM tally.outbox WHERE topic = $1 AND key = $2 ORDER BY id",
        topics.case_events,
        case_id,
    )
    fired = [row["payload"]["threshold"] for row in rows]
    assert sorted(fired) == [10, 20, 30, 40, 50]  # 6 distinct tags x 9 = 54 signatures
    totals = [row["payload"]["total"] for row in rows]
    assert all(t >= threshold for t, threshold in zip(totals, fired, strict=True))


async def test_signatures_of_an_unknown_case_are_counted_without_milestones(
    pool: asyncpg.Pool[Any], topics: Topics, new_id: Any, infra: Any
) -> None:
    case_id = new_id("ghost")
    await _store(pool, topics).apply(_batch(topics.signatures, many(case_id, 3)))
    assert (await counters(infra.database_url, case_id))[("total", "")] == 3
    assert await pool.fetchval("SELECT count(*) FROM tally.outbox WHERE key = $1", case_id) == 0
