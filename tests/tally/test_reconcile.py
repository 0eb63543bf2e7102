"""Trust, but verify: recount from the signatures, and rebuild from signatures.v2."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import uuid4

import asyncpg
import pytest
from tally.counter_store import OFFSETS
from tally.counting import CounterKey
from tally.reconcile import check_counters, expected_counters, rebuild_counters
from tally.settings import TallySettings

from clameur.events import InvalidationFilter, SignatureConfirmed, SignaturesRejected, SupporterErased
from clameur.topics import Topics
from tests.support import ROOT, eventually
from tests.tally.helpers import counters, many, produce, signature, supporter_key, total
from tests.tally.invalidation_support import requested, revoked


def test_expected_counters_fold_the_groups() -> None:
    assert expected_counters(
        [
            ("a", "counted", "FR", "signature", 2),
            ("a", "counted", "MA", "signature", 1),
            ("a", "counted", "FR", "letter", 4),
            ("a", "pending", "FR", "signature", 3),
        ]
    ) == {
        CounterKey("a", "pending", ""): 3,
        CounterKey("a", "total", ""): 7,
        CounterKey("a", "country", "FR"): 6,
        CounterKey("a", "country", "MA"): 1,
        CounterKey("a", "action", "signature"): 3,
        CounterKey("a", "action", "letter"): 4,
    }


async def test_drift_is_reported_then_fixed_and_a_rebuild_agrees(
    tally: Any,
    tally_settings: TallySettings,
    tally_env: dict[str, str],
    topics: Topics,
    infra: Any,
    pool: asyncpg.Pool[Any],
    new_id: Any,
) -> None:
    case_id = new_id("nawal")
    events = many(case_id, 60) + many(case_id, 10)  # 10 replays
    async with tally(tally_settings):
        await produce(infra.kafka, topics.signatures, [*events, b"poison"])
        await eventually(lambda: _total_is(infra, case_id, 60), within=20, what="60 counted")
        await produce(infra.kafka, topics.signatures, [signature(case_id, "late@example.org")])
        await eventually(lambda: _total_is(infra, case_id, 61), within=20, what="61 counted")

    assert await check_counters(pool, cases=[case_id]) == []
    rebuilt = await rebuild_counters(pool, infra.kafka, topics.signatures, cases=[case_id])
    assert (rebuilt.drifts, rebuilt.records, rebuilt.poisoned, rebuilt.counted) == ([], 72, 1, 61)

    await pool.execute(
        "UPDATE tally.counters SET count = count + 5 "
        "WHERE case_id = $1 AND dimension = 'country' AND key = 'FR'",
        case_id,
    )
    drifted = await check_counters(pool, cases=[case_id])
    assert [(d.counter.key, d.stored - d.expected) for d in drifted] == [("FR", 5)]
    assert (await rebuild_counters(pool, infra.kafka, topics.signatures, cases=[case_id])).drifts == drifted

    command = [sys.executable, "-m", "tally.reconcile", "--case", case_id]
    report = await _run(command, tally_env)
    assert report.returncode == 1, report.stderr
    assert f"drift: case {case_id} country=FR: stored" in report.stdout
    fixed = await _run([*command, "--fix"], tally_env)
    assert fixed.returncode == 0, fixed.stderr
    assert await check_counters(pool, cases=[case_id]) == []
    rebuild = await _run([*command, "--rebuild"], tally_env)
    assert rebuild.returncode == 0, rebuild.stdout + rebuild.stderr
    assert "61 distinct signatures, 0 counters drift" in rebuild.stdout


async def _run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )


RunLog = Callable[..., Awaitable[None]]


@pytest.fixture
def run_log(
    tally: Any, tally_settings: TallySettings, topics: Topics, infra: Any, pool: asyncpg.Pool[Any]
) -> RunLog:
    """Produce a log to signatures.v2 and run the tally until ``stored`` offsets are stored."""

    async def run(log: list[Any], stored: int) -> None:
        async with tally(tally_settings):
            await produce(infra.kafka, topics.signatures, log)
            await eventually(
                lambda: _stored_at_least(pool, topics.signatures, stored), within=20, what="the log applied"
            )

    return run


async def _stored_at_least(pool: asyncpg.Pool[Any], topic: str, expected: int) -> bool:
    return sum((await OFFSETS.read(pool, topic)).values()) >= expected


async def _total_is(infra: Any, case_id: str, expected: int) -> bool:
    return await total(infra.database_url, case_id) == expected


async def test_reconcile_and_a_rebuild_agree_after_confirmations_rejections_and_erasure(
    run_log: RunLog, topics: Topics, infra: Any, pool: asyncpg.Pool[Any], new_id: Any
) -> None:
    case_id = new_id("atena")
    emails = [f"{new_id('s')}@example.org" for _ in range(30)]
    pending = [signature(case_id, email, country="IR", awaits_confirmation=True) for email in emails]
    log: list[Any] = [
        *pending,
        *many(case_id, 10),  # counted at once
        *(SignatureConfirmed(case_id=case_id, supporter_key=supporter_key(e)) for e in emails[:20]),
        *(SignaturesRejected(case_id=case_id, supporter_key=supporter_key(e)) for e in emails[20:25]),
        SupporterErased(erasure_id=uuid4(), supporter_key=supporter_key(emails[0])),
        SignatureConfirmed(case_id=case_id, supporter_key=supporter_key(emails[1])),  # again
    ]
    await run_log(log, stored=len(log) + 2)  # the erasure: 3 partitions
    assert (await counters(infra.database_url, case_id))[("total", "")] == 30
    assert (await counters(infra.database_url, case_id))[("pending", "")] == 5
    assert await check_counters(pool, cases=[case_id]) == []
    rebuilt = await rebuild_counters(pool, infra.kafka, topics.signatures, cases=[case_id])
    assert rebuilt.records == len(log) + 2  # proof the whole log, erasures included, was replayed
    assert (rebuilt.drifts, rebuilt.counted) == ([], 30)


async def test_one_fold_agrees_after_confirmations_erasure_overlapping_invalidations_and_a_restore(
    run_log: RunLog, topics: Topics, infra: Any, pool: asyncpg.Pool[Any], new_id: Any
) -> None:
    """Confirmations, a rejection, an erasure of a supporter an invalidation holds, two
    invalidations over the same domain and the first revoked: the live counts, the recount
    and the rebuild's one fold (InMemoryTally with its InMemoryInvalidations) agree."""
    case_id = new_id("atena")
    bots = [f"{new_id('bot')}@bot-farm.example" for _ in range(12)]
    first = requested(case_id, InvalidationFilter(email_domains=("bot-farm.example",)))
    second = requested(case_id, InvalidationFilter(email_domains=("bot-farm.example",)))
    log: list[Any] = [
        *(signature(case_id, email, country="IR", awaits_confirmation=True) for email in bots),
        *many(case_id, 10),  # counted at once, example.org
        *(SignatureConfirmed(case_id=case_id, supporter_key=supporter_key(e)) for e in bots[:10]),
        first,  # takes the 10 confirmed bots
        SupporterErased(erasure_id=uuid4(), supporter_key=supporter_key(bots[0])),  # its domain goes
        SignatureConfirmed(case_id=case_id, supporter_key=supporter_key(bots[10])),  # counted after `first`
        second,  # takes bots[10] only: the others are held by `first`
        revoked(first),  # bots[1:10] pass to `second`; bots[0], no domain left, counts again
        SignaturesRejected(case_id=case_id, supporter_key=supporter_key(bots[11])),
    ]
    await run_log(log, stored=len(log) + 2)  # the erasure: 3 partitions
    held = await pool.fetch(
        "SELECT invalidation_id, count(*) AS n FROM tally.signatures WHERE case_id = $1 "
        "AND invalidation_id IS NOT NULL GROUP BY invalidation_id",
        case_id,
    )
    assert {row["invalidation_id"]: row["n"] for row in held} == {second.invalidation_id: 10}
    live = await counters(infra.database_url, case_id)
    assert (live[("total", "")], live[("country", "IR")], live.get(("pending", ""), 0)) == (11, 1, 0)
    assert await check_counters(pool, cases=[case_id]) == []
    rebuilt = await rebuild_counters(pool, infra.kafka, topics.signatures, cases=[case_id])
    assert rebuilt.records == len(log) + 2  # proof the whole log, invalidations included, was replayed
    assert (rebuilt.drifts, rebuilt.counted) == ([], 21)
