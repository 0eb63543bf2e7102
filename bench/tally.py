"""``make bench-tally``: how fast tally drains a backlog into exact counters, against the naive design.

    python -m bench.tally [--events 1000000] [--naive-events 20000]

1. The run's own topics and its own database (tally's schema migrated).
2. Tally started once on the empty topic to create the run's cases through its admin
   API (a hot case with milestones and 19 others), then stopped.
3. ``--events`` SignatureAccepted records put on the signatures topic before tally runs
   again: 10% repeats of an earlier (case, supporter, action), 80% on the hot case, 30
   countries (:class:`bench.synthetic.TallyLoad`).
4. Tally started again (``python -m tally``, its default batch settings unless
   ``--batch-records``/``--batch-wait`` say otherwise); the bench polls the database until
   the total counters equal the number of distinct (case, supporter_key, action) records,
   then checks every case's total, per-country and per-action counters and the stored
   signatures (exit 1 on any difference).  Drain rate: records / (exact - first commit).
5. The naive design on the first ``--naive-events`` records, in a schema of the same
   database: one transaction per signature (INSERT the signature, then UPDATE the
   counter row), one connection, the same server: its rate, and the ratio.
6. With ``--baseline-rev REV`` (e.g. 46d361b, tally before confirmation and schema 2):
   that revision checked out in a git worktree under .cache/bench/ with its own
   ``uv sync --frozen``, its own database (its own migrations) and topic, fed the same
   records in schema 1, drained the same way in the same run: both rates and their
   ratio (issue 14's cost of protection: at least 0.9).

    python -m bench.tally --baseline-rev 46d361b
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
from aiokafka.admin import NewTopic
from tally.counting import decode_countable
from tally.settings import TallySettings

from bench.common import (
    ROOT,
    BenchError,
    Child,
    Row,
    Samples,
    count,
    free_port,
    histogram_quantile,
    machine_facts,
    millis,
    per_second,
    report,
    say,
    scrape,
    total,
)
from bench.infra import (
    BenchRun,
    add_run_arguments,
    create_database,
    drop_database,
    load_topic,
    service_env,
)
from bench.synthetic import TallyLoad
from clameur.kafka import kafka_admin
from clameur.settings import ClameurSettings

GOAL_RATE = 50_000.0
GOAL_BASELINE_RATIO = 0.9
_PERSONAL = ("first_name", "last_name", "postal_code", "email")
GOAL_RATIO = 20.0
HOT_MILESTONES = [10_000, 50_000, 100_000, 250_000, 500_000]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.tally", description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="records on the topic")
    parser.add_argument("--naive-events", type=int, default=20_000, help="records for the naive design")
    parser.add_argument("--partitions", type=int, default=6, help="partitions of the signatures topic")
    parser.add_argument("--batch-records", type=int, help="CLAMEUR_TALLY_BATCH_MAX_RECORDS (tally's default)")
    parser.add_argument("--batch-wait", type=float, help="CLAMEUR_TALLY_BATCH_MAX_WAIT_S (tally's default)")
    parser.add_argument(
        "--batches-in-flight", type=int, help="CLAMEUR_TALLY_BATCHES_IN_FLIGHT (tally's default)"
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="give up draining after this long")
    parser.add_argument(
        "--baseline-rev", help="also drain the same records with tally at this git revision (schema 1)"
    )
    add_run_arguments(parser)
    return parser.parse_args(argv)


def as_schema(record: bytes, schema: int) -> bytes:
    """The record as ``SignatureAccepted`` schema 2 (no personal data) or schema 1 (with names).

    The synthetic load writes one of them; each tally reads the schema of its revision.
    Outside the timed drain (the records are converted while they are loaded).
    """
    fields = orjson.loads(record)
    if fields.get("schema") == schema:
        return record
    if schema == 2:
        for name in _PERSONAL:
            fields.pop(name, None)
        fields.get("source", {}).pop("referrer", None)
        fields["email_domain"] = "bench.invalid"
    else:
        fields.pop("email_domain", None)
        fields.pop("awaits_confirmation", None)
        fields.update(first_name="Camille", last_name="Durand")
    fields["schema"] = schema
    return orjson.dumps(fields)


@dataclass(frozen=True)
class Baseline:
    """Tally at an earlier revision: a git worktree with its own virtualenv."""

    rev: str
    folder: Path

    @property
    def python(self) -> list[str]:
        # -P: the bench starts children in this checkout, whose code must not shadow the baseline's.
        return [str(self.folder / ".venv" / "bin" / "python"), "-P"]

    @classmethod
    def prepare(cls, rev: str) -> Baseline:
        """Check ``rev`` out under .cache/bench/ (once) and sync its locked virtualenv."""
        folder = ROOT / ".cache" / "bench" / f"tally-{rev}"
        if not folder.exists():
            say(f"baseline: git worktree of {rev} in {folder}")
            subprocess.run(["git", "worktree", "add", "--detach", str(folder), rev], cwd=ROOT, check=True)
        uv = shutil.which("uv") or str(ROOT / ".cache" / "tools" / "bin" / "uv")
        if not Path(uv).exists():
            uv = "/work/main/.cache/tools/bin/uv"
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT")}
        subprocess.run([uv, "sync", "--frozen", "--quiet"], cwd=folder, check=True, env=env)
        return cls(rev, folder)

    def migrate(self, dsn: str) -> None:
        """Its own migrations of tally's schema, in ``dsn``."""
        code = "import sys; from clameur.database import migrate; migrate('tally', sys.argv[1])"
        subprocess.run([*self.python, "-c", code, dsn], cwd=self.folder, check=True)


