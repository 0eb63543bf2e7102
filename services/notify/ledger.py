"""Everything notify keeps in Postgres (schema ``notify``), behind small typed methods.

- :class:`SupporterListApplier` folds ``signatures.v1`` into the supporter list and stores
  the consumer's offsets in the same transaction.
- :class:`CaseNewsApplier` records milestones and victories from ``case-events.v1`` (with
  offsets, in one transaction); a replayed or duplicated event changes nothing.
- :class:`DeliveryLedger` fans a recorded event out into delivery rows (one
  ``INSERT ... SELECT`` per event, unique on (event, supporter)), claims due deliveries in
  batches with ``FOR UPDATE SKIP LOCKED`` and a lease, and records outcomes in batches.
- :class:`Preferences` holds unsubscriptions and erasures.

Delivery states: ``pending`` -> ``sending`` (claimed; ``next_attempt_at`` is the lease
end) -> ``sent`` | ``failed`` | ``cancelled``, or back to ``pending`` with a later
``next_attempt_at`` after a temporary failure.  A ``sending`` row whose lease ran out
(its process died) is due again.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

import asyncpg

from clameur.consumer import Batch
from clameur.events import CaseEvent, MilestoneReached, SignatureAccepted, VictoryDeclared
from clameur.offsets import OffsetTable
from notify.messages import CaseNews, Recipient, kind_of
from notify.supporters import SupporterChanges, fold_signatures

if TYPE_CHECKING:
    Pool = asyncpg.Pool[Any]
    Connection = asyncpg.Connection[Any] | asyncpg.pool.PoolConnectionProxy[Any]

# Writers of the supporter list take this lock shared, erasure takes it exclusive, so a
# batch folded before an erasure committed cannot re-create the erased supporter.
_SUPPORTER_LIST_LOCK = "SELECT pg_advisory_xact_lock{mode}(hashtext('notify.supporters'))"


def consumer_offsets(group_id: str) -> OffsetTable:
    """Where the consumer group ``group_id`` keeps its next offsets (one table for notify's consumers)."""
    return OffsetTable("notify.consumer_offsets", group_id=group_id)


class SupporterListApplier:
    """``BatchApplier`` for ``signatures.v1``: consenting supporters and their cases.

    ``on_recorded`` (if given) is called after commit with the number of new
    (case, supporter) subscriptions: a consenting supporter's first signature of a case.
    """

    def __init__(self, pool: Pool, group_id: str, on_recorded: Any = None) -> None:
        self.pool = pool
        self.group_id = group_id
        self.offsets = consumer_offsets(group_id)
        self._on_recorded = on_recorded

    async def stored_offsets(self, topic: str, partitions: Collection[int]) -> dict[int, int]:
        return await self.offsets.read(self.pool, topic, partitions)

    async def apply(self, batch: Batch[SignatureAccepted]) -> None:
        signatures = [consumed.event for consumed in batch.events]
        keys = sorted({signature.supporter_key for signature in signatures if signature.consent.updates})
        # The BatchApplier contract: never commit ahead of the batch before (notify runs
        # one at a time today, so this returns at once).
        await batch.previous_applied()
        async with self.pool.acquire() as connection, connection.transaction():
            await connection.execute(_SUPPORTER_LIST_LOCK.format(mode="_shared"))
            erased: dict[str, datetime] = {}
            if keys:
                rows = await connection.fetch(
                    "SELECT supporter_key, erased_at FROM notify.erasures"
                    " WHERE supporter_key = ANY($1::text[])",
                    keys,
                )
                erased = {row["supporter_key"]: row["erased_at"] for row in rows}
            changes = fold_signatures(signatures, erased)
            subscribed = await _write_supporters(connection, changes)
            await self.offsets.store(connection, batch.topic, batch.next_offsets)
        if self._on_recorded is not None and subscribed:
            self._on_recorded(subscribed)


async def _write_supporters(connection: Connection, changes: SupporterChanges) -> int:
    """Upsert the batch's rows; returns how many (case, supporter) subscriptions are new."""
    if changes.supporters:
        supporters = changes.supporters
        await connection.execute(
            """
            INSERT INTO notify.supporters AS s (supporter_key, email, first_name, locale, received_at)
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[])
            ON CONFLICT (supporter_key) DO UPDATE
                SET email = EXCLUDED.email, first_name = EXCLUDED.first_name,
                    locale = EXCLUDED.locale, received_at = EXCLUDED.received_at
                WHERE s.received_at <= EXCLUDED.received_at
            """,
            [s.supporter_key for s in supporters],
            [s.email for s in supporters],
            [s.first_name for s in supporters],
            [s.locale for s in supporters],
            [s.received_at for s in supporters],
        )
    if not changes.subscriptions:
        return 0
    subscriptions = changes.subscriptions
    # xmax = 0 on a returned row means it was inserted, not updated: a replayed batch
    # (after a crash or a rebalance) counts nothing again.
    inserted = await connection.fetch(
        """
        INSERT INTO notify.subscriptions AS s (case_id, supporter_key, signed_at)
        SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[])
        ON CONFLICT (case_id, supporter_key) DO UPDATE
            SET signed_at = LEAST(s.signed_at, EXCLUDED.signed_at)
        RETURNING (xmax = 0) AS inserted
        """,
        [s.case_id for s in subscriptions],
        [s.supporter_key for s in subscriptions],
        [s.signed_at for s in subscriptions],
    )
    return sum(1 for row in inserted if row["inserted"])


class CaseNewsApplier:
    """``BatchApplier`` for ``case-events.v1``: records milestones and victories to fan out.

    ``CaseClosed`` tells supporters nothing (design choice: no email when a case closes
    without a victory); its offset is stored all the same.
    """

    def __init__(self, pool: Pool, group_id: str) -> None:
        self.pool = pool
        self.group_id = group_id
        self.offsets = consumer_offsets(group_id)

    async def stored_offsets(self, topic: str, partitions: Collection[int]) -> dict[int, int]:
        return await self.offsets.read(self.pool, topic, partitions)

    async def apply(self, batch: Batch[CaseEvent]) -> None:
        news = [c.event for c in batch.events if isinstance(c.event, MilestoneReached | VictoryDeclared)]
        await batch.previous_applied()  # the BatchApplier contract, as above
        async with self.pool.acquire() as connection, connection.transaction():
            if news:
                await connection.execute(
                    """
                    INSERT INTO notify.case_events (event_id, case_id, kind, occurred_at, event)
                    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::jsonb[])
                    ON CONFLICT (event_id) DO NOTHING
                    """,
                    [event.event_id for event in news],
                    [event.case_id for event in news],
                    [kind_of(event) for event in news],
                    [event.occurred_at for event in news],
                    [event.model_dump(mode="json", by_alias=True) for event in news],
                )
            await self.offsets.store(connection, batch.topic, batch.next_offsets)


@dataclass(frozen=True)
class EventToFanOut:
    event_id: UUID
    case_id: str
    occurred_at: datetime


@dataclass(frozen=True)
class ClaimedDelivery:
    """A delivery this process now holds until its lease ends.

    ``recipient`` is ``None`` when the supporter was erased since the row was written.
    """

    id: int
    event_id: UUID
    kind: str
    attempts: int
    recipient: Recipient | None
    unsubscribed: bool


@dataclass(frozen=True)
class Reschedule:
    delivery_id: int
    delay_s: float
    error: str


@dataclass(frozen=True)
class Outcomes:
    """What happened to a set of claimed deliveries, recorded in one transaction."""

    sent: Sequence[int] = ()
    retry: Sequence[Reschedule] = ()
    failed: Sequence[tuple[int, str]] = ()
    cancelled: Sequence[tuple[int, str]] = ()
    released: Sequence[int] = ()

    def __len__(self) -> int:
        return len(self.sent) + len(self.retry) + len(self.failed) + len(self.cancelled) + len(self.released)


class DeliveryLedger:
    """The send ledger: fan-out, claims with a lease, and outcomes."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def events_to_fan_out(self, limit: int = 20) -> list[EventToFanOut]:
        rows = await self.pool.fetch(
            "SELECT event_id, case_id, occurred_at FROM notify.case_events"
            " WHERE fanned_out_at IS NULL ORDER BY recorded_at LIMIT $1",
            limit,
        )
        return [EventToFanOut(row["event_id"], row["case_id"], row["occurred_at"]) for row in rows]

    async def fan_out(self, event_id: UUID) -> int:
        """Write one delivery per subscribed supporter who signed the case before the event.

        Unsubscribed (from the case or from everything) supporters get no row.  Unique on
        (event, supporter): running it twice, or in two processes, inserts nothing more.
        Returns the number of rows inserted.
        """
        async with self.pool.acquire() as connection, connection.transaction():
            event = await connection.fetchrow(
                "SELECT case_id, kind, occurred_at FROM notify.case_events"
                " WHERE event_id = $1 AND fanned_out_at IS NULL FOR UPDATE SKIP LOCKED",
                event_id,
            )
            if event is None:
                return 0  # done already, or another process is on it
            status = await connection.execute(
                """
                INSERT INTO notify.deliveries (event_id, supporter_key, kind)
                SELECT $1, s.supporter_key, $3
                FROM notify.subscriptions s
                WHERE s.case_id = $2 AND s.signed_at < $4
                  AND NOT EXISTS (
                      SELECT 1 FROM notify.unsubscriptions u
                      WHERE u.supporter_key = s.supporter_key AND u.case_id IN ('', $2))
                ON CONFLICT (event_id, supporter_key) DO NOTHING
                """,
                event_id,
                event["case_id"],
                event["kind"],
                event["occurred_at"],
            )
            await connection.execute(
                "UPDATE notify.case_events SET fanned_out_at = now() WHERE event_id = $1", event_id
            )
            return int(status.rsplit(" ", 1)[-1])

    async def claim(self, limit: int, lease_s: float) -> list[ClaimedDelivery]:
        """Take up to ``limit`` due deliveries for ``lease_s`` seconds, counting an attempt each.

        Due: pending with ``next_attempt_at`` passed, or sending with an expired lease.
        Concurrent claimers skip each other's rows.  The supporter's details and whether
        they unsubscribed are read in the same statement (the send-time check).
        """
        rows = await self.pool.fetch(
            """
            WITH due AS (
                SELECT id FROM notify.deliveries
                WHERE state IN ('pending', 'sending') AND next_attempt_at <= now()
                ORDER BY next_attempt_at
                LIMIT $1
                FOR UPDATE SKIP LOCKED
            ), claimed AS (
                UPDATE notify.deliveries d
                SET state = 'sending', attempts = d.attempts + 1,
                    next_attempt_at = now() + make_interval(secs => $2)
                FROM due WHERE d.id = due.id
                RETURNING d.id, d.event_id, d.supporter_key, d.kind, d.attempts
            )
            SELECT c.id, c.event_id, c.supporter_key, c.kind, c.attempts,
                   s.email, s.first_name, s.locale,
                   EXISTS (
                       SELECT 1 FROM notify.unsubscriptions u
                       WHERE u.supporter_key = c.supporter_key AND u.case_id IN ('', e.case_id)
                   ) AS unsubscribed
            FROM claimed c
            JOIN notify.case_events e ON e.event_id = c.event_id
            LEFT JOIN notify.supporters s ON s.supporter_key = c.supporter_key
            ORDER BY c.id
            """,
            limit,
            lease_s,
        )
        return [
            ClaimedDelivery(
                id=row["id"],
                event_id=row["event_id"],
                kind=row["kind"],
                attempts=row["attempts"],
                recipient=None
                if row["email"] is None
                else Recipient(row["supporter_key"], row["email"], row["first_name"], row["locale"]),
                unsubscribed=row["unsubscribed"],
            )
            for row in rows
        ]

    async def case_news(self, event_ids: Collection[UUID]) -> dict[UUID, CaseNews]:
        rows = await self.pool.fetch(
            "SELECT event_id, kind, event FROM notify.case_events WHERE event_id = ANY($1::uuid[])",
            list(event_ids),
        )
        news: dict[UUID, CaseNews] = {}
        for row in rows:
            model = MilestoneReached if row["kind"] == "milestone" else VictoryDeclared
            news[row["event_id"]] = model.model_validate(row["event"])
        return news

    async def record(self, outcomes: Outcomes) -> None:
        """Record a set of outcomes in one transaction (all or nothing)."""
        if not len(outcomes):
            return
        async with self.pool.acquire() as connection, connection.transaction():
            if outcomes.sent:
                await connection.execute(
                    "UPDATE notify.deliveries SET state = 'sent', finished_at = now(), last_error = NULL"
                    " WHERE id = ANY($1::bigint[])",
                    list(outcomes.sent),
                )
            if outcomes.retry:
                await connection.execute(
                    """
                    UPDATE notify.deliveries d
                    SET state = 'pending', next_attempt_at = now() + make_interval(secs => x.delay),
                        last_error = x.error
                    FROM unnest($1::bigint[], $2::float8[], $3::text[]) AS x(id, delay, error)
                    WHERE d.id = x.id AND d.state = 'sending'
                    """,
                    [r.delivery_id for r in outcomes.retry],
                    [r.delay_s for r in outcomes.retry],
                    [r.error for r in outcomes.retry],
                )
            for state, finished in (("failed", outcomes.failed), ("cancelled", outcomes.cancelled)):
                if finished:
                    await connection.execute(
                        """
                        UPDATE notify.deliveries d
                        SET state = $3, finished_at = now(), last_error = x.error
                        FROM unnest($1::bigint[], $2::text[]) AS x(id, error)
                        WHERE d.id = x.id AND d.state IN ('pending', 'sending')
                        """,
                        [delivery_id for delivery_id, _ in finished],
                        [error for _, error in finished],
                        state,
                    )
            if outcomes.released:
                # Claimed but never tried (we are stopping): due at once, attempt not counted.
                await connection.execute(
                    "UPDATE notify.deliveries SET state = 'pending', attempts = attempts - 1,"
                    " next_attempt_at = now() WHERE id = ANY($1::bigint[]) AND state = 'sending'",
                    list(outcomes.released),
                )

    async def pending_count(self) -> int:
        count = await self.pool.fetchval(
            "SELECT count(*) FROM notify.deliveries WHERE state IN ('pending', 'sending')"
        )
        return int(count)


class Preferences:
    """Unsubscriptions and erasures: what a supporter asked of us.

    Built with the app (its routes need it) and given its pool when the lifespan starts.
    """

    def __init__(self, pool: Pool | None = None) -> None:
        self._pool = pool

    def attach(self, pool: Pool) -> None:
        self._pool = pool

    @property
    def pool(self) -> Pool:
        if self._pool is None:
            raise RuntimeError("notify's database pool is not open (the app is starting or stopping)")
        return self._pool

    async def unsubscribe(self, supporter_key: str, case_id: str | None) -> bool:
        """Stop news about ``case_id`` (everything when ``None``); pending mail is cancelled.

        Idempotent; returns whether this was new.
        """
        scope_case = case_id or ""
        async with self.pool.acquire() as connection, connection.transaction():
            inserted = await connection.fetchval(
                "INSERT INTO notify.unsubscriptions (supporter_key, case_id) VALUES ($1, $2)"
                " ON CONFLICT DO NOTHING RETURNING true",
                supporter_key,
                scope_case,
            )
            await connection.execute(
                """
                UPDATE notify.deliveries d
                SET state = 'cancelled', finished_at = now(), last_error = 'unsubscribed'
                FROM notify.case_events e
                WHERE e.event_id = d.event_id AND d.supporter_key = $1 AND d.state = 'pending'
                  AND ($2 = '' OR e.case_id = $2)
                """,
                supporter_key,
                scope_case,
            )
        return bool(inserted)

    async def supporter_locale(self, supporter_key: str) -> str | None:
        locale = await self.pool.fetchval(
            "SELECT locale FROM notify.supporters WHERE supporter_key = $1", supporter_key
        )
        return None if locale is None else str(locale)

    async def erase(self, supporter_key: str) -> bool:
        """Forget a supporter: their row, subscriptions, deliveries and unsubscriptions.

        Keeps only a tombstone (the key and when) so a replay of ``signatures.v1`` does
        not bring them back; a signature received after the erasure is a new consent.
        Returns whether notify held any data on them.
        """
        async with self.pool.acquire() as connection, connection.transaction():
            await connection.execute(_SUPPORTER_LIST_LOCK.format(mode=""))
            await connection.execute(
                "INSERT INTO notify.erasures (supporter_key) VALUES ($1)"
                " ON CONFLICT (supporter_key) DO UPDATE SET erased_at = now()",
                supporter_key,
            )
            deliveries = await connection.execute(
                "DELETE FROM notify.deliveries WHERE supporter_key = $1", supporter_key
            )
            await connection.execute(
                "DELETE FROM notify.unsubscriptions WHERE supporter_key = $1", supporter_key
            )
            supporter = await connection.execute(
                "DELETE FROM notify.supporters WHERE supporter_key = $1", supporter_key
            )
        return supporter != "DELETE 0" or deliveries != "DELETE 0"
