"""``make rebuild``: replay every topic from offset 0 into empty databases, next to the live stack.

What it proves: the log alone rebuilds the same counts, and what was erased stays
erased (no contact comes back, nobody is emailed).  It runs against the running local
stack's Kafka and Postgres and touches neither the live database nor the live consumer
groups:

1. a new database on the same server, both schemas migrated;
2. tally and notify started on it, on free ports, in consumer groups of their own
   (``CLAMEUR_TALLY_GROUP_ID``, ``CLAMEUR_NOTIFY_GROUP_PREFIX``), so the live services
   keep all their partitions; tally with ``CLAMEUR_TALLY_PUBLISH=false``, so its outbox
   announces nothing again on the live topics (a milestone re-published would be mailed
   by the live notify);
3. notify with ``CLAMEUR_NOTIFY_SEND=false`` (it fans out and sends nothing) and, to be
   sure, its SMTP pointed at a sink of this process that mails nobody: the number it
   received is printed and must be 0;
4. once both have read every topic up to where it ended when the rebuild began, the
   counts per case are printed next to the live ones;
5. the services stop and the database is dropped (``--keep`` keeps it to look into).

Exit status: 0 when every case's counts agree and no email reached the sink, 1 otherwise.
"""

from __future__ import annotations

import asyncio
import functools
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

import asyncpg
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from clameur.database import migrate
from clameur.kafka import Kafka, client_kwargs, partitions_of
from clameur.topics import Topics
from devstack.databases import create_database, drop_database
from devstack.mailsink import SmtpSink, on_loopback
from devstack.processes import Managed, StackError, free_port, port_open, wait_for
from devstack.stack import SCHEMAS, Stack, http_ok

REBUILT_SERVICES = ("tally", "notify")

Ends = dict[tuple[str, int], int]
"""(topic, partition) → the offset after its last record when the rebuild began."""

CountsByCase = dict[str, dict[str, int]]
"""case id → ``{"total": n, "pending": n, ...}`` from ``tally.counters``."""


@dataclass(frozen=True)
class RebuildRun:
    """One rebuild's names: its database, groups and processes, all marked with ``stamp``."""

    stack: Stack
    stamp: str
    topic_prefix: str = ""
    """The topics' prefix (the live stack's is empty)."""

    @property
    def database(self) -> str:
        return f"clameur_rebuild_{self.stamp}"

    @property
    def tally_group(self) -> str:
        return f"rebuild-{self.stamp}-tally"

    @property
    def notify_group_prefix(self) -> str:
        return f"rebuild-{self.stamp}."

    def process(self, service: str) -> Managed:
        return Managed(f"rebuild-{service}", self.stack.profile.run_dir, self.stack.profile.log_dir)

    def service_env(self, database_url: str, smtp_port: int, ports: Mapping[str, int]) -> dict[str, str]:
        """The live stack's environment, pointed at the new database, groups, ports and sink."""
        return {
            **self.stack.service_env(),
            "CLAMEUR_DATABASE_URL": database_url,
            "CLAMEUR_TALLY_GROUP_ID": self.tally_group,
            "CLAMEUR_TALLY_PUBLISH": "false",
            "CLAMEUR_NOTIFY_GROUP_PREFIX": self.notify_group_prefix,
            "CLAMEUR_NOTIFY_SEND": "false",
            "CLAMEUR_SMTP_URL": f"smtp://127.0.0.1:{smtp_port}",
            **{f"CLAMEUR_{service.upper()}_PORT": str(port) for service, port in ports.items()},
        }


def rebuild(stack: Stack, *, keep: bool = False, timeout_s: float = 900.0) -> int:
    """Run one rebuild (module docstring); returns the exit status.  Raises StackError
    when the live stack is not up."""
    if not port_open(*_host_port(stack.kafka_bootstrap)):
        raise StackError(f"no Kafka answers on {stack.kafka_bootstrap}: run `make up` first")
    run = RebuildRun(
        stack,
        time.strftime("%Y%m%d%H%M%S") + uuid.uuid4().hex[:4],
        topic_prefix=stack.environ.get("CLAMEUR_TOPIC_PREFIX", ""),
    )
    ends = asyncio.run(end_offsets(stack.kafka_bootstrap, Topics(run.topic_prefix)))
    database_url = asyncio.run(create_database(stack.database_url, run.database))
    print(f"rebuild: database {run.database}, every topic from offset 0 (ends: {sum(ends.values())} records)")
    try:
        for schema in SCHEMAS:
            migrate(schema, database_url)
        with on_loopback(SmtpSink()) as sink:
            ports = {service: free_port() for service in REBUILT_SERVICES}
            try:
                _start(run, run.service_env(database_url, sink.port, ports), ports)
                asyncio.run(wait_caught_up(database_url, ends, run, timeout_s))
            finally:
                for service in REBUILT_SERVICES:
                    run.process(service).stop(timeout=40)
            live = asyncio.run(counts_by_case(stack.database_url))
            rebuilt = asyncio.run(counts_by_case(database_url))
            emailed = sink.count()
        return report(live, rebuilt, emailed)
    finally:
        if keep:
            print(f"rebuild: kept {database_url}")
        else:
            asyncio.run(drop_database(stack.database_url, run.database))


