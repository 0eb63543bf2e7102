"""The Postgres side of counting: one transaction per batch, set-based SQL.

A batch of signatures.v2 is applied in log order, in one transaction with its offsets:
runs of consecutive signatures and confirmations by the set-based paths below (a
:class:`LogRun`), every other event by its step in :data:`EVENT_STEPS` (rejection,
erasure, invalidation and its revocation: :mod:`tally.invalidations`).  Counter changes
of every step gather in one :class:`BatchEffects` and are written once, at the end, with
the milestones they cross.

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
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import KW_ONLY, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from clameur.consumer import Batch
from clameur.events import (
    CaseStatus,
    Event,
    InvalidationRequested,
    InvalidationRevoked,
    MilestoneReached,
    SignatureAccepted,
    SignatureConfirmed,
    SignaturesRejected,
    SupporterErased,
)
from clameur.offsets import OffsetTable
from tally.counting import (
    ACTION,
    COUNTRY,
    PENDING,
    TOTAL,
    CountedSignature,
    CounterKey,
    SignatureLogRecord,
    counted,
    milestones_crossed,
)
from tally.invalidations import apply_invalidation, apply_revocation
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
    "state",
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
# new signatures come back as counts per (state, case, country, action) and per (state,
# millisecond of receipt), not one row each, so a batch of thousands returns dozens of
# rows.  A signature staged 'pending' (it awaits confirmation) is counted at once when its
# (case, supporter) is confirmed already; the lookup runs only for pending ones.
_INSERT_SIGNATURES = """
WITH inserted AS (
    INSERT INTO tally.signatures (case_id, supporter_key, action, signature_id, country, locale, received_at,
                                  state, email_domain, widget, page_url, partner)
    SELECT s.case_id, s.supporter_key, s.action, s.signature_id, s.country, s.locale, s.received_at,
           CASE WHEN s.state = 'pending' AND NOT EXISTS (
                    SELECT 1 FROM tally.confirmed_supporters c
                    WHERE c.case_id = s.case_id AND c.supporter_key = s.supporter_key)
                THEN 'pending' ELSE 'counted' END,
           s.email_domain, s.widget, s.page_url, s.partner
    FROM pg_temp.tally_incoming_signatures s
    WHERE s.n >= $1 AND s.n < $2
    ORDER BY s.case_id, s.supporter_key, s.action, s.n
    ON CONFLICT (case_id, supporter_key, action) DO NOTHING
    RETURNING case_id, country, action, received_at, state
)
SELECT state, case_id, country, action, date_trunc('milliseconds', received_at) AS received_at,
       count(*) AS signatures
FROM inserted
GROUP BY GROUPING SETS ((state, case_id, country, action), (state, date_trunc('milliseconds', received_at)))
"""

# The confirmations of a run, set-based: each (case, supporter) is recorded once, in key
# order (two instances briefly sharing a partition wait on each other's first common key,
# never deadlock), then their pending rows received within the expiry before the earliest
# confirmation (by event times: a replay agrees) turn counted, grouped by Postgres into
# counts.  The row's state changes once: a replayed, doubled or concurrent confirmation
# finds no pending row left (a concurrent one waited for the other's commit on the
# recorded key, and its UPDATE reads the committed state).
_RECORD_CONFIRMED = """
INSERT INTO tally.confirmed_supporters (case_id, supporter_key, confirmed_at)
SELECT case_id, supporter_key, confirmed_at
FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS c(case_id, supporter_key, confirmed_at)
ORDER BY case_id, supporter_key
ON CONFLICT (case_id, supporter_key) DO NOTHING
"""
_COUNT_CONFIRMED = """
WITH confirmed AS (
    UPDATE tally.signatures AS s SET state = 'counted', counted_at = now()
    FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS c(case_id, supporter_key, earliest)
    WHERE s.case_id = c.case_id AND s.supporter_key = c.supporter_key AND s.state = 'pending'
      AND s.received_at >= c.earliest - $4::interval
    RETURNING s.case_id, s.country, s.action, date_trunc('milliseconds', c.earliest) AS confirmed_at
)
SELECT case_id, country, action, confirmed_at, count(*) AS signatures
FROM confirmed
GROUP BY GROUPING SETS ((case_id, country, action), (confirmed_at))
"""

_REJECT = """
DELETE FROM tally.signatures WHERE case_id = $1 AND supporter_key = $2 AND state = 'pending'
RETURNING 1
"""

# Every row of the supporter, in every case, gets a marker of its own: the rows can no
# longer be linked to the address, nor to each other.  The email domain goes too: a domain
# only one supporter uses would name them.  Counts do not move.
_ERASE = """
WITH forgotten AS (
    DELETE FROM tally.confirmed_supporters WHERE supporter_key = $1
)
UPDATE tally.signatures
SET supporter_key = 'erased:' || replace(gen_random_uuid()::text, '-', ''), email_domain = NULL
WHERE supporter_key = $1
RETURNING 1
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

