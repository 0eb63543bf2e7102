"""The Postgres side of counting: one transaction per batch, set-based SQL.

Per batch, whatever its size: one COPY of the signatures into a temporary table and one
INSERT from it (``ON CONFLICT DO NOTHING RETURNING`` says which are new, grouped by
Postgres into counts), one upsert of every counter they move (each
counter row once, returning the new totals), one upsert of the partitions' next offsets
(never backwards: ``GREATEST``), and, only when a threshold was crossed, one INSERT of
milestone outbox rows.  Rows are written in key order so two instances briefly sharing
a case (a rebalance) take row locks in the same order and do not deadlock.

A case's ``total`` counter row is locked by the upsert until the commit, so concurrent
batches see disjoint ``(before, after]`` intervals of the total: each threshold is
crossed by exactly one of them.  The outbox's unique ``dedupe_key`` backs this up.

Signatures of a case tally does not know (intake refuses unknown cases, so this is a
record from another environment or a case created elsewhere) are kept and counted like
any other: a 202 was given for them.  They fire no milestones and are logged.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from typing import Any, NamedTuple, TypeAlias, cast

import asyncpg
import msgspec

from clameur.consumer import Batch
from clameur.events import (
    CaseStatus,
    Event,
    InvalidationRequested,
    InvalidationRevoked,
    MilestoneReached,
    SignatureAccepted,
    decode_signature,
    decode_signature_log_event,
)
from clameur.offsets import OffsetTable
from tally.counting import (
    TOTAL,
    Countable,
    CounterKey,
    decode_countable,
    deltas_of_groups,
    milestones_crossed,
)
from tally.invalidations import InvalidationEvent, apply_invalidation_event
from tally.metrics import TallyMetrics
from tally.outbox import Connection, stage_many
from tally.settings import CrashPoint
from tally.weighted_observe import observe_many

logger = logging.getLogger(__name__)

# A batch reaches Postgres by binary COPY into a temporary table, then one INSERT ... SELECT:
# COPY costs the client a third of what encoding seven arrays for ``unnest`` did, and the
# server less too (docs/benchmarks.md, tally).  The table has the columns of
# tally.signatures plus the batch order ``n``; it lives as long as the connection and is
# emptied at every commit.
_STAGE = "tally_incoming_signatures"
_STAGE_COLUMNS = (
    "case_id",
    "supporter_key",
    "action",
    "signature_id",
    "country",
    "locale",
    "received_at",
    "email_domain",
    "widget",
    "page_url",
    "partner",
    "n",
)
_CREATE_STAGE = """
CREATE TEMPORARY TABLE IF NOT EXISTS tally_incoming_signatures (
    LIKE tally.signatures INCLUDING DEFAULTS,
    n integer NOT NULL
) ON COMMIT DELETE ROWS
"""

# Rows go in key order (and, for one key, in batch order ``n``: the first signature of a
# supporter wins, the rest of the batch conflicts with it).  Postgres sorts and groups: the
# new signatures come back as counts per (case, country, action) and per millisecond of
# receipt, not one row each, so a batch of thousands returns dozens of rows.
_INSERT_SIGNATURES = """
WITH inserted AS (
    INSERT INTO tally.signatures (case_id, supporter_key, action, signature_id, country, locale, received_at,
                                  email_domain, widget, page_url, partner)
    SELECT case_id, supporter_key, action, signature_id, country, locale, received_at,
           email_domain, widget, page_url, partner
    FROM pg_temp.tally_incoming_signatures
    ORDER BY case_id, supporter_key, action, n
    ON CONFLICT (case_id, supporter_key, action) DO NOTHING
    RETURNING case_id, country, action, received_at
)
SELECT case_id, country, action, date_trunc('milliseconds', received_at) AS received_at,
       count(*) AS signatures
FROM inserted
GROUP BY GROUPING SETS ((case_id, country, action), (date_trunc('milliseconds', received_at)))
"""

# The new totals come back with the case's milestones, so crossings need no other query.
_UPSERT_COUNTERS = """
WITH upserted AS (
    INSERT INTO tally.counters AS c (case_id, dimension, key, count)
    SELECT case_id, dimension, key, delta
    FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[])
        WITH ORDINALITY AS d(case_id, dimension, key, delta, n)
    ORDER BY n
    ON CONFLICT (case_id, dimension, key)
        DO UPDATE SET count = c.count + EXCLUDED.count, updated_at = now()
    RETURNING c.case_id, c.dimension, c.count
)
SELECT u.case_id, u.count AS total, k.id IS NOT NULL AS known, k.milestones, k.status, k.title,
       k.default_locale
