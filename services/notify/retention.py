"""Retention: a case's supporters are forgotten ``retention_days`` after it is won or closed.

Each case's clock comes from cases.v1 (:class:`CaseRetentionApplier`): when its state
first says won or closed (``ended_at``, the state's ``updated_at``) and its
``retention_days`` (default 180, like UK Parliament petitions; ``CLAMEUR_RETENTION_DAYS``
overrides every case).  A reopened case stops its clock.

Every ``CLAMEUR_RETENTION_INTERVAL_S`` (default one hour) :class:`RetentionJob` finds the
supporters subscribed ONLY to cases whose retention ran out (a supporter who still
follows an open case, or one whose time has not come, keeps their contact) and forgets
each (:meth:`notify.erasure.Eraser.forget`, reason ``retention``: contact tombstoned,
rows deleted).  It announces no ``SupporterErased``: the supporter may have signed an
open case without asking for news, and tally's key is what keeps that signature from
counting twice; the key is a keyed hash, and the address it was made from is gone.

``python -m notify.retention --dry-run`` (against the configured database) reports what
the job would forget now and changes nothing.

The same pass forgets a supporter whose every subscription still awaits confirmation
and was signed longer ago than ``CLAMEUR_CONFIRMATION_EXPIRY_S`` (:func:`unconfirmed_supporters`,
reason ``expired``, metric reason ``unconfirmed``): a signature never confirmed no longer
counts, and its contact is not kept for it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from clameur.consumer import Batch
from clameur.database import create_pool
from clameur.events import CaseState, CaseStatus, utc_now
from notify.erasure import Eraser
from notify.ledger import GroupApplier
from notify.metrics import NotifyMetrics
from notify.settings import NotifySettings

if TYPE_CHECKING:
    import asyncpg

    Pool = asyncpg.Pool[Any]
    Connection = asyncpg.Connection[Any] | asyncpg.pool.PoolConnectionProxy[Any]

logger = logging.getLogger(__name__)


class CaseRetentionApplier(GroupApplier):
    """``BatchApplier`` for cases.v1: each case's retention clock, offsets in the same transaction."""

    async def apply(self, batch: Batch[CaseState]) -> None:
        latest: dict[str, CaseState] = {}
        for consumed in batch.events:
            state = consumed.event
            if state.case_id not in latest or latest[state.case_id].version < state.version:
                latest[state.case_id] = state
        states = list(latest.values())
        await batch.previous_applied()  # the BatchApplier contract
        async with self.pool.acquire() as connection, connection.transaction():
            if states:
                await _record_clocks(connection, states)
            await self.offsets.store(connection, batch.topic, batch.next_offsets)


async def _record_clocks(connection: Connection, states: list[CaseState]) -> None:
    # A stale copy (lower version) changes nothing; the clock starts at the FIRST state
    # that ended the case, so a later edit of an ended case does not push it back.
    await connection.execute(
        """
        INSERT INTO notify.case_retention AS r (case_id, version, status, retention_days, ended_at)
        SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::int[], $5::timestamptz[])
        ON CONFLICT (case_id) DO UPDATE
            SET version = EXCLUDED.version, status = EXCLUDED.status,
                retention_days = EXCLUDED.retention_days,
                ended_at = CASE WHEN EXCLUDED.status = 'open' THEN NULL
                                ELSE COALESCE(r.ended_at, EXCLUDED.ended_at) END
            WHERE r.version < EXCLUDED.version
        """,
        [s.case_id for s in states],
        [s.version for s in states],
        [s.status.value for s in states],
        [s.retention_days for s in states],
        [None if s.status is CaseStatus.OPEN else s.updated_at for s in states],
    )


@dataclass(frozen=True)
class DueSupporter:
    """A supporter whose every followed case has run out its retention."""

    supporter_key: str
    case_ids: tuple[str, ...]


async def due_supporters(
    connection: Connection | Pool, now: datetime, override_days: int | None, limit: int | None = None
) -> list[DueSupporter]:
    """Supporters subscribed only to cases ended at least their retention before ``now``.

    A case notify has no state for counts as open: nothing is forgotten on a guess.
    """
    rows = await connection.fetch(
        """
        WITH due_cases AS (
            SELECT case_id FROM notify.case_retention
            WHERE ended_at IS NOT NULL
              AND ended_at + make_interval(days => COALESCE($2::int, retention_days)) <= $1
        )
        SELECT s.supporter_key, array_agg(s.case_id ORDER BY s.case_id) AS case_ids
        FROM notify.subscriptions s
        GROUP BY s.supporter_key
        HAVING bool_and(s.case_id IN (SELECT case_id FROM due_cases))
        ORDER BY s.supporter_key
        LIMIT $3
        """,
        now,
        override_days,
        limit,
    )
    return [DueSupporter(row["supporter_key"], tuple(row["case_ids"])) for row in rows]