# Counters that go down (a confirmed or dropped pending signature, an invalidation): a
# plain UPDATE, since an upsert checks ``count >= 0`` on the row it would insert.  Their
# rows exist: each down is matched by an earlier up.
_LOWER_COUNTERS = """
UPDATE tally.counters AS c SET count = c.count + d.delta, updated_at = now()
FROM (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[])
        WITH ORDINALITY AS d(case_id, dimension, key, delta, n)
    ORDER BY n
) AS d
WHERE c.case_id = d.case_id AND c.dimension = d.dimension AND c.key = d.key
"""

# Where each partition resumes, written in the transaction of the counts it led to.
OFFSETS = OffsetTable("tally.offsets")


@dataclass
class BatchEffects:
    """What one batch's transaction changed, gathered step by step in log order.

    ``deltas`` are added to the counters once, at the end of the batch (with the
    milestones they cross).  ``counted`` holds newly counted signatures by (case,
    country, action), ``by_receipt`` those counted at once by millisecond of receipt
    (their latency), ``by_confirmation`` those a confirmation counted by millisecond of the
    confirmation (theirs), ``signatures`` how many the batch held, ``new_signatures`` every
    signature row inserted (counted or pending), ``notices`` the outbox rows steps staged
    (the relay is woken for them).
    """

    expiry: timedelta
    case_events_topic: str
    deltas: Counter[CounterKey] = field(default_factory=Counter)
    counted: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    by_receipt: list[tuple[datetime, int]] = field(default_factory=list)
    by_confirmation: list[tuple[datetime, int]] = field(default_factory=list)
    signatures: int = 0
    new_signatures: int = 0
    confirmed: int = 0
    rejected: int = 0
    erased: int = 0
    invalidated: int = 0
    restored: int = 0
    notices: int = 0
    milestones: int = 0

    def count(self, case_id: str, country: str, action: str, signatures: int) -> None:
        """``signatures`` newly counted in (case, country, action)."""
        self.counted[(case_id, country, action)] += signatures
        self._move(case_id, country, action, signatures)

    def uncount(self, case_id: str, country: str, action: str, signatures: int) -> None:
        """``signatures`` counted ones leave (case, country, action): an invalidation."""
        self._move(case_id, country, action, -signatures)

    def restore(self, case_id: str, country: str, action: str, signatures: int) -> None:
        """``signatures`` taken out come back to (case, country, action): a revoked invalidation.

        The same counters and milestone rule as :meth:`count`; not new signatures for the metrics.
        """
        self._move(case_id, country, action, signatures)

    def _move(self, case_id: str, country: str, action: str, signatures: int) -> None:
        self.deltas[CounterKey(case_id, TOTAL, "")] += signatures
        self.deltas[CounterKey(case_id, COUNTRY, country)] += signatures
        self.deltas[CounterKey(case_id, ACTION, action)] += signatures

    def pend(self, case_id: str, signatures: int) -> None:
        """``signatures`` more (or fewer, if negative) awaiting confirmation in the case."""
        self.deltas[CounterKey(case_id, PENDING, "")] += signatures


# The live consumer decodes signatures to CountedSignature; tests and tools may pass the event.
_SIGNATURES = (CountedSignature, SignatureAccepted)

EventStep = Callable[[Connection, Any, BatchEffects], Awaitable[None]]
"""How one (non-signature) event of the log is applied inside the batch's transaction."""


