"""Retention: a closed case's supporters are forgotten at its time, not before; a dry run reports first."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

import pytest
from notify.metrics import NotifyMetrics
from notify.retention import RetentionJob
from prometheus_client import CollectorRegistry, generate_latest

from clameur.events import CaseState, CaseStatus, utc_now
from clameur.topics import Topics
from tests.conftest import Infra
from tests.notify.conftest import RunningNotify, produce
from tests.notify.forgetting import rows_of, running_eraser, seed_supporter
from tests.support import ROOT, eventually, metric, read_topic


def case_state(
    case_id: str, status: CaseStatus, at: datetime, *, version: int = 2, days: int = 180
) -> CaseState:
    return CaseState(
        case_id=case_id,
        version=version,
        title={"fr": "Libérez-la"},
        status=status,
        goal=1000,
        locales=("fr",),
        default_locale="fr",
        retention_days=days,
        updated_at=at,
    )


RecordClocks = Callable[..., Awaitable[None]]


@pytest.fixture
def record_clocks(notify: RunningNotify, infra: Infra, topics: Topics) -> RecordClocks:
    """``await record_clocks(*states)``: the states on the cases topic, then notify's retention
    clocks recorded at each case's latest version."""

    async def record(*states: CaseState) -> None:
        await produce(infra.kafka, topics.cases, states, key=lambda e: getattr(e, "case_id"))  # noqa: B009
        wanted = {s.case_id for s in states}

        async def recorded() -> bool:
            rows = await notify.database.fetch(
                "SELECT case_id, version FROM notify.case_retention WHERE case_id = ANY($1::text[])",
                list(wanted),
            )
            latest = {s.case_id: max(x.version for x in states if x.case_id == s.case_id) for s in states}
            return {r["case_id"]: r["version"] for r in rows} == latest

        await eventually(recorded, within=30, what="the cases' retention clocks recorded")

    return record


async def test_retention_forgets_a_closed_cases_supporters_at_its_time_and_not_before(
    notify: RunningNotify,
    record_clocks: RecordClocks,
    infra: Infra,
    topics: Topics,
    new_id: Callable[..., str],
) -> None:
    closed, still_open = new_id("closed"), new_id("open")
    ended = utc_now() - timedelta(days=1)
    await record_clocks(
        case_state(closed, CaseStatus.OPEN, ended - timedelta(days=9), version=1, days=30),
        case_state(closed, CaseStatus.CLOSED, ended, days=30),
        case_state(still_open, CaseStatus.OPEN, ended),
    )
    only_closed = await seed_supporter(notify.database, f"a.{closed}@example.org", "A", [closed])
    both = await seed_supporter(notify.database, f"b.{closed}@example.org", "B", [closed, still_open])
    only_open = await seed_supporter(notify.database, f"c.{closed}@example.org", "C", [still_open])
    due_at = ended + timedelta(days=30)
    registry = CollectorRegistry()
    metrics = NotifyMetrics(registry)

    async with running_eraser(infra.kafka, infra.database_url, topics, metrics) as eraser:
        before = RetentionJob(eraser.pool, eraser, metrics, None, clock=lambda: due_at - timedelta(seconds=1))
        # (The session's database is shared: look at this test's supporters only.)
        mine = {only_closed, both, only_open}
        assert [d for d in (await before.run_once()).due if d.supporter_key in mine] == []  # not before
        on_time = RetentionJob(eraser.pool, eraser, metrics, None, clock=lambda: due_at)
        dry = await on_time.run_once(dry_run=True)
        assert [d.supporter_key for d in dry.due if d.supporter_key in mine] == [only_closed]
        assert dry.as_json()["by_case"][closed] == 1 and dry.forgotten == 0
        assert (await rows_of(notify.database, only_closed))["contacts"] == 1  # the dry run changed nothing
        done = await on_time.run_once(chunk=1)  # in chunks of one: every chunk is taken

    assert [d.supporter_key for d in done.due if d.supporter_key in mine] == [only_closed]
    assert await rows_of(notify.database, only_closed) == dict.fromkeys(
        ("contacts", "subscriptions", "deliveries", "unsubscriptions"), 0
    )
    for kept in (both, only_open):  # they still follow an open case
        assert (await rows_of(notify.database, kept))["contacts"] == 1
    tombstones = [r for r in await read_topic(infra.kafka, topics.contacts, at_least=1) if r.value is None]
    assert only_closed.encode() in {r.key for r in tombstones}
    assert (
        metric(
            generate_latest(registry).decode(), "clameur_notify_retention_erased_total", reason="case_ended"
        )
        == done.forgotten
    )


