"""Trust, but verify: recompute the counters and compare them with the stored ones.

    python -m tally.reconcile                # from tally.signatures; exit 1 on drift
    python -m tally.reconcile --fix          # ... and set drifted counters to the truth
    python -m tally.reconcile --rebuild      # replay signatures.v1 into fresh counters
    python -m tally.reconcile --case nawal   # only these cases (repeatable)

The check reads the counters and the signatures in one REPEATABLE READ snapshot: a batch
commits both or neither, so a running tally causes no false drift.  ``--fix`` first locks
the counters against writers (SHARE ROW EXCLUSIVE); batches wait and then add to the
fixed values.  ``--rebuild`` reads the stored offsets and counters in one snapshot, then
replays each partition of ``signatures.v1`` from the beginning *up to its stored offset*,
deduplicating by the same key as the live tally and applying invalidations at their place
in the log (:class:`tally.invalidations.InMemoryInvalidations`): the two must agree exactly.
Signatures taken out by an invalidation are in neither count.

Exit codes: 0 no drift (or drift fixed), 1 drift, 2 cannot run (settings, unreachable).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from clameur.database import create_pool
from clameur.events import InvalidationRequested, InvalidationRevoked
from clameur.settings import ClameurSettings
from tally.counter_store import OFFSETS, LogRecord, decode_log_record
from tally.counting import (
    ACTION,
    COUNTRY,
    TOTAL,
    Countable,
    CounterKey,
    Drift,
    InMemoryTally,
    drift,
)
from tally.invalidations import InMemoryInvalidations, facts_of


def expected_counters(groups: Collection[tuple[str, str, str, int]]) -> dict[CounterKey, int]:
    """Counters from ``(case_id, country, action, signatures)`` groups (pure)."""
    counters: dict[CounterKey, int] = {}
    for case_id, country, action, count in groups:
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
        groups = await connection.fetch(
            "SELECT case_id, country, action, count(*) AS signatures FROM tally.signatures "
            "WHERE ($1::text[] IS NULL OR case_id = ANY($1::text[])) "
            "AND invalidation_id IS NULL "  # taken out by an invalidation: not in the counts
            "GROUP BY case_id, country, action",
            cases,
        )
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
    pool: asyncpg.Pool[Any], bootstrap: str, topic: str, *, cases: list[str] | None = None
) -> Rebuild:
    """Replay ``topic`` up to the stored offsets into fresh counters and compare with the stored ones."""
    async with pool.acquire() as connection, connection.transaction(isolation="repeatable_read"):
        stored = await _stored_counters(connection, cases)
        offsets = await OFFSETS.read(connection, topic)
    tally, records, poisoned = await _replay(bootstrap, topic, offsets, cases)
    return Rebuild(drift(stored, tally.as_mapping()), records, poisoned, len(tally.counted))


async def _replay(
    bootstrap: str, topic: str, until: Mapping[int, int], cases: list[str] | None
) -> tuple[InMemoryTally, int, int]:
    tally, taken_out = InMemoryTally(), InMemoryInvalidations()
    records = poisoned = 0
    wanted = set(cases) if cases is not None else None
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
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
                events: list[LogRecord] = []
                for record in chunk:
                    if record.offset >= end:
                        break
                    records += 1
                    try:
                        event = decode_log_record(record.value or b"")
                    except ValueError:
                        poisoned += 1  # the live tally sent it to the DLQ: it counts nowhere
                        continue
                    if wanted is None or event.case_id in wanted:
                        events.append(event)
                _fold(tally, taken_out, events)
            for tp in list(remaining):
                if await consumer.position(tp) >= until[tp.partition]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return tally, records, poisoned


def _fold(tally: InMemoryTally, taken_out: InMemoryInvalidations, events: list[LogRecord]) -> None:
    """Count the signatures and apply the invalidations in log order, as the live tally does."""
    run: list[Countable] = []
    for event in [*events, None]:
        if event is None or isinstance(event, InvalidationRequested | InvalidationRevoked):
            for new in tally.add(run):
                taken_out.counted(facts_of(new))
            run = []
            if event is not None:
                tally.counters.update(taken_out.apply(event))
        else:
            run.append(event)


def _report(drifts: list[Drift]) -> None:
    for d in drifts:
        case_id, dimension, key = d.counter
        name = dimension if dimension == TOTAL else f"{dimension}={key}"
        sys.stdout.write(f"drift: case {case_id} {name}: stored {d.stored}, expected {d.expected}\n")


async def _main(args: argparse.Namespace, settings: ClameurSettings) -> int:
    pool = await create_pool(settings.database_url, min_size=1, max_size=2)
    try:
        if args.rebuild:
            rebuilt = await rebuild_counters(
                pool, settings.kafka, settings.topics.signatures, cases=args.case
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
    mode.add_argument("--rebuild", action="store_true", help="replay signatures.v1 and compare")
    parser.add_argument("--case", action="append", help="only this case (repeatable)")
    args = parser.parse_args(argv)
    try:
        settings = ClameurSettings()
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
