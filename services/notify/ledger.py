"""Everything notify keeps in Postgres (schema ``notify``), behind small typed methods.

- :class:`SupporterListApplier` folds ``signatures.v2`` into the subscriptions (who asked
  for news, who awaits confirmation, who confirmed) and stores the consumer's offsets in
  the same transaction.
- :func:`request_confirmations` writes the one confirmation email of each (case,
  supporter) awaiting it, once both its signature and its contact are stored; both
  appliers call it (the two arrive on two topics, in any order).
- :class:`CaseNewsApplier` records milestones and victories from ``case-events.v1`` (with
  offsets, in one transaction), and who was invalidated or restored; a replayed or
  duplicated event changes nothing.
- :class:`DeliveryLedger` fans a recorded event out into delivery rows (one
  ``INSERT ... SELECT`` per event, unique on (event, supporter)), claims due deliveries in
  batches with ``FOR UPDATE SKIP LOCKED`` and a lease, and records outcomes in batches.
- :class:`Preferences` holds unsubscriptions (erasure: :mod:`notify.erasure`).

Confirmations and reminders are claimed before any news (``priority`` 0 against 1), so
a 100,000-recipient mailing never delays them; a claim can also bring a few news however
many confirmations are due, so the sender can give news its share during a surge.  Their
event id is derived from (kind, case, supporter): each is written once.

Delivery states: ``pending`` -> ``sending`` (claimed; ``next_attempt_at`` is the lease
end) -> ``sent`` | ``failed`` | ``cancelled``, or back to ``pending`` with a later
``next_attempt_at`` after a temporary failure.  A ``sending`` row whose lease ran out
(its process died) is due again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

import asyncpg
from cryptography.exceptions import InvalidTag

from clameur.consumer import Batch
from clameur.events import (
    CaseEvent,
    MilestoneReached,
    SignatureLogEvent,
    SupportersInvalidated,
    SupportersRestored,
    VictoryDeclared,
)
from clameur.offsets import OffsetTable
from notify.messages import CaseNews, Recipient, kind_of
from notify.supporters import SupporterChanges, fold_signatures

if TYPE_CHECKING:
    Pool = asyncpg.Pool[Any]
    Connection = asyncpg.Connection[Any] | asyncpg.pool.PoolConnectionProxy[Any]

# Writers of the supporter list take this lock shared, erasure takes it exclusive, so a
# batch folded before an erasure committed cannot re-create the erased supporter.
_SUPPORTER_LIST_LOCK = "SELECT pg_advisory_xact_lock{mode}(hashtext('notify.supporters'))"

# The signature and the contact of a confirmation arrive through two consumers: each
# takes this lock before looking for the other, so of two concurrent transactions the
# second sees what the first committed and no pair is missed.
_CONFIRMATIONS_LOCK = "SELECT pg_advisory_xact_lock(hashtext('notify.confirmations'))"

CONFIRMATION_KINDS = ("confirmation", "reminder")
"""Deliveries that ask a supporter to confirm; claimed before any news."""

logger = logging.getLogger(__name__)


def consumer_offsets(group_id: str) -> OffsetTable:
    """Where the consumer group ``group_id`` keeps its next offsets (one table for notify's consumers)."""
    return OffsetTable("notify.consumer_offsets", group_id=group_id)


class GroupApplier:
    """What every notify ``BatchApplier`` shares: its pool and its consumer group, whose
    offsets (:func:`consumer_offsets`) each ``apply`` stores in the transaction of its effect."""

    def __init__(self, pool: Pool, group_id: str) -> None:
        self.pool = pool
        self.group_id = group_id
        self.offsets = consumer_offsets(group_id)

    async def stored_offsets(self, topic: str, partitions: Collection[int]) -> dict[int, int]:
        return await self.offsets.read(self.pool, topic, partitions)


class SupporterListApplier(GroupApplier):
    """``BatchApplier`` for ``signatures.v2``: subscriptions, confirmations, rejections.

    ``on_recorded`` (if given) is called after commit with the number of new
    (case, supporter) subscriptions: a supporter's first signature of a case that asked
    for news or awaits confirmation.
    """

    def __init__(self, pool: Pool, group_id: str, on_recorded: Any = None) -> None:
        super().__init__(pool, group_id)
        self._on_recorded = on_recorded

    async def apply(self, batch: Batch[SignatureLogEvent]) -> None:
        signatures = [consumed.event for consumed in batch.events]
        keys = sorted({e.supporter_key for e in signatures if e.type == "SignatureAccepted"})
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
            await request_confirmations(connection, sorted({s.supporter_key for s in changes.subscriptions}))
            await self.offsets.store(connection, batch.topic, batch.next_offsets)
        if self._on_recorded is not None and subscribed:
            self._on_recorded(subscribed)


async def _write_supporters(connection: Connection, changes: SupporterChanges) -> int:
    """Apply the batch's changes; returns how many (case, supporter) subscriptions are new."""
    if changes.erased:
        await _forget_erased(connection, changes.erased)
    if changes.rejected:
        await connection.execute(
            """
            DELETE FROM notify.subscriptions s USING unnest($1::text[], $2::text[]) AS r(case_id, key)
            WHERE s.case_id = r.case_id AND s.supporter_key = r.key AND s.confirmed_at IS NULL
            """,
            [case_id for case_id, _ in changes.rejected],
            [key for _, key in changes.rejected],
        )
    inserted = 0
    if changes.subscriptions:
        subscriptions = changes.subscriptions
        # xmax = 0 on a returned row means it was inserted, not updated: a replayed batch
        # (after a crash or a rebalance) counts nothing again.
        rows = await connection.fetch(
            """
            INSERT INTO notify.subscriptions AS s
                (case_id, supporter_key, signed_at, wants_updates, awaits_confirmation)
            SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::bool[], $5::bool[])
            ON CONFLICT (case_id, supporter_key) DO UPDATE
                SET signed_at = LEAST(s.signed_at, EXCLUDED.signed_at),
                    wants_updates = s.wants_updates OR EXCLUDED.wants_updates,
                    awaits_confirmation = s.awaits_confirmation OR EXCLUDED.awaits_confirmation
            RETURNING (xmax = 0) AS inserted
            """,
            [s.case_id for s in subscriptions],
            [s.supporter_key for s in subscriptions],
            [s.signed_at for s in subscriptions],
            [s.wants_updates for s in subscriptions],
            [s.awaits_confirmation for s in subscriptions],
        )
        inserted = sum(1 for row in rows if row["inserted"])
    if changes.confirmed:
        await connection.execute(
            """
            UPDATE notify.subscriptions s SET confirmed_at = LEAST(s.confirmed_at, c.at)
            FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS c(case_id, key, at)
            WHERE s.case_id = c.case_id AND s.supporter_key = c.key
            """,
            [case_id for case_id, _ in changes.confirmed],
            [key for _, key in changes.confirmed],
            list(changes.confirmed.values()),
        )
    return inserted


async def _forget_erased(connection: Connection, erased: Mapping[str, datetime]) -> None:
    """``SupporterErased`` read back (a rebuild, or another notify): the supporter's
    subscriptions and pending deliveries go, and the erasure time is kept so a contact or
    signature replayed from before it is not taken back in."""
    keys, times = list(erased), list(erased.values())
    await connection.execute("DELETE FROM notify.subscriptions WHERE supporter_key = ANY($1::text[])", keys)
    await connection.execute(
        "DELETE FROM notify.deliveries WHERE supporter_key = ANY($1::text[]) AND state = 'pending'", keys
    )
    await connection.execute(
        """
        INSERT INTO notify.erasures AS e (supporter_key, erased_at)
        SELECT * FROM unnest($1::text[], $2::timestamptz[])
        ON CONFLICT (supporter_key) DO UPDATE SET erased_at = GREATEST(e.erased_at, EXCLUDED.erased_at)
        """,
        keys,
        times,
    )


async def request_confirmations(connection: Connection, supporter_keys: Sequence[str]) -> None:
    """Write the confirmation email of each of these supporters' unconfirmed cases, once.

    A (case, supporter) needs one when its signature awaits confirmation, or asks for
    news, and it is not confirmed; it is written only when the contact is stored too.
    Unique on (event, supporter) with a derived event id: calling it again writes nothing.
    """
    if not supporter_keys:
        return
    await connection.execute(_CONFIRMATIONS_LOCK)
    await connection.execute(
        """
        INSERT INTO notify.deliveries (event_id, supporter_key, kind, case_id, priority)
        SELECT md5('clameur.confirmation|' || s.case_id || '|' || s.supporter_key)::uuid,
               s.supporter_key, 'confirmation', s.case_id, 0
        FROM notify.subscriptions s
        JOIN notify.contacts c ON c.supporter_key = s.supporter_key
        WHERE s.supporter_key = ANY($1::text[]) AND s.confirmed_at IS NULL
          AND (s.awaits_confirmation OR s.wants_updates)
        ON CONFLICT (event_id, supporter_key) DO NOTHING
        """,
        list(supporter_keys),
    )


class CaseNewsApplier(GroupApplier):
    """``BatchApplier`` for ``case-events.v1``: records milestones and victories to fan out.

    ``CaseClosed`` tells supporters nothing (design choice: no email when a case closes
    without a victory); its offset is stored all the same.
    """

    async def apply(self, batch: Batch[CaseEvent]) -> None:
        news = [c.event for c in batch.events if isinstance(c.event, MilestoneReached | VictoryDeclared)]
        await batch.previous_applied()  # the BatchApplier contract, as above
        async with self.pool.acquire() as connection, connection.transaction():
            for consumed in batch.events:
                # In log order: a restore after an invalidation in the same batch undoes it.
                if isinstance(consumed.event, SupportersInvalidated | SupportersRestored):
                    await _apply_invalidation(connection, consumed.event)
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


async def _apply_invalidation(
    connection: Connection, event: SupportersInvalidated | SupportersRestored
) -> None:
    """Leave invalidated supporters out of the case's later news; a restore lets them back."""
    keys = list(event.supporter_keys)
    if isinstance(event, SupportersInvalidated):
        await connection.execute(
            "INSERT INTO notify.invalidated_supporters (case_id, supporter_key, invalidation_id)"
            " SELECT $1, key, $3 FROM unnest($2::text[]) AS key ON CONFLICT DO NOTHING",
            event.case_id,
            keys,
            event.invalidation_id,
        )
    else:
        await connection.execute(
            "DELETE FROM notify.invalidated_supporters"
            " WHERE case_id = $1 AND supporter_key = ANY($2::text[]) AND invalidation_id = $3",
            event.case_id,
            keys,
            event.invalidation_id,
        )


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
    case_id: str = ""
    answered: bool = False
    """A confirmation or reminder whose (case, supporter) is confirmed or rejected since."""
    news_only: bool = False
    """A confirmation that asks only whether the supporter wants news (a ``"none"`` case)."""
    suppressed: bool = False
    """The address is suppressed (notify.suppressions) for this case or every case: never sent."""


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


_CLAIM = """
    WITH urgent AS (
        SELECT id FROM notify.deliveries
        WHERE priority = 0 AND state IN ('pending', 'sending') AND next_attempt_at <= now()
        ORDER BY next_attempt_at
        LIMIT $1
        FOR UPDATE SKIP LOCKED
    ), news AS (
        SELECT id FROM notify.deliveries
        WHERE priority > 0 AND state IN ('pending', 'sending') AND next_attempt_at <= now()
        ORDER BY priority, next_attempt_at
        LIMIT GREATEST($3, $1 - (SELECT count(*) FROM urgent))
        FOR UPDATE SKIP LOCKED
    ), due AS (
        SELECT id FROM urgent UNION ALL SELECT id FROM news
    ), claimed AS (
        UPDATE notify.deliveries d
        SET state = 'sending', attempts = d.attempts + 1,
            next_attempt_at = now() + make_interval(secs => $2)
        FROM due WHERE d.id = due.id
        RETURNING d.id, d.event_id, d.supporter_key, d.kind, d.attempts, d.case_id, d.priority
    )
    SELECT c.id, c.event_id, c.supporter_key, c.kind, c.attempts,
           COALESCE(c.case_id, e.case_id) AS case_id,
           k.email_sealed, k.first_name_sealed, k.locale,
           c.priority > 0 AND EXISTS (
               SELECT 1 FROM notify.unsubscriptions u
               WHERE u.supporter_key = c.supporter_key
                 AND u.case_id IN ('', COALESCE(c.case_id, e.case_id))
           ) AS unsubscribed,
           EXISTS (
               SELECT 1 FROM notify.suppressions x
               WHERE x.address_hash = k.address_hash
                 AND x.case_id IN ('', COALESCE(c.case_id, e.case_id))
           ) AS suppressed,
           c.priority = 0 AND NOT EXISTS (
               SELECT 1 FROM notify.subscriptions s
               WHERE s.case_id = c.case_id AND s.supporter_key = c.supporter_key
                 AND s.confirmed_at IS NULL
           ) AS answered,
           c.priority = 0 AND NOT COALESCE((
               SELECT s.awaits_confirmation FROM notify.subscriptions s
               WHERE s.case_id = c.case_id AND s.supporter_key = c.supporter_key
           ), true) AS news_only
    FROM claimed c
    LEFT JOIN notify.case_events e ON e.event_id = c.event_id
    LEFT JOIN notify.contacts k ON k.supporter_key = c.supporter_key
    ORDER BY c.priority, c.id
    """
"""Due rows taken and leased, each with its contact, unsubscription, suppression, answer."""


class DeliveryLedger:
    """The send ledger: fan-out, claims with a lease, and outcomes.

    ``open_contact(key, field, sealed)`` opens a sealed contact field
    (:meth:`notify.contacts.ContactCipher.open`).
    """

    def __init__(self, pool: Pool, open_contact: Callable[[str, str, bytes], str]) -> None:
        self.pool = pool
        self._open = open_contact

    async def events_to_fan_out(self, limit: int = 20) -> list[EventToFanOut]:
        rows = await self.pool.fetch(
            "SELECT event_id, case_id, occurred_at FROM notify.case_events"
            " WHERE fanned_out_at IS NULL ORDER BY recorded_at LIMIT $1",
            limit,
        )
        return [EventToFanOut(row["event_id"], row["case_id"], row["occurred_at"]) for row in rows]

    async def fan_out(self, event_id: UUID) -> int:
        """Write one delivery per confirmed subscriber who signed the case before the event.

        Only supporters who asked for news and confirmed their address for the case get a
        row; unsubscribed (from the case or from everything) and invalidated supporters
        (until restored) get none.  Unique on
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
                INSERT INTO notify.deliveries (event_id, supporter_key, kind, case_id)
                SELECT $1, s.supporter_key, $3, $2
                FROM notify.subscriptions s
                WHERE s.case_id = $2 AND s.signed_at < $4
                  AND s.wants_updates AND s.confirmed_at IS NOT NULL
                  AND NOT EXISTS (
                      SELECT 1 FROM notify.invalidated_supporters i
                      WHERE i.case_id = s.case_id AND i.supporter_key = s.supporter_key)
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

    async def claim(self, limit: int, lease_s: float, *, news_at_least: int = 0) -> list[ClaimedDelivery]:
        """Take up to ``limit`` due deliveries for ``lease_s`` seconds, counting an attempt each.

        Due: pending with ``next_attempt_at`` passed, or sending with an expired lease;
        confirmations and reminders first (priority 0), then news, with up to
        ``news_at_least`` news however many confirmations are due (so up to ``limit +
        news_at_least`` rows: the sender gives news a share of its slots).  Concurrent claimers
        skip each other's rows.  The supporter's contact (opened here), whether they
        unsubscribed, and whether their address is suppressed (by its hash, for this case
        or every case) are read in the same statement: the send-time check.  Unsubscribing
        stops news, not the confirmation of a new signature; a suppression stops every
        kind ("never mail this address again", whatever the reason).
        """
        rows = await self.pool.fetch(_CLAIM, limit, lease_s, news_at_least)
        return [
            ClaimedDelivery(
                id=row["id"],
                event_id=row["event_id"],
                kind=row["kind"],
                attempts=row["attempts"],
                recipient=self._recipient(row),
                unsubscribed=row["unsubscribed"],
                case_id=row["case_id"] or "",
                answered=row["answered"],
                news_only=row["news_only"],
                suppressed=row["suppressed"],
            )
            for row in rows
        ]

    def _recipient(self, row: asyncpg.Record) -> Recipient | None:
        """The opened contact; ``None`` when erased, or when it does not open (wrong key)."""
        if row["email_sealed"] is None:
            return None
        key = row["supporter_key"]
        try:
            email = self._open(key, "email", row["email_sealed"])
            first_name = self._open(key, "first_name", row["first_name_sealed"])
        except InvalidTag:
            logger.error(
                "a sealed contact does not open: CLAMEUR_SECRET changed?", extra={"delivery": row["id"]}
            )
            return None
        return Recipient(key, email, first_name, row["locale"])

    async def request_reminders(self, after_s: float) -> int:
        """Write the one reminder of each confirmation sent ``after_s`` ago and still unconfirmed.

        Only a sent confirmation gets one (a permanent failure leaves none); its derived
        event id makes it once per (case, supporter).  Returns how many were written.
        """
        status = await self.pool.execute(
            """
            INSERT INTO notify.deliveries (event_id, supporter_key, kind, case_id, priority)
            SELECT md5('clameur.reminder|' || d.case_id || '|' || d.supporter_key)::uuid,
                   d.supporter_key, 'reminder', d.case_id, 0
            FROM notify.deliveries d
            JOIN notify.subscriptions s ON s.case_id = d.case_id AND s.supporter_key = d.supporter_key
            WHERE d.kind = 'confirmation' AND d.state = 'sent'
              AND d.finished_at <= now() - make_interval(secs => $1)
              AND s.confirmed_at IS NULL
            ON CONFLICT (event_id, supporter_key) DO NOTHING
            """,
            after_s,
        )
        return int(status.rsplit(" ", 1)[-1])

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
    """Unsubscriptions: what a supporter asked of us (erasure is :class:`notify.erasure.Eraser`).

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
            "SELECT locale FROM notify.contacts WHERE supporter_key = $1", supporter_key
        )
        return None if locale is None else str(locale)
