"""Invalidations: signatures taken back out of a case's counts, and given back, in log order.

An invalidation is an event on signatures.v2 (``InvalidationRequested``, then perhaps
``InvalidationRevoked``), applied by the counter store in the batch transaction that
stores the offsets, at its place in the log: the counted rows of the case that match its
filter *at that point of the log* are the ones it takes.  A replay (same batch twice, or
the whole log into an empty database) reaches the same point with the same rows, so it
takes the same ones: applying is idempotent (an invalidation already recorded, or a
revocation already recorded, changes nothing).

Overlapping invalidations, exactly: a row belongs to at most one invalidation, the first
that took it (``tally.signatures.invalidation_id``); a later one whose filter also
matches it does not count it twice, and does not report it in its ``matched``.  Revoking
an invalidation hands each of its rows to the earliest *later* active invalidation of the
case whose filter matches the row (that one would have taken it, had the first not); a row
no such invalidation matches counts again.  Later only: an earlier invalidation that did
not take the row did so because the row was not yet counted at its point of the log.

Both are steps of the counter store (``EVENT_STEPS``).  Taking out lowers the counters (no
threshold is crossed going down); giving back
adds through the batch's counter changes (``BatchEffects``), so a restore crosses thresholds
by the same rule as signatures, and the outbox's unique ``milestone:<case>:<threshold>``
keeps an announced milestone from being announced again after falling below it.  Supporters taken out or
given back are sent to notify through the outbox (``SupportersInvalidated`` /
``SupportersRestored`` on case-events.v1, 1,000 supporter keys an event, event ids derived
from the invalidation so a replay sends the same events again, which notify dedupes).
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from uuid import UUID

import asyncpg

from clameur.events import (
    Event,
    InvalidationFilter,
    InvalidationRequested,
    InvalidationRevoked,
    SupportersInvalidated,
    SupportersRestored,
)
from tally.counting import (
    CounterKey,
    InMemoryInvalidations,
    SignatureFacts,
    deltas_of_groups,
    facts_of,
    is_empty,
    matches,
)
from tally.outbox import Connection, stage, stage_many

if TYPE_CHECKING:  # the counter store imports this module for its steps
    from tally.counter_store import BatchEffects

__all__ = [  # the rebuild's twin lives in tally.counting; tests and tools find it here too
    "InMemoryInvalidations",
    "SignatureFacts",
    "facts_of",
    "is_empty",
    "matches",
]

logger = logging.getLogger(__name__)

SUPPORTERS_PER_EVENT = 1000
"""Supporter keys per ``SupportersInvalidated``/``SupportersRestored``: a bot wave of
100,000 makes 100 events of about 70 kB, well under Kafka's 1 MB record limit."""

InvalidationEvent = InvalidationRequested | InvalidationRevoked

_EVENT_IDS = uuid.UUID("0c6f8f34-3a4e-4d0a-9f52-6a1f1d1c7e55")


# -- the filter, as SQL --------------------------------------------------------------------------


def filter_predicate(invalidation_filter: InvalidationFilter, first_parameter: int) -> tuple[str, list[Any]]:
    """The filter as a SQL condition on ``tally.signatures`` and its parameters.

    Every field given must match (AND); a list matches any of its values.  The window is
    half-open: ``received_from <= received_at < received_until``.  An empty filter is
    ``FALSE``: it takes out nothing (the API refuses it; a record written by other means
    must not empty a case).  Parameters are numbered from ``first_parameter``.
    """
    conditions: list[str] = []
    parameters: list[Any] = []

    def parameter(value: Any) -> str:
        parameters.append(value)
        return f"${first_parameter + len(parameters) - 1}"

    f = invalidation_filter
    for column, values in (
        ("email_domain", f.email_domains),
        ("widget", f.widget_keys),
        ("partner", f.partners),
        ("country", f.countries),
        ("supporter_key", f.supporter_keys),
    ):
        if values is not None:
            conditions.append(f"{column} = ANY({parameter(list(values))}::text[])")
    if f.received_from is not None:
        conditions.append(f"received_at >= {parameter(f.received_from)}")
    if f.received_until is not None:
        conditions.append(f"received_at < {parameter(f.received_until)}")
    if f.page_url_prefix is not None:
        conditions.append(f"starts_with(page_url, {parameter(f.page_url_prefix)})")
    return (" AND ".join(conditions) if conditions else "FALSE"), parameters