def admin_token() -> str:
    return ClameurSettings().admin_token.get_secret_value()


def create_cases(base: str, load: TallyLoad) -> None:
    """The run's cases through tally's admin API (so tally knows them: milestones fire)."""
    headers = {"Authorization": f"Bearer {admin_token()}"}
    with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
        for case_id in load.cases:
            response = client.post(
                "/v1/admin/cases",
                json={
                    "id": case_id,
                    "title": {"fr": f"Cas {case_id}", "en": f"Case {case_id}"},
                    "goal": 10_000_000,
                    "milestones": HOT_MILESTONES if case_id == load.hot_case else [1_000, 10_000],
                    "actions": ["signature", "letter", "postcard"],
                    "default_locale": "fr",
                },
            )
            if response.status_code != 201:
                raise BenchError(f"creating case {case_id}: {response.status_code} {response.text}")
    say(f"{len(load.cases)} cases created through tally's admin API")


def start_tally(
    run: BenchRun, env: dict[str, str], port: int, python: list[str] | None = None, name: str = "tally"
) -> tuple[Child, str]:
    child = run.start(name, [*(python or [sys.executable]), "-m", "tally"], env)
    base = f"http://127.0.0.1:{port}"
    return child, base


@dataclass(frozen=True)
class Drain:
    seconds: float
    seconds_from_start: float
    metrics: Samples
    problems: list[str]


async def counted_total(connection: asyncpg.Connection[Any]) -> int:
    value = await connection.fetchval(
        "SELECT coalesce(sum(count), 0) FROM tally.counters WHERE dimension = 'total'"
    )
    return int(value)


async def check_counters(connection: asyncpg.Connection[Any], load: TallyLoad) -> list[str]:
    """Every way the stored counts can differ from the records; empty when exact."""
    problems: list[str] = []
    rows = await connection.fetch(
        "SELECT case_id, dimension, sum(count) AS count FROM tally.counters GROUP BY case_id, dimension"
    )
    stored: dict[tuple[str, str], int] = {
        (row["case_id"], row["dimension"]): int(row["count"]) for row in rows
    }
    for case_id in sorted(set(load.distinct_by_case) | {case for case, _ in stored}):
        expected = load.distinct_by_case.get(case_id, 0)
        for dimension in ("total", "country", "action"):
            found = stored.get((case_id, dimension), 0)
            if found != expected:
                problems.append(f"{case_id}: {dimension} counters sum to {found}, expected {expected}")
    signatures = int(await connection.fetchval("SELECT count(*) FROM tally.signatures"))
    if signatures != load.distinct:
        problems.append(f"{signatures} stored signatures, expected {load.distinct}")
    return problems


async def wait_exact(
    dsn: str, tally: Child, load: TallyLoad, started: float, timeout_s: float
) -> tuple[float, float]:
    """Poll until the totals reach the distinct count; returns (first commit, exact) wall times."""
    connection = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout_s
        last_report = time.monotonic()
        while True:
            counted = await counted_total(connection)
            now = time.time()
            if counted >= load.distinct:
                break
            tally.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"tally counted {counted:,} of {load.distinct:,} within {timeout_s:.0f} s")
            if time.monotonic() - last_report > 5:
                say(f"tally: {counted:,} of {load.distinct:,} counted ({now - started:.0f} s)")
                last_report = time.monotonic()
            await asyncio.sleep(0.1)
        first = await connection.fetchval("SELECT extract(epoch FROM min(counted_at)) FROM tally.signatures")
        return float(first), now
    finally:
        await connection.close()