async def test_the_global_override_and_a_reopened_case_move_the_clock(
    notify: RunningNotify, record_clocks: RecordClocks, new_id: Callable[..., str]
) -> None:
    won, reopened = new_id("won"), new_id("reopened")
    ended = utc_now() - timedelta(days=2)
    await record_clocks(
        case_state(won, CaseStatus.WON, ended),
        case_state(reopened, CaseStatus.CLOSED, ended, version=2),
        case_state(reopened, CaseStatus.OPEN, ended + timedelta(hours=1), version=3),
        case_state(reopened, CaseStatus.CLOSED, ended, version=1),  # a stale copy: ignored
    )
    winner = await seed_supporter(notify.database, f"w.{won}@example.org", "W", [won])
    await seed_supporter(notify.database, f"r.{won}@example.org", "R", [reopened])
    job = RetentionJob(notify.database, None, None, override_days=1)
    assert [
        d.supporter_key for d in (await job.run_once(dry_run=True)).due if d.case_ids in ((won,), (reopened,))
    ] == [winner]
    assert [
        d for d in (await RetentionJob(notify.database, None, None, None).run_once()).due if won in d.case_ids
    ] == []


async def test_the_dry_run_command_reports_who_would_be_forgotten_and_forgets_no_one(
    notify: RunningNotify,
    record_clocks: RecordClocks,
    new_id: Callable[..., str],
    service_env: dict[str, str],
) -> None:
    old = new_id("old")
    await record_clocks(case_state(old, CaseStatus.CLOSED, utc_now() - timedelta(days=200)))
    key = await seed_supporter(notify.database, f"d.{old}@example.org", "D", [old])
    command = [sys.executable, "-m", "notify.retention", "--dry-run"]
    ran = await asyncio.to_thread(
        subprocess.run, command, env=service_env, cwd=ROOT, capture_output=True, timeout=60, check=False
    )
    assert ran.returncode == 0, ran.stderr.decode()
    report = json.loads(ran.stdout)
    assert report["dry_run"] is True and report["forgotten"] == 0
    assert report["by_case"][old] == 1
    assert (await rows_of(notify.database, key))["contacts"] == 1


async def test_retention_forgets_contacts_of_signatures_never_confirmed_by_the_expiry(
    notify: RunningNotify, infra: Infra, topics: Topics, new_id: Callable[..., str]
) -> None:
    case_id, other = new_id("nawal"), new_id("atena")
    long_ago = utc_now() - timedelta(days=2)
    expiry_s = timedelta(days=1).total_seconds()
    seed = notify.database
    expired = await seed_supporter(
        seed, f"x.{case_id}@example.org", "X", [case_id, other], confirmed=False, signed_at=long_ago
    )
    recent = await seed_supporter(seed, f"y.{case_id}@example.org", "Y", [case_id], confirmed=False)
    half = await seed_supporter(
        seed, f"z.{case_id}@example.org", "Z", [case_id], confirmed=False, signed_at=long_ago
    )
    # Z confirmed another case: she keeps her contact for its news.
    await seed.execute(
        "INSERT INTO notify.subscriptions (case_id, supporter_key, signed_at, confirmed_at)"
        " VALUES ($1, $2, now(), now())",
        other,
        half,
    )
    mine = {expired, recent, half}
    registry = CollectorRegistry()
    metrics = NotifyMetrics(registry)
    async with running_eraser(infra.kafka, infra.database_url, topics, metrics) as eraser:
        job = RetentionJob(eraser.pool, eraser, metrics, None, confirmation_expiry_s=expiry_s)
        dry = await job.run_once(dry_run=True)
        assert {s.supporter_key for s in dry.unconfirmed} & mine == {expired}
        assert dry.as_json()["unconfirmed_supporters"] >= 1
        assert (await rows_of(seed, expired))["contacts"] == 1  # the dry run changed nothing

        done = await job.run_once()
    assert {s.supporter_key for s in done.unconfirmed} & mine == {expired}
    assert await rows_of(seed, expired) == dict.fromkeys(
        ("contacts", "subscriptions", "deliveries", "unsubscriptions"), 0
    )
    assert (await rows_of(seed, recent))["contacts"] == 1
    assert (await rows_of(seed, half))["contacts"] == 1
    contacts = [r for r in await read_topic(infra.kafka, topics.contacts, at_least=1) if r.value is None]
    assert expired.encode() in {r.key for r in contacts}
    scraped = generate_latest(registry).decode()
    assert metric(scraped, "clameur_notify_retention_erased_total", reason="unconfirmed") >= 1
    assert metric(scraped, "clameur_notify_erasures_total", reason="expired") >= 1