FROM upserted u LEFT JOIN tally.cases k ON k.id = u.case_id
WHERE u.dimension = 'total'
"""

# Where each partition resumes, written in the transaction of the counts it led to.
OFFSETS = OffsetTable("tally.offsets")


class _Counted(NamedTuple):
    """What one batch's transaction added.

    Its new signatures by (case, country, action) and by millisecond of receipt (never
    one entry a signature), and how many milestone rows it staged.
    """

    by_group: dict[tuple[str, str, str], int]
    by_receipt: list[tuple[datetime, int]]
    milestones: int


_NOTHING_COUNTED = _Counted({}, [], 0)


async def _stage(connection: Connection, signatures: list[Countable]) -> None:
    """COPY the signatures, in batch order ``n``, into this connection's temporary table."""
    await connection.copy_records_to_table(
        _STAGE,
        schema_name="pg_temp",
        columns=_STAGE_COLUMNS,
        records=[
            (
                s.case_id,
                s.supporter_key,
                s.action,
                s.signature_id,
                s.country,
                s.locale,
                s.received_at,
                *_filter_fields(s),
                n,
            )
            for n, s in enumerate(signatures)
        ],  # action is a StrEnum: written as its value
    )


def _filter_fields(signature: Countable) -> tuple[str | None, str | None, str | None, str | None]:
    """STAND-IN (tally-a's dispatch replaces it): what invalidation filters read of a signature."""
    if not isinstance(signature, SignatureAccepted):
        return (None, None, None, None)
    source = signature.source
    return (signature.email_domain, source.widget, source.page_url, source.partner)


LogRecord: TypeAlias = "Countable | InvalidationEvent"
"""STAND-IN (tally-a's dispatch replaces it): what the consumer hands the counter store."""


def decode_log_record(raw: bytes) -> LogRecord:
    """STAND-IN (tally-a's dispatch replaces it): a countable signature or an invalidation event."""
    kind = _KIND.decode(raw).type if raw.lstrip().startswith(b"{") else ""
    if kind in ("InvalidationRequested", "InvalidationRevoked"):
        event = decode_signature_log_event(raw)
        assert isinstance(event, InvalidationRequested | InvalidationRevoked)
        return event
    decode_countable(raw)  # tally's checks, poison raises
    return decode_signature(raw)


class _Kind(msgspec.Struct):
    type: str = "SignatureAccepted"


_KIND = msgspec.json.Decoder(_Kind)