async def final_check(dsn: str, load: TallyLoad) -> list[str]:
    connection = await asyncpg.connect(dsn)
    try:
        # A moment for anything counted twice to show (a replayed batch, a second consumer).
        await asyncio.sleep(2.0)
        return await check_counters(connection, load)
    finally:
        await connection.close()


def drain(
    run: BenchRun,
    args: argparse.Namespace,
    env: dict[str, str],
    port: int,
    load: TallyLoad,
    baseline: Baseline | None = None,
) -> Drain:
    started = time.time()
    name = f"tally-{baseline.rev}" if baseline else "tally"
    dsn = env["CLAMEUR_DATABASE_URL"]
    tally, base = start_tally(run, env, port, baseline.python if baseline else None, name)
    first, exact = asyncio.run(wait_exact(dsn, tally, load, started, args.timeout))
    say(
        f"{name}: exact after {exact - first:.1f} s from its first commit "
        f"({exact - started:.1f} s from its start)"
    )
    problems = asyncio.run(final_check(dsn, load))
    metrics = scrape(f"{base}/metrics")
    run.children.stop(tally)
    return Drain(exact - first, exact - started, metrics, problems)


# -- the baseline: tally at an earlier revision, same records in schema 1 ---------------------------------


def run_baseline(
    run: BenchRun, args: argparse.Namespace, baseline: Baseline, env: dict[str, str], load: TallyLoad
) -> Drain:
    """The same records, in schema 1, drained by the baseline's tally (its own database and topic)."""
    name = f"bench_tally_{run.run_id}_base"
    dsn = asyncio.run(create_database(run.infra.database_url, name))
    topic = f"{run.prefix}signatures.v1"  # what tally read before signatures.v2
    try:
        baseline.migrate(dsn)
        asyncio.run(_create_topic(run.infra.kafka, topic, args.partitions))
        port = free_port()
        base_env = {
            **env,
            "CLAMEUR_DATABASE_URL": dsn,
            "CLAMEUR_TALLY_PORT": str(port),
            "CLAMEUR_TALLY_GROUP_ID": f"tally-base-{run.prefix}",
        }
        tally, base = start_tally(run, base_env, port, baseline.python, f"tally-{baseline.rev}")
        tally.wait_http(f"{base}/readyz")
        create_cases(base, load)
        run.children.stop(tally)
        say(f"putting the same {args.events:,} records, schema 1, on {topic}...")
        schema_1 = ((key, as_schema(value, 1)) for key, value in load.records())
        asyncio.run(load_topic(run.infra.kafka, topic, schema_1))
        return drain(run, args, base_env, port, load, baseline)
    finally:
        asyncio.run(_delete_topic(run.infra.kafka, topic))
        if not run.keep:
            asyncio.run(drop_database(run.infra.database_url, name))


async def _create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    async with kafka_admin(bootstrap) as admin:
        await admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])


async def _delete_topic(bootstrap: str, topic: str) -> None:
    async with kafka_admin(bootstrap) as admin:
        with contextlib.suppress(Exception):  # gone already, or never made: nothing to clean
            await admin.delete_topics([topic])


def baseline_rows(args: argparse.Namespace, rate: float, base: Drain | None) -> list[Row]:
    """The baseline's drain rate and the ratio of today's to it (issue 14: at least 0.9)."""
    if base is None:
        return []
    base_rate = args.events / base.seconds if base.seconds > 0 else 0.0
    ratio = rate / base_rate if base_rate else 0.0
    exact = "exact" if not base.problems else "NOT exact: " + "; ".join(base.problems[:3])
    return [
        Row(
            f"baseline tally at {args.baseline_rev} (schema 1), same records, same run",
            f"{per_second(base_rate)} ({count(args.events)} records in {base.seconds:.1f} s, {exact})",
        ),
        Row(
            "ratio to the baseline (the cost of protection)",
            f"{ratio:.2f}",
            f"≥ {GOAL_BASELINE_RATIO}",
            ratio >= GOAL_BASELINE_RATIO,
        ),
    ]