# -- what a set of rows amounts to ---------------------------------------------------------------


@dataclass(frozen=True)
class Matched:
    """Signatures taken out (or given back): how many, per country and per action."""

    matched: int = 0
    by_country: dict[str, int] = field(default_factory=dict)
    by_action: dict[str, int] = field(default_factory=dict)

    def document(self) -> dict[str, Any]:
        return {"matched": self.matched, "by_country": self.by_country, "by_action": self.by_action}


def matched_of(groups: Iterable[tuple[str, str, int]]) -> Matched:
    """Fold ``(country, action, signatures)`` groups into :class:`Matched` (keys sorted)."""
    by_country: Counter[str] = Counter()
    by_action: Counter[str] = Counter()
    for country, action, count in groups:
        by_country[country] += count
        by_action[action] += count
    return Matched(
        sum(by_country.values()), dict(sorted(by_country.items())), dict(sorted(by_action.items()))
    )


def counter_deltas(case_id: str, matched: Iterable[tuple[str, str, int]], sign: int) -> dict[CounterKey, int]:
    """The counter deltas of ``(country, action, signatures)`` groups: ``sign`` -1 takes out, +1 restores."""
    return {
        key: sign * count
        for key, count in deltas_of_groups({(case_id, c, a): n for c, a, n in matched}).items()
    }


def supporter_chunks(supporter_keys: Iterable[str]) -> list[tuple[str, ...]]:
    """The distinct supporter keys, sorted, in chunks of :data:`SUPPORTERS_PER_EVENT`."""
    ordered = sorted(set(supporter_keys))
    return [
        tuple(ordered[n : n + SUPPORTERS_PER_EVENT]) for n in range(0, len(ordered), SUPPORTERS_PER_EVENT)
    ]


def notice_event_id(invalidation_id: UUID, kind: str, chunk: int) -> UUID:
    """The same id for the same notice on every replay, so notify can dedupe it."""
    return uuid.uuid5(_EVENT_IDS, f"{invalidation_id}:{kind}:{chunk}")


# -- applying, in the batch transaction ----------------------------------------------------------


async def apply_invalidation(
    connection: Connection, event: InvalidationRequested, effects: BatchEffects
) -> None:
    """Take out the counted rows of the case the filter matches at this point of the log.

    The counter store's step for ``InvalidationRequested`` (``EVENT_STEPS``), in the batch
    transaction that stores the offsets.  Idempotent: an invalidation already recorded
    changes nothing.  The counters go down through ``effects.uncount`` (written once at the
    end of the batch); the supporters taken out are staged for notify.
    """
    known = await connection.fetchval(
        "SELECT 1 FROM tally.invalidations WHERE id = $1", event.invalidation_id
    )
    if known:
        return
    condition, parameters = filter_predicate(event.filter, 3)
    taken, matched = await _moved(
        connection,
        f"""
        UPDATE tally.signatures SET invalidation_id = $1
        WHERE case_id = $2 AND state = 'counted' AND invalidation_id IS NULL AND {condition}
        RETURNING supporter_key, country, action
        """,  # noqa: S608 - the condition holds only parameter placeholders
        [event.invalidation_id, event.case_id, *parameters],
        event.case_id,
        effects.uncount,
    )
    effects.invalidated += matched.matched
    await connection.execute(
        """
        INSERT INTO tally.invalidations
            (id, case_id, reason, filter, requested_by, requested_at, matched, by_country, by_action)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
        """,
        event.invalidation_id,
        event.case_id,
        event.reason,
        event.filter.model_dump(mode="json", exclude_none=True),
        event.requested_by,
        event.occurred_at,
        matched.matched,
        matched.by_country,
        matched.by_action,
    )
    effects.notices += await _announce_invalidated(connection, event, effects.case_events_topic, taken)
    logger.info("invalidation applied", extra={"case_id": event.case_id, "matched": matched.matched})


