"""Exact counts whatever crashed: kill -9 around the commit, rebalances, Postgres restarting.

The crash points are made reachable on purpose with ``CLAMEUR_TALLY_CRASH_AT``
(honoured only with ``CLAMEUR_ENV=test``): the process sends itself SIGKILL in the
first batch holding signatures, just before or just after the database commit.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from tally.reconcile import check_counters
from tally.settings import TallySettings

from clameur.database import create_pool
from clameur.events import SignatureConfirmed
from clameur.topics import Topics
from tests.support import ServiceProcess, eventually, metric, settings_from
from tests.tally.helpers import (
    counters,
    many,
    produce,
    scrape,
    signature,
    stored_offsets,
    supporter_key,
    total,
)

pytestmark = pytest.mark.slow


async def _no_drift(database_url: str, cases: list[str]) -> None:
    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        assert await check_counters(pool, cases=cases) == []
    finally:
        await pool.close()


@pytest.mark.parametrize("crash_at", ["before_db_commit", "after_db_commit"])
async def test_kill_9_around_the_commit_then_restart_counts_exactly(
    crash_at: str, tally_env: dict[str, str], topics: Topics, infra: Any, new_id: Any, tmp_path: Path
) -> None:
    case_id = new_id("nawal")
    distinct = many(case_id, 300, countries=("FR", "MA", "BE", "SN"))
    applied_at_crash, counted_at_crash = await _crash(
        tally_env, crash_at, tmp_path, infra, topics, case_id, distinct + distinct[:50]
    )
    if crash_at == "before_db_commit":
        assert counted_at_crash == 0
        assert applied_at_crash == 0  # the crashed batch's offsets were not stored with it
    else:
        assert 0 < counted_at_crash <= 300
        assert counted_at_crash <= applied_at_crash <= 350  # stored with the counts, in one commit

    # The survivor reads from the stored offsets: what the crash left unapplied, then the 100
    # replayed after it counted the 300 (and replays still count nothing).
    replayed = 350 - applied_at_crash + 100
    survivor_metrics = await _survive(
        tally_env, tmp_path, infra, topics, case_id, 300, distinct[:100], replayed
    )
    # Proof the replays were read before the counts are checked: it applied more records than
    # it found new signatures, and every other one was a duplicate.
    assert metric(survivor_metrics, "clameur_tally_duplicates_total") >= replayed - (300 - counted_at_crash)
    found = await counters(infra.database_url, case_id)
    assert found[("total", "")] == 300
    assert found[("action", "signature")] == 300
    assert sum(count for (dimension, _), count in found.items() if dimension == "country") == 300
    await _no_drift(infra.database_url, [case_id])


async def test_two_instances_with_rebalances_under_load_count_exactly(
    tally_env: dict[str, str], topics: Topics, infra: Any, new_id: Any, tmp_path: Path
) -> None:
    cases = [new_id("case") for _ in range(6)]  # keyed by case: spread over the 3 partitions
    waves = [[s for case_id in cases for s in many(case_id, 250, tag=f"w{wave}")] for wave in range(3)]
    env = {**tally_env, "CLAMEUR_TALLY_BATCH_MAX_RECORDS": "100"}
    first = ServiceProcess("tally", env, tmp_path).start()
    second = ServiceProcess("tally", env, tmp_path)
    third = ServiceProcess("tally", env, tmp_path)
    try:
        loading = asyncio.create_task(_produce_waves(infra.kafka, topics.signatures, waves))
        await asyncio.sleep(0.5)
        await asyncio.to_thread(second.start)  # joins: the partitions are shared mid-stream
        await asyncio.sleep(1.0)
        first.kill(signal.SIGKILL)  # dies mid-batch: the second takes everything over
        await loading
        await produce(infra.kafka, topics.signatures, waves[0][:300])  # replays of counted ones
        await eventually(lambda: _all_total(infra, cases, 750), within=60, what="750 for every case")
        # Proof the replays were read before the counts are checked: every record's offset is
        # stored (4,500 distinct, then the 300), and the second, alone since the first died,
        # found the 300 counted already.
        await eventually(
            lambda: _stored_at(infra.database_url, topics.signatures, 4800),
            within=60,
            what="the 4800 records applied",
        )
        assert metric(await scrape(second.url), "clameur_tally_duplicates_total") >= 300
        await asyncio.to_thread(third.start)  # and one more rebalance, by SIGTERM
        _stopped_cleanly(second)  # SIGTERM: finish the batch, commit, leave the group
        await asyncio.sleep(2)
        _stopped_cleanly(third)
    finally:
        for process in (first, second, third):
            process.kill()
    for case_id in cases:
        assert await total(infra.database_url, case_id) == 750
    await _no_drift(infra.database_url, cases)


def _stopped_cleanly(process: ServiceProcess) -> None:
    # uvicorn re-raises SIGTERM once its graceful shutdown is complete.
    assert process.stop() == 0, process.tail()
    assert "Application shutdown complete" in process.tail(), process.tail()


async def _produce_waves(bootstrap: str, topic: str, waves: list[list[Any]]) -> None:
    for wave in waves:
        for start in range(0, len(wave), 250):
            await produce(bootstrap, topic, wave[start : start + 250])
            await asyncio.sleep(0.1)


async def test_postgres_restarted_mid_stream_loses_nothing_and_tally_recovers_alone(
    tally: Any, tally_env: dict[str, str], topics: Topics, infra: Any, new_id: Any, spare_postgres: Any
) -> None:
    settings = settings_from(TallySettings, tally_env, database_url=spare_postgres.dsn)
    case_id = new_id("nawal")
    before, during, after = (
        many(case_id, 100, tag="a"),
        many(case_id, 200, tag="b"),
        many(case_id, 50, tag="c"),
    )
    async with tally(settings) as (_, client):
        await produce(infra.kafka, topics.signatures, before)
        await eventually(
            lambda: _total_is_at(spare_postgres.dsn, case_id, 100), within=20, what="100 counted"
        )
        spare_postgres.stop()
        await produce(
            infra.kafka, topics.signatures, [*during, signature(case_id, "supporterb1@example.org")]
        )
        await asyncio.sleep(2)
        assert (await client.get("/readyz")).status_code == 503
        spare_postgres.start()
        await produce(infra.kafka, topics.signatures, after)
        await eventually(
            lambda: _stored_at(spare_postgres.dsn, topics.signatures, 351),
            within=60,
            what="the 351 records applied",
        )
        assert (await client.get("/readyz")).status_code == 200
        metrics = (await client.get("/metrics")).text
    # Proof the records were applied again before the counts are checked: every record's
    # offset is stored, batches failed while Postgres was away (and were applied later),
    # and of the records applied, more than the 350 distinct ones, one at least (the
    # replay of supporterb1) was found counted already.
    assert metric(metrics, "clameur_tally_batch_failures_total") > 0
    assert metric(metrics, "clameur_tally_records_consumed_total") >= 351
    assert metric(metrics, "clameur_tally_duplicates_total") >= 1
    assert await total(spare_postgres.dsn, case_id) == 350
    await _no_drift(spare_postgres.dsn, [case_id])


async def _all_total(infra: Any, cases: list[str], expected: int) -> bool:
    return all([await total(infra.database_url, case_id) == expected for case_id in cases])


async def _total_is(infra: Any, case_id: str, expected: int) -> bool:
    return await total(infra.database_url, case_id) == expected


async def _applied_at_least(metrics: Awaitable[str], expected: int) -> bool:
    return metric(await metrics, "clameur_tally_records_consumed_total") >= expected


async def _stored_at(dsn: str, topic: str, expected: int) -> bool:
    try:
        return await stored_offsets(dsn, topic) == expected
    except (OSError, asyncpg.PostgresError):
        return False


async def _total_is_at(dsn: str, case_id: str, expected: int) -> bool:
    try:
        return await total(dsn, case_id) == expected
    except (OSError, asyncpg.PostgresError):
        return False


@pytest.mark.parametrize("crash_at", ["before_db_commit", "after_db_commit"])
async def test_kill_9_mid_way_through_confirmations_then_replay_counts_each_once(
    crash_at: str, tally_env: dict[str, str], topics: Topics, infra: Any, new_id: Any, tmp_path: Path
) -> None:
    case_id = new_id("atena")
    emails = [f"{new_id('supporter')}@example.org" for _ in range(200)]
    pending = [signature(case_id, email, awaits_confirmation=True) for email in emails]
    confirmations = [_confirmation(case_id, email) for email in emails]
    env = {**tally_env, "CLAMEUR_TALLY_BATCH_MAX_RECORDS": "100"}
    applied_at_crash, counted_at_crash = await _crash(
        env, crash_at, tmp_path, infra, topics, case_id, [*pending, *confirmations]
    )
    if crash_at == "before_db_commit":
        assert applied_at_crash == 0 and counted_at_crash == 0
    else:
        assert 0 < applied_at_crash < 400  # mid-way: one batch committed, the rest not read yet

    # Once the 200 are confirmed and counted, replays of confirmations and signatures already
    # applied: they count nothing.
    replays = [*confirmations[:100], *pending[:50]]
    replayed = 400 - applied_at_crash + 150
    survivor_metrics = await _survive(env, tmp_path, infra, topics, case_id, 200, replays, replayed)
    # Proof the replays were read: the survivor applied every record the crash left and
    # the 150 again, found the 50 signatures stored, and confirmed only what the crashed
    # instance had not.
    assert metric(survivor_metrics, "clameur_tally_duplicates_total") >= 50
    assert metric(survivor_metrics, "clameur_tally_signatures_confirmed_total") == 200 - counted_at_crash
    found = await counters(infra.database_url, case_id)
    assert (found[("total", "")], found[("pending", "")], found[("action", "signature")]) == (200, 0, 200)
    await _no_drift(infra.database_url, [case_id])


async def _crash(
    env: dict[str, str], crash_at: str, tmp_path: Path, infra: Any, topics: Topics, case_id: str, records: Any
) -> tuple[int, int]:
    """Run a tally told to SIGKILL itself at ``crash_at`` over ``records``; once it died,
    the offsets it stored and the case's total it counted."""
    doomed = ServiceProcess("tally", {**env, "CLAMEUR_TALLY_CRASH_AT": crash_at}, tmp_path).start()
    try:
        await produce(infra.kafka, topics.signatures, records)
        exit_code = await asyncio.to_thread(doomed.wait_exit, 60)
    finally:
        doomed.kill()
    assert exit_code == -signal.SIGKILL, doomed.tail()
    return await stored_offsets(infra.database_url, topics.signatures), await total(
        infra.database_url, case_id
    )


async def _survive(
    env: dict[str, str],
    tmp_path: Path,
    infra: Any,
    topics: Topics,
    case_id: str,
    counted: int,
    replays: Any,
    replayed: int,
) -> str:
    """Restart tally after a crash: once it counted ``counted`` signatures of the case, produce
    ``replays`` and wait until it applied ``replayed`` records; returns its metrics then."""
    survivor = ServiceProcess("tally", env, tmp_path).start()
    try:
        await eventually(
            lambda: _total_is(infra, case_id, counted), within=30, what=f"{counted} counted after restart"
        )
        await produce(infra.kafka, topics.signatures, replays)
        await eventually(
            lambda: _applied_at_least(scrape(survivor.url), replayed),
            within=30,
            what=f"{replayed} records applied",
        )
        return await scrape(survivor.url)
    finally:
        survivor.stop()


def _confirmation(case_id: str, email: str) -> SignatureConfirmed:
    return SignatureConfirmed(case_id=case_id, supporter_key=supporter_key(email))