async def _stage(connection: Connection, rows: list[tuple[Any, ...]]) -> None:
    """COPY the signatures' rows (with their batch position ``n``) into this connection's temporary table."""
    await connection.copy_records_to_table(
        _STAGE, schema_name="pg_temp", columns=_STAGE_COLUMNS, records=rows
    )


async def insert_signatures(connection: Connection, first: int, end: int, effects: BatchEffects) -> None:
    """Insert the staged signatures at batch positions ``[first, end)``: new ones counted or pending."""
    for state, case_id, country, action, received_at, count in await connection.fetch(
        _INSERT_SIGNATURES, first, end
    ):
        # GROUPING SETS: a row has the (case, country, action) group, or the millisecond.
        if case_id is None:
            if state == "counted":
                effects.by_receipt.append((received_at, count))
            continue
        effects.new_signatures += count
        if state == "counted":
            effects.count(case_id, country, action, count)
        else:
            effects.pend(case_id, count)


async def apply_confirmations(
    connection: Connection, confirmations: Sequence[SignatureConfirmed], effects: BatchEffects
) -> None:
    """Count the confirmed supporters' pending signatures (within the expiry); record them confirmed.

    Two statements for the whole run, whatever its size.  A supporter confirmed twice in
    the run is recorded with the first confirmation's time, and counts what either would
    have: what was received within the expiry before the earliest.
    """
    first: dict[tuple[str, str], datetime] = {}
    earliest: dict[tuple[str, str], datetime] = {}
    for confirmation in confirmations:
        supporter = (confirmation.case_id, confirmation.supporter_key)
        first.setdefault(supporter, confirmation.occurred_at)
        earliest[supporter] = min(earliest.get(supporter, confirmation.occurred_at), confirmation.occurred_at)
    cases = [case_id for case_id, _ in first]
    keys = [key for _, key in first]
    await connection.execute(_RECORD_CONFIRMED, cases, keys, list(first.values()))
    rows = await connection.fetch(_COUNT_CONFIRMED, cases, keys, list(earliest.values()), effects.expiry)
    for case_id, country, action, confirmed_at, count in rows:
        # GROUPING SETS: a row has the (case, country, action) group, or the millisecond.
        if case_id is None:
            effects.by_confirmation.append((confirmed_at, count))
            continue
        effects.count(case_id, country, action, count)
        effects.pend(case_id, -count)
        effects.confirmed += count


async def apply_rejected(connection: Connection, event: SignaturesRejected, effects: BatchEffects) -> None:
    """Drop the supporter's pending signatures of the case; counted ones stay."""
    dropped = len(await connection.fetch(_REJECT, event.case_id, event.supporter_key))
    effects.pend(event.case_id, -dropped)
    effects.rejected += dropped


async def apply_erased(connection: Connection, event: SupporterErased, effects: BatchEffects) -> None:
    """Re-key every row of the supporter with an unlinkable marker; counts stay (idempotent)."""
    effects.erased += len(await connection.fetch(_ERASE, event.supporter_key))


EVENT_STEPS: dict[type, EventStep] = {
    SignaturesRejected: apply_rejected,
    SupporterErased: apply_erased,
    InvalidationRequested: apply_invalidation,
    InvalidationRevoked: apply_revocation,
}
"""The apply step of each event type of signatures.v2 other than ``SignatureAccepted`` and
``SignatureConfirmed`` (applied by runs: :class:`LogRun`)."""


@dataclass
class LogRun:
    """Consecutive signatures and confirmations of a batch, at positions ``[first, end)``.

    Its signatures are staged (with their positions), its confirmations kept in log order.
    No signature of a run follows a confirmation of its supporter in the run (such a
    signature starts the next run), so applying the run's signatures, then its
    confirmations, has the effect of applying them one by one in log order: a
    confirmation finds every signature of its supporter the log put before it, and a
    signature finds the confirmations of the runs before.
    """

    first: int
    end: int = 0
    signatures: int = 0
    confirmations: list[SignatureConfirmed] = field(default_factory=list)
    confirmed: set[tuple[str, str]] = field(default_factory=set)

    def confirm(self, confirmation: SignatureConfirmed) -> None:
        self.confirmations.append(confirmation)
        self.confirmed.add((confirmation.case_id, confirmation.supporter_key))