async def apply_revocation(connection: Connection, event: InvalidationRevoked, effects: BatchEffects) -> None:
    """Give the invalidation's rows back (or to a later active invalidation that matches them).

    The counter store's step for ``InvalidationRevoked``.  Idempotent: a revocation
    already recorded changes nothing.  The counters go up through ``effects.restore``, so
    a restore crosses thresholds by the same rule as signatures (and the outbox's unique
    milestone key keeps an announced milestone from being announced again).
    """
    invalidation = await connection.fetchrow(
        "SELECT applied_seq, revoked_at FROM tally.invalidations WHERE id = $1 AND case_id = $2 FOR UPDATE",
        event.invalidation_id,
        event.case_id,
    )
    if invalidation is None:
        # Not before its request in the log: written by other means; nothing to give back.
        logger.warning("revocation of an unknown invalidation", extra={"case_id": event.case_id})
        return
    if invalidation["revoked_at"] is not None:
        return
    await _hand_over(connection, event, invalidation["applied_seq"])
    restored, matched = await _moved(
        connection,
        """
        UPDATE tally.signatures SET invalidation_id = NULL
        WHERE case_id = $1 AND invalidation_id = $2
        RETURNING supporter_key, country, action
        """,
        [event.case_id, event.invalidation_id],
        event.case_id,
        effects.restore,
    )
    effects.restored += matched.matched
    await connection.execute(
        """
        UPDATE tally.invalidations
        SET revoked_at = $2, revoked_by = $3, restored = $4, restored_by_country = $5, restored_by_action = $6
        WHERE id = $1
        """,
        event.invalidation_id,
        event.occurred_at,
        event.revoked_by,
        matched.matched,
        matched.by_country,
        matched.by_action,
    )
    effects.notices += await _announce_restored(connection, event, effects.case_events_topic, restored)


async def _hand_over(connection: Connection, event: InvalidationRevoked, applied_seq: int) -> None:
    """Pass the revoked invalidation's rows to the later active ones that match them, in log order."""
    later = await connection.fetch(
        """
        SELECT id, filter FROM tally.invalidations
        WHERE case_id = $1 AND applied_seq > $2 AND revoked_at IS NULL
        ORDER BY applied_seq
        """,
        event.case_id,
        applied_seq,
    )
    for other in later:
        condition, parameters = filter_predicate(InvalidationFilter.model_validate(other["filter"]), 4)
        await connection.execute(
            f"""
            UPDATE tally.signatures SET invalidation_id = $1
            WHERE case_id = $2 AND invalidation_id = $3 AND {condition}
            """,  # noqa: S608 - the condition holds only parameter placeholders
            other["id"],
            event.case_id,
            event.invalidation_id,
            *parameters,
        )


async def _announce_invalidated(
    connection: Connection, event: InvalidationRequested, topic: str, supporter_keys: Sequence[str]
) -> int:
    """Stage ``SupportersInvalidated`` for the supporters taken out, in chunks; returns the rows staged."""
    return await _stage_notices(connection, topic, event, SupportersInvalidated, supporter_keys)


async def _announce_restored(
    connection: Connection, event: InvalidationRevoked, topic: str, supporter_keys: Sequence[str]
) -> int:
    """Stage ``SupportersRestored`` for the supporters none of whose rows of the case stay out."""
    still_out = await connection.fetch(
        """
        SELECT DISTINCT supporter_key FROM tally.signatures
        WHERE case_id = $1 AND invalidation_id IS NOT NULL AND supporter_key = ANY($2::text[])
        """,
        event.case_id,
        list(set(supporter_keys)),
    )
    held = {row["supporter_key"] for row in still_out}
    back = [key for key in supporter_keys if key not in held]
    return await _stage_notices(connection, topic, event, SupportersRestored, back)


async def _stage_notices(
    connection: Connection,
    topic: str,
    event: InvalidationRequested | InvalidationRevoked,
    notice: type[SupportersInvalidated | SupportersRestored],
    supporter_keys: Iterable[str],
) -> int:
    """Stage ``notice`` events for ``supporter_keys``, in chunks, each with an event id and an
    outbox key derived from the invalidation and the chunk's number; returns the rows staged."""
    label = "invalidated" if notice is SupportersInvalidated else "restored"
    notices: list[tuple[str, Event, str | None]] = [
        (
            event.case_id,
            notice(
                event_id=notice_event_id(event.invalidation_id, label, n),
                case_id=event.case_id,
                invalidation_id=event.invalidation_id,
                supporter_keys=chunk,
            ),
            f"{label}:{event.invalidation_id}:{n}",
        )
        for n, chunk in enumerate(supporter_chunks(supporter_keys))
    ]
    return await stage_many(connection, topic, notices)