# -- the naive design -----------------------------------------------------------------------------------

_NAIVE_SCHEMA = [
    "CREATE SCHEMA naive",
    """CREATE TABLE naive.signatures (
        case_id text NOT NULL, supporter_key text NOT NULL, action text NOT NULL,
        signature_id uuid NOT NULL, country text NOT NULL, locale text NOT NULL,
        received_at timestamptz NOT NULL, PRIMARY KEY (case_id, supporter_key, action))""",
    "CREATE TABLE naive.counters (case_id text PRIMARY KEY, count bigint NOT NULL)",
]
_NAIVE_INSERT = """INSERT INTO naive.signatures
    (case_id, supporter_key, action, signature_id, country, locale, received_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING RETURNING 1"""
_NAIVE_UPDATE = "UPDATE naive.counters SET count = count + 1 WHERE case_id = $1"


async def naive(dsn: str, records: list[bytes], cases: list[str]) -> tuple[float, bool]:
    """One transaction per signature on one connection; returns (records/s, exact)."""
    connection = await asyncpg.connect(dsn)
    try:
        for statement in _NAIVE_SCHEMA:
            await connection.execute(statement)
        await connection.executemany("INSERT INTO naive.counters VALUES ($1, 0)", [(case,) for case in cases])
        distinct = set()
        started = time.perf_counter()
        for raw in records:
            signature = decode_countable(raw)
            async with connection.transaction():
                inserted = await connection.fetchval(
                    _NAIVE_INSERT,
                    signature.case_id,
                    signature.supporter_key,
                    signature.action.value,
                    signature.signature_id,
                    signature.country,
                    signature.locale,
                    signature.received_at,
                )
                if inserted:
                    await connection.execute(_NAIVE_UPDATE, signature.case_id)
            distinct.add((signature.case_id, signature.supporter_key, signature.action.value))
        elapsed = time.perf_counter() - started
        stored = int(await connection.fetchval("SELECT sum(count) FROM naive.counters"))
        return len(records) / elapsed, stored == len(distinct)
    finally:
        await connection.close()


def keep_first(
    records: Iterable[tuple[bytes, bytes]], into: list[bytes], limit: int
) -> Iterator[tuple[bytes, bytes]]:
    for key, value in records:
        if len(into) < limit:
            into.append(value)
        yield key, value