def _host_port(bootstrap: str) -> tuple[str, int]:
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    return host, int(port)


def _start(run: RebuildRun, env: Mapping[str, str], ports: Mapping[str, int]) -> None:
    from devstack.layout import ROOT

    for service in REBUILT_SERVICES:
        run.process(service).start([sys.executable, "-m", service], env=env, cwd=ROOT)
    for service in REBUILT_SERVICES:
        url = f"http://127.0.0.1:{ports[service]}/readyz"
        wait_for(
            f"the rebuild's {service} ({url})",
            functools.partial(http_ok, url),
            timeout=120,
            log=run.process(service).log,
        )


async def end_offsets(bootstrap: Kafka, topics: Topics) -> Ends:
    """Where every topic (DLQs aside) ends now: what the rebuild must have read."""
    names = [spec.name for spec in topics.specs() if not spec.name.endswith(".dlq")]
    partitions = [
        TopicPartition(name, partition)
        for name in names
        for partition in await partitions_of(bootstrap, name)
    ]
    consumer = AIOKafkaConsumer(**client_kwargs(bootstrap), enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
    return {(tp.topic, tp.partition): offset for tp, offset in ends.items()}


async def stored_offsets(database_url: str, run: RebuildRun) -> Ends:
    """What the rebuild's tally and notify have applied, by their offsets in the database.

    Notify keeps one row per group: the furthest of its groups per partition counts.
    """
    connection = await asyncpg.connect(database_url)
    try:
        tally = await connection.fetch("SELECT topic, partition, next_offset FROM tally.offsets")
        notify = await connection.fetch(
            "SELECT topic, partition, max(next_offset) AS next_offset FROM notify.consumer_offsets "
            "WHERE group_id LIKE $1 GROUP BY topic, partition",
            run.notify_group_prefix + "%",
        )
    finally:
        await connection.close()
    stored: Ends = {}
    for row in [*tally, *notify]:
        key = (row["topic"], row["partition"])
        stored[key] = max(stored.get(key, 0), row["next_offset"])
    return stored


async def wait_caught_up(
    database_url: str, ends: Ends, run: RebuildRun, timeout_s: float, *, settle_s: float = 3.0
) -> None:
    """Return once every partition a rebuilt service stores offsets for has reached its
    end, tally has reached the end of signatures.v2, and nothing moved for ``settle_s``;
    raises StackError at the timeout.

    A partition nobody stores offsets for is one neither service reads (or an empty one);
    the settling lets a consumer that has not stored its first batch yet show up.
    """
    signatures = Topics(prefix=run.topic_prefix).signatures
    deadline = time.monotonic() + timeout_s
    previous: Ends | None = None
    settled_since = time.monotonic()
    while True:
        stored = await stored_offsets(database_url, run)
        if stored != previous:
            previous, settled_since = stored, time.monotonic()
        behind = {
            key: end
            for key, end in ends.items()
            if end > 0 and (key in stored or key[0] == signatures) and stored.get(key, 0) < end
        }
        if not behind and time.monotonic() - settled_since >= settle_s:
            print("rebuild: caught up")
            return
        if time.monotonic() > deadline:
            raise StackError(f"the rebuild did not catch up in {timeout_s:.0f} s; behind: {sorted(behind)}")
        await asyncio.sleep(0.5)


async def counts_by_case(database_url: str) -> CountsByCase:
    """Every case's counters that are not per country or action: total (and pending).

    A counter at 0 is no counter: the live tally keeps the row of a pending signature
    confirmed later ("pending 0"), which a rebuild reading both in one batch never writes.
    """
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(
            "SELECT case_id, dimension, key, count FROM tally.counters "
            "WHERE dimension NOT IN ('country', 'action') AND count <> 0 ORDER BY case_id"
        )
    finally:
        await connection.close()
    counts: CountsByCase = {}
    for row in rows:
        name = row["dimension"] if not row["key"] else f"{row['dimension']}:{row['key']}"
        counts.setdefault(row["case_id"], {})[name] = row["count"]
    return counts


def report(live: CountsByCase, rebuilt: CountsByCase, emailed: int) -> int:
    """Print the counts side by side; 0 when they agree and nobody was emailed."""
    print(f"\n  {'case':<40}{'live':>24}{'rebuilt':>24}")
    differ = []
    for case_id in sorted(set(live) | set(rebuilt)):
        mine, theirs = live.get(case_id, {}), rebuilt.get(case_id, {})
        same = mine == theirs
        print(f"  {case_id:<40}{_counts(mine):>24}{_counts(theirs):>24}{'' if same else '   DIFFERS'}")
        if not same:
            differ.append(case_id)
    print(f"\n  emails the rebuild tried to send: {emailed} (must be 0)")
    if differ:
        print(
            f"\nrebuild: {len(differ)} case(s) differ. A live stack taking signatures moves on while "
            "the rebuild reads: run it again when quiet; a difference that stays is a bug (make reconcile)."
        )
    return 0 if not differ and emailed == 0 else 1


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{name} {value}" for name, value in sorted(counts.items())) or "-"