def _stage_row(s: CountedSignature, n: int) -> tuple[Any, ...]:
    return (
        s.case_id,
        s.supporter_key,
        s.action,  # a StrEnum: written as its value
        s.signature_id,
        s.country,
        s.locale,
        s.received_at,
        "pending" if s.awaits_confirmation else "counted",
        s.email_domain,
        s.widget,
        s.page_url,
        s.partner,
        n,
    )


def log_segments(
    records: list[SignatureLogRecord],
) -> tuple[list[tuple[Any, ...]], list[LogRun | SignatureLogRecord]]:
    """One pass over the batch: the stage rows of its signatures, and the batch in log order
    (runs of signatures and confirmations, every other event alone)."""
    rows: list[tuple[Any, ...]] = []
    segments: list[LogRun | SignatureLogRecord] = []
    run: LogRun | None = None
    for n, record in enumerate(records):
        if isinstance(record, SignatureConfirmed):
            run = run or LogRun(n)
            run.confirm(record)
            continue
        if not isinstance(record, _SIGNATURES):
            if run is not None:
                run.end = n
                segments.append(run)
                run = None
            segments.append(record)
            continue
        s = record if type(record) is CountedSignature else counted(record)
        if run is not None and (s.case_id, s.supporter_key) in run.confirmed:
            run.end = n
            segments.append(run)
            run = None
        run = run or LogRun(n)
        run.signatures += 1
        rows.append(_stage_row(s, n))
    if run is not None:
        run.end = len(records)
        segments.append(run)
    return rows, segments


