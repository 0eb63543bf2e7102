"""Invalidations stay exact when tally is killed -9 around the commit of the batch that holds one."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from clameur.events import InvalidationFilter
from clameur.kafka import create_producer
from clameur.topics import Topics
from tests.support import ServiceProcess, eventually, metric
from tests.tally.helpers import counters, scrape, stored_offsets, total
from tests.tally.invalidation_support import LogEvent, bot_wave, expected_counts, nonzero, people, requested

pytestmark = pytest.mark.slow


async def _produce(bootstrap: str, topic: str, events: Sequence[LogEvent]) -> None:
    """Send the events keyed by case id, in order (one partition per case), and wait for every ack."""
    producer = create_producer(bootstrap, linger_ms=20)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, event.to_json(), key=event.case_id.encode()) for event in events
        ]
        for future in futures:
            await future
    finally:
        await producer.stop()


async def _matched(database_url: str, case_id: str) -> list[int]:
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch("SELECT matched FROM tally.invalidations WHERE case_id = $1", case_id)
    finally:
        await connection.close()
    return [row["matched"] for row in rows]


@pytest.mark.parametrize("crash_at", ["before_db_commit", "after_db_commit"])
async def test_kill_9_around_the_commit_of_an_invalidation_keeps_the_counts_exact(
    crash_at: str, tally_env: dict[str, str], topics: Topics, infra: Any, new_id: Any, tmp_path: Path
) -> None:
    case_id = new_id("nawal")
    bots, late_bots, humans = bot_wave(case_id, 30), bot_wave(case_id, 40)[30:], people(case_id, 20)
    invalidation = requested(case_id, InvalidationFilter(email_domains=("bot-farm.example",)))
    log: list[LogEvent] = [*bots, *humans[:10], invalidation, *late_bots, *humans[10:]]
    # All in the log before tally starts: it reads them in one batch, the one it dies in.
    await _produce(infra.kafka, topics.signatures, log)
    doomed = ServiceProcess("tally", {**tally_env, "CLAMEUR_TALLY_CRASH_AT": crash_at}, tmp_path).start()
    try:
        exit_code = await asyncio.to_thread(doomed.wait_exit, 60)
    finally:
        doomed.kill()
    assert exit_code == -signal.SIGKILL, doomed.tail()
    applied_at_crash = await stored_offsets(infra.database_url, topics.signatures)
    if crash_at == "before_db_commit":
        assert (applied_at_crash, await total(infra.database_url, case_id)) == (0, 0)
        assert await _matched(infra.database_url, case_id) == []  # nothing of the batch was kept
    else:
        assert applied_at_crash == len(log)  # the batch, invalidation included, committed whole
        assert await _matched(infra.database_url, case_id) == [30]

    survivor = ServiceProcess("tally", tally_env, tmp_path).start()
    try:
        # The outbox delivers at least once: the same request again, and signatures again.
        await _produce(infra.kafka, topics.signatures, [invalidation, *bots[:5], *humans[:5]])
        replayed = len(log) + 11
        await eventually(
            lambda: _stored_at_least(infra.database_url, topics.signatures, replayed),
            within=30,
            what=f"{replayed} records applied",
        )
        survivor_metrics = await scrape(survivor.url)
    finally:
        survivor.stop()
    # Proof the replay was read: the survivor applied records it found counted already.
    read_again = len(log) - applied_at_crash + 11
    assert metric(survivor_metrics, "clameur_consumer_records_total") >= read_again
    assert metric(survivor_metrics, "clameur_dlq_records_total") == 0  # applied, not set aside
    assert nonzero(await counters(infra.database_url, case_id)) == expected_counts([*humans, *late_bots])
    assert await total(infra.database_url, case_id) == 30
    assert await _matched(infra.database_url, case_id) == [30]  # taken once, the same 30


async def _stored_at_least(database_url: str, topic: str, records: int) -> bool:
    return await stored_offsets(database_url, topic) >= records