# -- the bench ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    facts = machine_facts()
    try:
        with BenchRun.open("tally", keep=args.keep, keep_infra=args.keep_infra) as run:
            topics = run.new_topics(signature_partitions=args.partitions)
            dsn = run.new_database("tally")
            port = free_port()
            extra = {"CLAMEUR_TALLY_PORT": str(port), "CLAMEUR_TALLY_GROUP_ID": f"tally-{run.prefix}"}
            if args.batch_records:
                extra["CLAMEUR_TALLY_BATCH_MAX_RECORDS"] = str(args.batch_records)
            if args.batch_wait:
                extra["CLAMEUR_TALLY_BATCH_MAX_WAIT_S"] = str(args.batch_wait)
            if args.batches_in_flight:
                extra["CLAMEUR_TALLY_BATCHES_IN_FLIGHT"] = str(args.batches_in_flight)
            env = service_env(run.infra, topic_prefix=topics.prefix, database_url=dsn, extra=extra)
            load = TallyLoad(run.run_id, args.events)

            tally, base = start_tally(run, env, port)
            tally.wait_http(f"{base}/readyz")
            create_cases(base, load)
            run.children.stop(tally)

            baseline = Baseline.prepare(args.baseline_rev) if args.baseline_rev else None
            say(f"putting {args.events:,} records on {topics.signatures}...")
            sample: list[bytes] = []
            started = time.perf_counter()
            schema_2 = ((key, as_schema(value, 2)) for key, value in load.records())
            loaded = asyncio.run(
                load_topic(
                    run.infra.kafka, topics.signatures, keep_first(schema_2, sample, args.naive_events)
                )
            )
            say(
                f"{loaded:,} records loaded in {time.perf_counter() - started:.1f} s "
                f"({load.distinct:,} distinct, {load.duplicates:,} repeats)"
            )
            result = drain(run, args, env, port, load)
            base_result = run_baseline(run, args, baseline, env, load) if baseline else None
            say(f"the naive design on {len(sample):,} records...")
            naive_rate, naive_exact = asyncio.run(naive(dsn, sample, load.cases))
    except BenchError as error:
        say(f"error: {error}")
        return 2

    rate = args.events / result.seconds if result.seconds > 0 else 0.0
    ratio = rate / naive_rate if naive_rate else 0.0
    metrics = result.metrics
    batches = total(metrics, "clameur_tally_batch_size_records_count")
    batch_records = total(metrics, "clameur_tally_batch_size_records_sum")
    apply_p99 = histogram_quantile(metrics, "clameur_tally_batch_apply_duration_seconds", 0.99)
    exact = not result.problems
    tally_defaults = TallySettings.model_fields
    default_batch_records = tally_defaults["tally_batch_max_records"].default
    default_batch_wait = tally_defaults["tally_batch_max_wait_s"].default
    default_in_flight = tally_defaults["tally_batches_in_flight"].default
    rows = [
        Row(
            "drain rate, records/s (first commit to exact counters)",
            f"{per_second(rate)} ({count(args.events)} records in {result.seconds:.1f} s)",
            "≥ 50,000/s",
            rate >= GOAL_RATE,
        ),
        Row(
            "from tally's start to exact counters",
            f"{result.seconds_from_start:.1f} s ({per_second(args.events / result.seconds_from_start)})",
        ),
        Row(
            "naive design: one transaction per signature",
            f"{per_second(naive_rate)} ({count(len(sample))} records, "
            f"exact: {'yes' if naive_exact else 'NO'})",
        ),
        Row("ratio to the naive design", f"{ratio:,.1f} times", "≥ 20 times", ratio >= GOAL_RATIO),
        *baseline_rows(args, rate, base_result),
        Row(
            "exact at the end (every case: total, per country, per action; stored signatures)",
            f"{count(load.distinct)} distinct of {count(args.events)} records"
            + ("" if exact else ": " + "; ".join(result.problems[:5])),
            "exact",
            exact,
        ),
        Row(
            "tally's own view",
            f"{count(total(metrics, 'clameur_tally_records_consumed_total'))} records consumed, "
            f"{count(total(metrics, 'clameur_tally_duplicates_total'))} duplicates, {count(batches)} batches "
            f"(mean {batch_records / batches if batches else 0:,.0f} records), "
            f"apply p99 {millis(apply_p99)}",
        ),
    ]
    setup = [
        f"{count(args.events)} SignatureAccepted records on a fresh topic with {args.partitions} partitions "
        f"before tally starts: {count(load.duplicates)} repeats (10%), 80% on one hot case (milestones "
        f"{', '.join(f'{m:,}' for m in HOT_MILESTONES)}), the rest over 19 cases, 30 countries",
        "tally: `python -m tally`, a fresh database (tally's migrations), its own consumer group; batches "
        f"of at most {args.batch_records or default_batch_records} records or "
        f"{args.batch_wait or default_batch_wait} s, {args.batches_in_flight or default_in_flight} "
        "in the database at once"
        + ("" if args.batch_records or args.batch_wait or args.batches_in_flight else " (tally's defaults)"),
        "drain time: from the first batch's commit (the earliest `counted_at`) until the bench's poll "
        "(every 0.1 s) saw the totals equal the distinct count; then every counter is checked",
        "records: SignatureAccepted schema 2 (no personal data, email_domain), none awaiting confirmation"
        + (
            f"; baseline: tally at {args.baseline_rev} in a git worktree (.cache/bench/), its own "
            "virtualenv (uv sync --frozen), database and topic (signatures.v1), the same records "
            "in schema 1, "
            "drained after today's"
            if args.baseline_rev
            else ""
        ),
        "naive design: the first records, decoded like tally does, each in its own transaction "
        "(INSERT ... ON CONFLICT DO NOTHING, then UPDATE of the case's counter row), one connection, "
        "the same Postgres server with the same durability settings",
        "Postgres: the dev profile's (fsync and synchronous_commit on); Kafka: the dev profile's "
        "single broker",
        "accept-to-counted under load is measured by the pipeline bench (`make bench`)",
    ]
    return report(
        "tally",
        title="Tally (`make bench-tally`)",
        facts=facts,
        rows=rows,
        setup=setup,
        options=args,
        failed=None
        if exact and naive_exact and (base_result is None or not base_result.problems)
        else "the counters are not exact",
        details=result.problems,
    )


if __name__ == "__main__":
    sys.exit(main())