@dataclass(frozen=True, eq=False)
class PostgresCounterStore:
    """The :class:`clameur.consumer.BatchApplier` of tally: counts and offsets in Postgres.

    ``milestone_topic`` is where ``MilestoneReached`` rows go (case-events.v1 of these
    settings).  ``confirmation_expiry`` bounds how old a pending signature a confirmation
    still counts.  ``crash_at`` (tests only) kills the process with SIGKILL in the first
    batch that holds records, just before or just after the commit.
    """

    pool: asyncpg.Pool[Any]
    metrics: TallyMetrics
    milestone_topic: str
    _: KW_ONLY
    confirmation_expiry: timedelta = timedelta(days=30)
    crash_at: CrashPoint | None = None
    on_outbox_written: Callable[[], None] | None = None
    # Cases already warned about (bounded), so an unknown case is logged once.
    _warned: set[str] = field(init=False, default_factory=set)

    async def stored_offsets(self, topic: str, partitions: Collection[int]) -> dict[int, int]:
        return await OFFSETS.read(self.pool, topic, partitions)

    async def apply(self, batch: Batch[SignatureLogRecord]) -> None:
        """Apply the batch's events in log order and store its offsets, in one transaction.

        Idempotent: replaying a batch inserts no signature, finds no pending row to
        confirm or reject and no key left to erase, so it adds nothing.  The signatures
        are staged first; the rest waits until the batch before this one is applied
        (tally takes two at once: one is staged while the other commits), so batches
        commit in order and never wait for each other's rows.
        """
        self.metrics.batches.inc()
        started = time.perf_counter()
        records = [consumed.event for consumed in batch.events]
        try:
            effects = await self._commit(batch, records)
        except Exception:
            self.metrics.batch_failures.inc()
            raise
        if records:
            self._maybe_crash("after_db_commit")
        self._report(batch, effects, started)

    async def _commit(
        self, batch: Batch[SignatureLogRecord], records: list[SignatureLogRecord]
    ) -> BatchEffects:
        """Stage, wait for the batch before, then apply in log order, count, store the offsets; commit."""
        effects = BatchEffects(self.confirmation_expiry, self.milestone_topic)
        signatures, segments = log_segments(records)
        effects.signatures = len(signatures)
        async with self.pool.acquire() as connection:
            if signatures:
                # In its own implicit transaction: creating the table reads the definition
                # of tally.signatures under a lock that a batch waiting for the one before
                # it must not hold (a migration queued behind it would block that one).
                await connection.execute(_CREATE_STAGE)
            async with connection.transaction():
                if signatures:
                    await _stage(connection, signatures)
                await batch.previous_applied()
                if records:
                    await self._apply_in_order(connection, segments, effects)
                await OFFSETS.store(connection, batch.topic, batch.next_offsets)
                if records:
                    self._maybe_crash("before_db_commit")
        return effects

    async def _apply_in_order(
        self,
        connection: Connection,
        segments: list[LogRun | SignatureLogRecord],
        effects: BatchEffects,
    ) -> None:
        """Each run (its signatures, then its confirmations), each other event by its step, in
        log order; then the counters."""
        for segment in segments:
            if isinstance(segment, LogRun):
                if segment.signatures:
                    await insert_signatures(connection, segment.first, segment.end, effects)
                if segment.confirmations:
                    await apply_confirmations(connection, segment.confirmations, effects)
                continue
            step = EVENT_STEPS.get(type(segment))
            if step is None:
                logger.warning(
                    "an event tally does not apply yet, skipped", extra={"type": type(segment).__name__}
                )
                continue
            await step(connection, segment, effects)
        deltas = {key: delta for key, delta in effects.deltas.items() if delta}
        if deltas:
            effects.milestones = await self._count(connection, deltas)

    def _report(self, batch: Batch[SignatureLogRecord], effects: BatchEffects, started: float) -> None:
        """The metrics of a committed batch."""
        committed = datetime.now(UTC)
        metrics = self.metrics
        records = len(batch.events) + batch.poisoned
        metrics.batch_apply_duration.observe(time.perf_counter() - started)
        metrics.batch_size.observe(records)
        metrics.records_consumed.inc(records)
        metrics.duplicates.inc(effects.signatures - effects.new_signatures)
        by_action: Counter[str] = Counter()
        for (_, _, action), count in effects.counted.items():
            by_action[action] += count
        for action, count in by_action.items():
            metrics.signatures_counted.labels(action).inc(count)
        for received_at, count in effects.by_receipt:
            # Signatures received in the same millisecond share one latency.
            latency = max(0.0, (committed - received_at).total_seconds())
            observe_many(metrics.accept_to_counted, latency, count)
        for confirmed_at, count in effects.by_confirmation:
            latency = max(0.0, (committed - confirmed_at).total_seconds())
            observe_many(metrics.confirmation_to_counted, latency, count)
        metrics.signatures_confirmed.inc(effects.confirmed)
        metrics.pending_rejected.inc(effects.rejected)
        metrics.signatures_erased.inc(effects.erased)
        metrics.signatures_invalidated.inc(effects.invalidated)
        metrics.signatures_restored.inc(effects.restored)
        if effects.milestones:
            metrics.milestones_emitted.inc(effects.milestones)
        if (effects.milestones or effects.notices) and self.on_outbox_written is not None:
            self.on_outbox_written()

    async def _count(self, connection: Connection, deltas: dict[CounterKey, int]) -> int:
        """Add ``deltas`` to the counters and stage the milestones crossed; returns how many."""
        lowered = sorted(key for key, delta in deltas.items() if delta < 0)
        if lowered:
            await connection.execute(
                _LOWER_COUNTERS,
                [key.case_id for key in lowered],
                [key.dimension for key in lowered],
                [key.key for key in lowered],
                [deltas[key] for key in lowered],
            )
        keys = sorted(key for key, delta in deltas.items() if delta > 0)
        if not keys:
            return 0
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
        return await stage_many(connection, self.milestone_topic, crossings)

    def _warn_unknown(self, case_id: str) -> None:
        # Once per case and process: a surge on an unknown case must not flood the logs.
        if case_id not in self._warned and len(self._warned) < 10_000:
            self._warned.add(case_id)
            logger.warning("signatures counted for a case tally does not know", extra={"case_id": case_id})

    def _maybe_crash(self, point: CrashPoint) -> None:
        if self.crash_at == point:
            logger.warning("test crash point reached: SIGKILL", extra={"crash_at": point})
            os.kill(os.getpid(), signal.SIGKILL)


def milestone_dedupe_key(case_id: str, threshold: int) -> str:
    """The outbox's unique key for one milestone: it fires once per case and threshold."""
    return f"milestone:{case_id}:{threshold}"
