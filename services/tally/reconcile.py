"""Trust, but verify: recompute the counters and compare them with the stored ones.

    python -m tally.reconcile                # from tally.signatures; exit 1 on drift
    python -m tally.reconcile --fix          # ... and set drifted counters to the truth
    python -m tally.reconcile --rebuild      # replay signatures.v2 into fresh counters
    python -m tally.reconcile --case nawal   # only these cases (repeatable)

The check reads the counters and the signatures in one REPEATABLE READ snapshot: a batch
commits both or neither, so a running tally causes no false drift.  ``--fix`` first locks
the counters against writers (SHARE ROW EXCLUSIVE); batches wait and then add to the
fixed values.  ``--rebuild`` reads the stored offsets and counters in one snapshot, then
replays each partition of ``signatures.v2`` from the beginning *up to its stored offset*,
folding it by the same rules as the live tally (:class:`tally.counting.InMemoryTally`,
invalidations and revocations included, at their place in the log):
the two must agree exactly on total, countries and actions.  ``pending`` is checked
against the stored rows only (the expiry job drops them by wall-clock time, which a
replay cannot know).

Only counted signatures count: pending ones are in ``pending``, and invalidated ones
(tally.invalidations) in neither.

Exit codes: 0 no drift (or drift fixed), 1 drift, 2 cannot run (settings, unreachable).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from clameur.database import create_pool
from clameur.kafka import Kafka, client_kwargs
from tally.counter_store import OFFSETS
from tally.counting import (
    ACTION,
    COUNTRY,
    PENDING,
    TOTAL,
    CounterKey,
    Drift,
    InMemoryTally,
    decode_log_record,
    drift,
)
from tally.settings import TallySettings

# What the stored rows say the counters are: a row taken out by an invalidation is in
# neither the counts nor ``pending``.
COUNTED_ROWS = "state = 'counted' AND invalidation_id IS NULL"
_EXPECTED = f"""
SELECT case_id, state, country, action, count(*) AS signatures FROM tally.signatures
WHERE ($1::text[] IS NULL OR case_id = ANY($1::text[])) AND (state = 'pending' OR ({COUNTED_ROWS}))
GROUP BY case_id, state, country, action
"""  # noqa: S608 - constant conditions


def expected_counters(groups: Collection[tuple[str, str, str, str, int]]) -> dict[CounterKey, int]:
    """Counters from ``(case_id, state, country, action, signatures)`` groups (pure)."""
    counters: dict[CounterKey, int] = {}
    for case_id, state, country, action, count in groups:
        if state == "pending":
            key = CounterKey(case_id, PENDING, "")
            counters[key] = counters.get(key, 0) + count
            continue
        for key in (
            CounterKey(case_id, TOTAL, ""),
            CounterKey(case_id, COUNTRY, country),
            CounterKey(case_id, ACTION, action),
        ):
            counters[key] = counters.get(key, 0) + count
    return counters


async def _stored_counters(connection: Any, cases: list[str] | None) -> dict[CounterKey, int]:
    rows = await connection.fetch(
        "SELECT case_id, dimension, key, count FROM tally.counters "
        "WHERE $1::text[] IS NULL OR case_id = ANY($1::text[])",
        cases,
    )
    return {CounterKey(row["case_id"], row["dimension"], row["key"]): row["count"] for row in rows}


async def check_counters(
    pool: asyncpg.Pool[Any], *, fix: bool = False, cases: list[str] | None = None
) -> list[Drift]:
    """Counters that differ from a recount of ``tally.signatures``; with ``fix``, corrected."""
    async with pool.acquire() as connection, connection.transaction(isolation="repeatable_read"):
        if fix:
            # Before any read: the snapshot then holds every batch committed before the lock.
            await connection.execute("LOCK TABLE tally.counters IN SHARE ROW EXCLUSIVE MODE")
        stored = await _stored_counters(connection, cases)
        groups = await connection.fetch(_EXPECTED, cases)
        drifts = drift(stored, expected_counters([tuple(row.values()) for row in groups]))
        if fix and drifts:
            await connection.executemany(
                """
                INSERT INTO tally.counters AS c (case_id, dimension, key, count) VALUES ($1, $2, $3, $4)
                ON CONFLICT (case_id, dimension, key) DO UPDATE SET count = EXCLUDED.count, updated_at = now()
                """,
                [(*d.counter, d.expected) for d in drifts],
            )
    return drifts


@dataclass(frozen=True)
class Rebuild:
    drifts: list[Drift]
    records: int
    poisoned: int
    counted: int


async def rebuild_counters(
    pool: asyncpg.Pool[Any],
    bootstrap: Kafka,
    topic: str,
    *,
    cases: list[str] | None = None,
    expiry: timedelta = timedelta(days=30),
) -> Rebuild:
    """Replay ``topic`` up to the stored offsets into fresh counters and compare with the stored ones."""
    async with pool.acquire() as connection, connection.transaction(isolation="repeatable_read"):
        stored = await _stored_counters(connection, cases)
        offsets = await OFFSETS.read(connection, topic)
    tally, records, poisoned = await _replay(bootstrap, topic, offsets, cases, InMemoryTally(expiry=expiry))
    counted = {key: count for key, count in stored.items() if key.dimension != PENDING}
    return Rebuild(drift(counted, tally.as_mapping()), records, poisoned, len(tally.counted))


async def _replay(
    bootstrap: Kafka, topic: str, until: Mapping[int, int], cases: list[str] | None, tally: InMemoryTally
) -> tuple[InMemoryTally, int, int]:
    records = poisoned = 0
    wanted = set(cases) if cases is not None else None
    consumer = AIOKafkaConsumer(
        **client_kwargs(bootstrap),
        enable_auto_commit=False,
        client_id="tally-reconcile",
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, partition) for partition, end in until.items() if end > 0]
        if not partitions:
            return tally, 0, 0
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        remaining = set(partitions)
        while remaining:
            fetched = await consumer.getmany(*remaining, timeout_ms=1000, max_records=5000)
            for tp, chunk in fetched.items():
                end = until[tp.partition]
                signatures = []
                for record in chunk:
                    if record.offset >= end:
                        break
                    records += 1
                    try:
                        decoded = decode_log_record(record.value or b"")
                    except ValueError:
                        poisoned += 1  # the live tally sent it to the DLQ: it counts nowhere
                        continue
                    if (
                        wanted is None
                        or getattr(decoded, "case_id", None) in wanted
                        or not hasattr(decoded, "case_id")
                    ):
                        signatures.append(decoded)
                tally.apply(signatures)
            for tp in list(remaining):
                if await consumer.position(tp) >= until[tp.partition]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return tally, records, poisoned


def _report(drifts: list[Drift]) -> None:
    for d in drifts:
        case_id, dimension, key = d.counter
        name = dimension if dimension == TOTAL else f"{dimension}={key}"
        sys.stdout.write(f"drift: case {case_id} {name}: stored {d.stored}, expected {d.expected}\n")


async def _main(args: argparse.Namespace, settings: TallySettings) -> int:
    pool = await create_pool(settings.database_url, min_size=1, max_size=2)
    try:
        if args.rebuild:
            rebuilt = await rebuild_counters(
                pool,
                settings.kafka_access,
                settings.topics.signatures,
                cases=args.case,
                expiry=timedelta(seconds=settings.confirmation_expiry_s),
            )
            _report(rebuilt.drifts)
            sys.stdout.write(
                f"rebuild: {rebuilt.records} records replayed, {rebuilt.poisoned} poison, "
                f"{rebuilt.counted} distinct signatures, {len(rebuilt.drifts)} counters drift\n"
            )
            return 1 if rebuilt.drifts else 0
        drifts = await check_counters(pool, fix=args.fix, cases=args.case)
        _report(drifts)
        if not drifts:
            sys.stdout.write("reconcile: every counter matches the stored signatures\n")
            return 0
        if args.fix:
            sys.stdout.write(f"reconcile: fixed {len(drifts)} counters\n")
            return 0
        sys.stdout.write(f"reconcile: {len(drifts)} counters drift; run with --fix to correct them\n")
        return 1
    finally:
        await pool.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tally.reconcile", description=(__doc__ or "").split("\n")[0]
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--fix", action="store_true", help="set drifted counters to the recount")
    mode.add_argument("--rebuild", action="store_true", help="replay signatures.v2 and compare")
    parser.add_argument("--case", action="append", help="only this case (repeatable)")
    args = parser.parse_args(argv)
    try:
        settings = TallySettings()
    except ValidationError as error:
        sys.stderr.write(f"reconcile: invalid settings: {error}\n")
        return 2
    try:
        return asyncio.run(_main(args, settings))
    except (OSError, asyncpg.PostgresError) as error:
        sys.stderr.write(f"reconcile: cannot reach Postgres or Kafka: {type(error).__name__}: {error}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