class PostgresCounterStore:
    """The :class:`clameur.consumer.BatchApplier` of tally: counts and offsets in Postgres.

    ``milestone_topic`` is where ``MilestoneReached`` rows go (case-events.v1 of these
    settings).  ``crash_at`` (tests only) kills the process with SIGKILL in the first
    batch that holds signatures, just before or just after the commit.
    """

    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        metrics: TallyMetrics,
        milestone_topic: str,
        *,
        crash_at: CrashPoint | None = None,
        on_outbox_written: Callable[[], None] | None = None,
    ) -> None:
        self._pool = pool
        self._metrics = metrics
        self._milestone_topic = milestone_topic
        self._crash_at = crash_at
        self._on_outbox_written = on_outbox_written
        self._warned: set[str] = set()

    async def stored_offsets(self, topic: str, partitions: Collection[int]) -> dict[int, int]:
        return await OFFSETS.read(self._pool, topic, partitions)

    async def apply(self, batch: Batch[Any]) -> None:  # Countable or LogRecord: the stand-in takes both
        """Count the batch's new signatures and store its offsets, in one transaction.

        Idempotent: replaying a batch inserts no signature, so it adds nothing.  The
        signatures are staged first; the rest waits until the batch before this one is
        applied (tally takes two at once: one is staged while the other commits), so
        batches commit in order and never wait for each other's rows.
        """
        self._metrics.batches.inc()
        started = time.perf_counter()
        signatures = [consumed.event for consumed in batch.events]
        try:
            counted = await self._commit(batch, signatures)
        except Exception:
            self._metrics.batch_failures.inc()
            raise
        if signatures:
            self._maybe_crash("after_db_commit")
        self._report(batch, counted, started)

    async def _commit(self, batch: Batch[LogRecord], signatures: list[LogRecord]) -> _Counted:
        """Stage, wait for the batch before, then insert, count and store the offsets; commit."""
        if any(isinstance(event, InvalidationRequested | InvalidationRevoked) for event in signatures):
            return await self._commit_in_log_order(batch, signatures)
        async with self._pool.acquire() as connection:
            if signatures:
                # In its own implicit transaction: creating the table reads the definition
                # of tally.signatures under a lock that a batch waiting for the one before
                # it must not hold (a migration queued behind it would block that one).
                await connection.execute(_CREATE_STAGE)
            async with connection.transaction():
                if signatures:
                    await _stage(connection, cast("list[Countable]", signatures))
                await batch.previous_applied()
                counted = await self._count_staged(connection) if signatures else _NOTHING_COUNTED
                await OFFSETS.store(connection, batch.topic, batch.next_offsets)
                if signatures:
                    self._maybe_crash("before_db_commit")
        return counted

    async def _commit_in_log_order(self, batch: Batch[LogRecord], events: list[LogRecord]) -> _Counted:
        """STAND-IN (tally-a's dispatch replaces it): signatures, invalidations in log order, one commit."""
        counted = _NOTHING_COUNTED
        async with self._pool.acquire() as connection:
            await connection.execute(_CREATE_STAGE)
            async with connection.transaction():
                await batch.previous_applied()
                run: list[Countable] = []
                for event in [*events, None]:
                    if event is None or isinstance(event, InvalidationRequested | InvalidationRevoked):
                        if run:
                            await _stage(connection, run)
                            more = await self._count_staged(connection)
                            counted = _Counted(
                                {**counted.by_group, **more.by_group},  # metrics only
                                counted.by_receipt + more.by_receipt,
                                counted.milestones + more.milestones,
                            )
                            await connection.execute(f"DELETE FROM pg_temp.{_STAGE}")  # noqa: S608 - constant
                            run = []
                        if event is not None:
                            applied = await apply_invalidation_event(
                                connection, event, self._milestone_topic, self._count
                            )
                            counted = counted._replace(milestones=counted.milestones + applied.outbox_rows)
                    else:
                        run.append(event)
                await OFFSETS.store(connection, batch.topic, batch.next_offsets)
                self._maybe_crash("before_db_commit")
        return counted

    async def _count_staged(self, connection: Connection) -> _Counted:
        """Insert the staged signatures; add the new ones to the counters and stage the milestones."""
        by_group: dict[tuple[str, str, str], int] = {}
        by_receipt: list[tuple[datetime, int]] = []
        for case_id, country, action, received_at, count in await connection.fetch(_INSERT_SIGNATURES):
            # GROUPING SETS: a row has the (case, country, action) group, or the millisecond.
            if case_id is not None:
                by_group[(case_id, country, action)] = count
            else:
                by_receipt.append((received_at, count))
        milestones = await self._count(connection, deltas_of_groups(by_group)) if by_group else 0
        return _Counted(by_group, by_receipt, milestones)

    def _report(self, batch: Batch[LogRecord], counted: _Counted, started: float) -> None:
        """The metrics of a committed batch."""
        committed = datetime.now(UTC)
        metrics = self._metrics
        records = len(batch.events) + batch.poisoned
        metrics.batch_apply_duration.observe(time.perf_counter() - started)
        metrics.batch_size.observe(records)
        metrics.records_consumed.inc(records)
        metrics.duplicates.inc(len(batch.events) - sum(counted.by_group.values()))
        by_action: Counter[str] = Counter()
        for (_, _, action), count in counted.by_group.items():
            by_action[action] += count
        for action, count in by_action.items():
            metrics.signatures_counted.labels(action).inc(count)
        for received_at, count in counted.by_receipt:
            # Signatures received in the same millisecond share one latency.
            latency = max(0.0, (committed - received_at).total_seconds())
            observe_many(metrics.accept_to_counted, latency, count)
        if counted.milestones:
            metrics.milestones_emitted.inc(counted.milestones)
            if self._on_outbox_written is not None:
                self._on_outbox_written()

    async def _count(self, connection: Connection, deltas: dict[CounterKey, int]) -> int:
        """Add ``deltas`` to the counters and stage the milestones crossed; returns how many."""
        keys = sorted(deltas)
        totals = await connection.fetch(
            _UPSERT_COUNTERS,
            [key.case_id for key in keys],
            [key.dimension for key in keys],
            [key.key for key in keys],
            [deltas[key] for key in keys],
        )
        crossings: list[tuple[str, Event, str | None]] = []
        for row in totals:
            case_id = row["case_id"]
            if not row["known"]:
                self._warn_unknown(case_id)
                continue
            if row["status"] != CaseStatus.OPEN.value:
                continue  # late signatures of a won or closed case count, but announce nothing
            after = int(row["total"])
            before = after - deltas[CounterKey(case_id, TOTAL, "")]
            for threshold in milestones_crossed(before, after, row["milestones"]):
                event = MilestoneReached(
                    case_id=case_id,
                    threshold=threshold,
                    total=after,
                    case_title=row["title"],
                    default_locale=row["default_locale"],
                )
                crossings.append((case_id, event, milestone_dedupe_key(case_id, threshold)))
                logger.info("milestone reached", extra={"case_id": case_id, "threshold": threshold})
        return await stage_many(connection, self._milestone_topic, crossings)

    def _warn_unknown(self, case_id: str) -> None:
        # Once per case and process: a surge on an unknown case must not flood the logs.
        if case_id not in self._warned and len(self._warned) < 10_000:
            self._warned.add(case_id)
            logger.warning("signatures counted for a case tally does not know", extra={"case_id": case_id})

    def _maybe_crash(self, point: CrashPoint) -> None:
        if self._crash_at == point:
            logger.warning("test crash point reached: SIGKILL", extra={"crash_at": point})
            os.kill(os.getpid(), signal.SIGKILL)


def milestone_dedupe_key(case_id: str, threshold: int) -> str:
    """The outbox's unique key for one milestone: it fires once per case and threshold."""
    return f"milestone:{case_id}:{threshold}"
