"""``make rebuild``'s pieces: its own groups and database, a sender and a relay that stay
quiet, where the topics end, when it has caught up, and the verdict it prints."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

from clameur.database import migrate
from clameur.events import SignatureAccepted
from clameur.kafka import create_producer
from clameur.topics import Topics
from devstack.databases import create_database, drop_database
from devstack.layout import TEST
from devstack.processes import StackError
from devstack.rebuild import RebuildRun, counts_by_case, end_offsets, report, wait_caught_up
from devstack.stack import Stack
from tests.conftest import env_for
from tests.support import ROOT


def _run(prefix: str = "") -> RebuildRun:
    return RebuildRun(Stack(TEST, {}), f"t{uuid.uuid4().hex[:8]}", topic_prefix=prefix)


def test_the_rebuild_runs_apart_from_the_live_services_and_sends_nothing() -> None:
    run = _run()
    env = run.service_env(
        "postgresql://clameur@127.0.0.1:15433/rebuilt", 2525, {"tally": 9001, "notify": 9002}
    )
    assert env["CLAMEUR_DATABASE_URL"].endswith("/rebuilt")
    assert env["CLAMEUR_TALLY_GROUP_ID"] not in {"tally", ""}  # never the live group
    assert env["CLAMEUR_NOTIFY_GROUP_PREFIX"] != env.get("CLAMEUR_TOPIC_PREFIX", "")
    assert env["CLAMEUR_NOTIFY_SEND"] == "false"
    assert env["CLAMEUR_TALLY_PUBLISH"] == "false"
    assert env["CLAMEUR_SMTP_URL"] == "smtp://127.0.0.1:2525"  # the rebuild's own sink
    assert (env["CLAMEUR_TALLY_PORT"], env["CLAMEUR_NOTIFY_PORT"]) == ("9001", "9002")
    assert run.database.startswith("clameur_rebuild_")


def test_the_services_read_the_rebuild_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from notify.settings import NotifySettings
    from tally.settings import TallySettings

    env = _run().service_env("postgresql://clameur@127.0.0.1:15433/rebuilt", 2525, {})
    for name, value in env.items():
        if name.startswith("CLAMEUR_"):
            monkeypatch.setenv(name, value)
    tally, notify = TallySettings(), NotifySettings()
    assert tally.tally_publish is False
    assert tally.tally_group_id == env["CLAMEUR_TALLY_GROUP_ID"]
    assert notify.notify_send is False
    assert notify.notify_group_prefix == env["CLAMEUR_NOTIFY_GROUP_PREFIX"]


async def test_end_offsets_say_where_each_topic_ends(infra: Any, topics: Topics) -> None:
    producer = create_producer(infra.kafka)
    await producer.start()
    try:
        for _ in range(3):
            await producer.send_and_wait(topics.signatures, value=b"{}", key=b"case-1", partition=0)
        await producer.send_and_wait(topics.case_events, value=b"{}", partition=1)
    finally:
        await producer.stop()
    ends = await end_offsets(infra.kafka, topics)
    assert ends[(topics.signatures, 0)] == 3
    assert ends[(topics.case_events, 1)] == 1
    assert sum(end for (topic, _), end in ends.items() if topic == topics.signatures) == 3
    assert not any(topic.endswith(".dlq") for topic, _ in ends)  # nobody replays the DLQs


@pytest.fixture
def rebuilt_database(infra: Any) -> Iterator[str]:
    """An empty database with both schemas, as the rebuild makes (migrate runs its own loop)."""
    name = f"clameur_rebuild_test_{uuid.uuid4().hex[:8]}"
    dsn = asyncio.run(create_database(infra.server_dsn, name))
    for schema in ("tally", "notify"):
        migrate(schema, dsn)
    try:
        yield dsn
    finally:
        asyncio.run(drop_database(infra.server_dsn, name))


async def test_caught_up_waits_for_tally_and_for_what_notify_reads(rebuilt_database: str) -> None:
    run = _run("p.")
    ends = {("p.signatures.v2", 0): 5, ("p.case-events.v1", 0): 2, ("p.contacts.v1", 0): 4}
    connection = await asyncpg.connect(rebuilt_database)
    try:
        # Tally is 2 behind on signatures: not caught up, and it says where.
        await connection.execute(
            "INSERT INTO tally.offsets (topic, partition, next_offset) VALUES ('p.signatures.v2', 0, 3)"
        )
        await connection.execute(
            "INSERT INTO notify.consumer_offsets VALUES ($1, 'p.case-events.v1', 0, 2)",
            run.notify_group_prefix + "notify-deliveries",
        )
        with pytest.raises(StackError, match="signatures"):
            await wait_caught_up(rebuilt_database, ends, run, timeout_s=1.0, settle_s=0.1)
        # The live notify's offsets for contacts.v1 are not the rebuild's: ignored.
        await connection.execute(
            "INSERT INTO notify.consumer_offsets VALUES ('notify-contacts', 'p.contacts.v1', 0, 0)"
        )
        await connection.execute("UPDATE tally.offsets SET next_offset = 5")
        await wait_caught_up(rebuilt_database, ends, run, timeout_s=5.0, settle_s=0.1)
        # Once the rebuild's notify reads contacts.v1, it must reach its end too.
        await connection.execute(
            "INSERT INTO notify.consumer_offsets VALUES ($1, 'p.contacts.v1', 0, 1)",
            run.notify_group_prefix + "notify-contacts",
        )
        with pytest.raises(StackError, match="contacts"):
            await wait_caught_up(rebuilt_database, ends, run, timeout_s=1.0, settle_s=0.1)
    finally:
        await connection.close()


async def test_counts_by_case_reads_totals_and_pending_and_a_zero_as_none(rebuilt_database: str) -> None:
    connection = await asyncpg.connect(rebuilt_database)
    try:
        await connection.executemany(
            "INSERT INTO tally.counters (case_id, dimension, key, count) VALUES ($1, $2, $3, $4)",
            [
                ("nawal-1", "total", "", 41),
                ("nawal-1", "country", "MA", 40),
                ("atena-1", "total", "", 2),
                ("atena-1", "pending", "", 0),  # pending, then confirmed: as if never written
            ],
        )
    finally:
        await connection.close()
    assert await counts_by_case(rebuilt_database) == {"atena-1": {"total": 2}, "nawal-1": {"total": 41}}


def test_the_verdict(capsys: pytest.CaptureFixture[str]) -> None:
    same = {"nawal-1": {"total": 41}}
    assert report(same, dict(same), emailed=0) == 0
    assert report(same, {"nawal-1": {"total": 40}}, emailed=0) == 1
    assert "DIFFERS" in capsys.readouterr().out
    assert report(same, dict(same), emailed=1) == 1  # a rebuild must email nobody


def test_a_whole_rebuild_counts_from_offset_0_agrees_and_leaves_nothing_behind(
    infra: Any, topics: Topics, new_id: Any, rebuilt_database: str
) -> None:
    """``python -m devstack rebuild`` end to end on this test's topics: tally and notify
    start on a new database, read from offset 0, stop; the counts agree with the live
    ones, nobody is emailed, and the database is dropped.  (``rebuilt_database`` stands
    in for the live database here, holding the counts a live tally would have.)"""
    case_id = new_id("nawal")
    asyncio.run(_produce_signatures(infra.kafka, topics, case_id, 3))
    asyncio.run(_execute(rebuilt_database, "INSERT INTO tally.counters VALUES ($1, 'total', '', 3)", case_id))
    env = {**env_for(infra, topics), "CLAMEUR_DATABASE_URL": rebuilt_database, "CLAMEUR_LOG_JSON": "true"}
    before = asyncio.run(_databases(infra.server_dsn))
    finished = _rebuild(env)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "rebuild: caught up" in finished.stdout  # it did start both and wait for them
    (line,) = [line for line in finished.stdout.splitlines() if case_id in line]
    assert line.split()[1:] == ["total", "3", "total", "3"]  # live, then rebuilt from offset 0
    assert "emails the rebuild tried to send: 0" in finished.stdout
    assert asyncio.run(_databases(infra.server_dsn)) == before  # its database is gone

    # Live counts that the log does not give are a failed rebuild.
    asyncio.run(_execute(rebuilt_database, "UPDATE tally.counters SET count = 4 WHERE case_id = $1", case_id))
    finished = _rebuild(env)
    assert finished.returncode == 1
    assert "DIFFERS" in finished.stdout


def _rebuild(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "devstack", "rebuild", "--profile", "test"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )


async def _produce_signatures(bootstrap: str, topics: Topics, case_id: str, count: int) -> None:
    producer = create_producer(bootstrap)
    await producer.start()
    try:
        for n in range(count):
            signature = SignatureAccepted(
                case_id=case_id,
                country="MA",
                locale="fr",
                supporter_key=f"{n:064x}",
                email_domain="example.org",
            )
            await producer.send_and_wait(topics.signatures, value=signature.to_json(), key=case_id.encode())
    finally:
        await producer.stop()


async def _execute(dsn: str, statement: str, *args: Any) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(statement, *args)
    finally:
        await connection.close()


async def _databases(dsn: str) -> set[str]:
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT datname FROM pg_database WHERE datname LIKE 'clameur_rebuild_2%'"
        )
    finally:
        await connection.close()
    return {row["datname"] for row in rows}