async def unconfirmed_supporters(
    connection: Connection | Pool, now: datetime, expiry_s: float, limit: int | None = None
) -> list[DueSupporter]:
    """Supporters whose every subscription awaits confirmation, unconfirmed, signed at
    least ``expiry_s`` before ``now``: their confirmation link has expired everywhere."""
    rows = await connection.fetch(
        """
        SELECT s.supporter_key, array_agg(s.case_id ORDER BY s.case_id) AS case_ids
        FROM notify.subscriptions s
        GROUP BY s.supporter_key
        HAVING bool_and(s.awaits_confirmation AND s.confirmed_at IS NULL
                        AND s.signed_at + make_interval(secs => $2) <= $1)
        ORDER BY s.supporter_key
        LIMIT $3
        """,
        now,
        expiry_s,
        limit,
    )
    return [DueSupporter(row["supporter_key"], tuple(row["case_ids"])) for row in rows]


@dataclass(frozen=True)
class RetentionReport:
    """What one run found due and, unless a dry run, forgot."""

    due: list[DueSupporter]
    forgotten: int
    dry_run: bool
    unconfirmed: list[DueSupporter] = field(default_factory=list)
    """Supporters whose signatures were never confirmed within the expiry."""

    def as_json(self) -> dict[str, Any]:
        cases: dict[str, int] = {}
        for supporter in self.due:
            for case_id in supporter.case_ids:
                cases[case_id] = cases.get(case_id, 0) + 1
        return {
            "dry_run": self.dry_run,
            "due_supporters": len(self.due),
            "unconfirmed_supporters": len(self.unconfirmed),
            "forgotten": self.forgotten,
            "by_case": cases,
        }


@dataclass(frozen=True)
class RetentionJob:
    """Finds who is due (:func:`due_supporters`) and forgets them; see the module."""

    pool: Pool
    eraser: Eraser | None
    metrics: NotifyMetrics | None
    override_days: int | None
    clock: Callable[[], datetime] = utc_now
    confirmation_expiry_s: float | None = None

    async def run_once(self, *, dry_run: bool = False, chunk: int = 1000) -> RetentionReport:
        """One pass, until no one is due.  A dry run (or a job without an eraser) only reports."""
        now = self.clock()
        if dry_run or self.eraser is None:
            unconfirmed = (
                []
                if self.confirmation_expiry_s is None
                else await unconfirmed_supporters(self.pool, now, self.confirmation_expiry_s)
            )
            due = await due_supporters(self.pool, now, self.override_days)
            return RetentionReport(due, 0, dry_run=True, unconfirmed=unconfirmed)
        due = await self._forget_all(
            lambda: due_supporters(self.pool, now, self.override_days, limit=chunk), chunk, "case_ended"
        )
        unconfirmed = []
        if self.confirmation_expiry_s is not None:
            expiry_s = self.confirmation_expiry_s
            unconfirmed = await self._forget_all(
                lambda: unconfirmed_supporters(self.pool, now, expiry_s, limit=chunk), chunk, "unconfirmed"
            )
        if due or unconfirmed:
            logger.info(
                "retention forgot supporters", extra={"count": len(due), "unconfirmed": len(unconfirmed)}
            )
        return RetentionReport(due, len(due) + len(unconfirmed), dry_run=False, unconfirmed=unconfirmed)

    async def _forget_all(
        self,
        find: Callable[[], Awaitable[list[DueSupporter]]],
        chunk: int,
        why: Literal["case_ended", "unconfirmed"],
    ) -> list[DueSupporter]:
        assert self.eraser is not None
        forgotten: list[DueSupporter] = []
        while True:
            # In chunks: a large case's supporters are forgotten in one pass, a chunk read at a time.
            found = await find()
            for supporter in found:
                await self.eraser.forget(
                    supporter.supporter_key, "retention" if why == "case_ended" else "expired"
                )
                if self.metrics is not None:
                    self.metrics.retention_erased.labels(why).inc()
            forgotten.extend(found)
            if len(found) < chunk:
                return forgotten

    async def run(self, every_s: float) -> None:
        """A pass every ``every_s`` until cancelled; a failed pass is logged and retried next time."""
        while True:
            try:
                await self.run_once()
            except Exception as error:  # noqa: BLE001 - the next pass tries again; the loop must live
                logger.warning("retention pass failed", extra={"error": type(error).__name__})
            await asyncio.sleep(every_s)


async def dry_run(settings: NotifySettings) -> RetentionReport:
    """What the retention job would forget now, against the configured database."""
    pool = await create_pool(settings.database_url, min_size=1, max_size=2)
    try:
        job = RetentionJob(
            pool, None, None, settings.retention_days, confirmation_expiry_s=settings.confirmation_expiry_s
        )
        return await job.run_once(dry_run=True)
    finally:
        await pool.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m notify.retention", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--dry-run", action="store_true", required=True, help="report only (the service runs the job)"
    )
    parser.parse_args(argv)
    report = asyncio.run(dry_run(NotifySettings()))
    sys.stdout.write(json.dumps(report.as_json(), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