async def _moved(
    connection: Connection,
    update: str,
    arguments: Sequence[Any],
    case_id: str,
    move: Callable[[str, str, str, int], None],
) -> tuple[list[str], Matched]:
    """Run ``update`` (an ``UPDATE tally.signatures`` of the case ``RETURNING supporter_key,
    country, action``) and hand each (country, action) group of the rows it moved to
    ``move`` (out of or back into the counts); returns their supporter keys and what moved."""
    rows = await connection.fetch(update, *arguments)
    counts = Counter((row["country"], row["action"]) for row in rows)
    groups = [(country, action, count) for (country, action), count in counts.items()]
    for country, action, count in groups:
        move(case_id, country, action, count)
    return [row["supporter_key"] for row in rows], matched_of(groups)


# -- the admin API's reads and writes ------------------------------------------------------------


async def dry_run(pool: asyncpg.Pool[Any], case_id: str, invalidation_filter: InvalidationFilter) -> Matched:
    """What the filter would take out now: the counted, not yet invalidated rows it matches."""
    condition, parameters = filter_predicate(invalidation_filter, 2)
    rows = await pool.fetch(
        f"""
        SELECT country, action, count(*) AS signatures FROM tally.signatures
        WHERE case_id = $1 AND state = 'counted' AND invalidation_id IS NULL AND {condition}
        GROUP BY country, action
        """,  # noqa: S608 - the condition holds only parameter placeholders
        case_id,
        *parameters,
    )
    return matched_of((row["country"], row["action"], row["signatures"]) for row in rows)


async def request(pool: asyncpg.Pool[Any], signatures_topic: str, event: InvalidationEvent) -> None:
    """Write the event to the outbox, for signatures.v2 (key: the case id): tally applies it from the log."""
    async with pool.acquire() as connection, connection.transaction():
        await stage(connection, signatures_topic, event.case_id, event)


_COLUMNS = """id, case_id, reason, filter, requested_by, requested_at, applied_at, matched, by_country,
    by_action, revoked_at, revoked_by, restored, restored_by_country, restored_by_action"""


def invalidation_document(row: asyncpg.Record) -> dict[str, Any]:
    """An applied invalidation as the admin API shows it."""
    document: dict[str, Any] = {
        "id": str(row["id"]),
        "case_id": row["case_id"],
        "reason": row["reason"],
        "filter": row["filter"],
        "by": row["requested_by"],
        "at": row["requested_at"].isoformat(),
        "applied_at": row["applied_at"].isoformat(),
        "matched": row["matched"],
        "by_country": row["by_country"],
        "by_action": row["by_action"],
        "revoked_at": row["revoked_at"].isoformat() if row["revoked_at"] else None,
        "revoked_by": row["revoked_by"],
    }
    if row["revoked_at"] is not None:
        document["restored"] = {
            "matched": row["restored"],
            "by_country": row["restored_by_country"],
            "by_action": row["restored_by_action"],
        }
    return document


async def applied(pool: asyncpg.Pool[Any], case_id: str, invalidation_id: UUID) -> dict[str, Any] | None:
    """The invalidation once tally has applied it, else None."""
    row = await pool.fetchrow(
        f"SELECT {_COLUMNS} FROM tally.invalidations WHERE id = $1 AND case_id = $2",  # noqa: S608 - constant
        invalidation_id,
        case_id,
    )
    return invalidation_document(row) if row is not None else None


async def of_case(pool: asyncpg.Pool[Any], case_id: str) -> list[dict[str, Any]]:
    """The case's applied invalidations, in the order they were applied."""
    rows = await pool.fetch(
        f"SELECT {_COLUMNS} FROM tally.invalidations WHERE case_id = $1 ORDER BY applied_seq",  # noqa: S608
        case_id,
    )
    return [invalidation_document(row) for row in rows]


async def case_exists(pool: asyncpg.Pool[Any], case_id: str) -> bool:
    return bool(await pool.fetchval("SELECT 1 FROM tally.cases WHERE id = $1", case_id))
