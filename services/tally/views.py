"""What the public reads about a case: its state and its counts, with an ETag.

Per-country counts below the case's ``small_count_threshold`` are folded into
``"other"`` in the public document (a country with two signers could single them out);
the view keeps the exact counts for the operators (``counts``).

Widgets poll during a surge, so reads of one case share one database query for a short
while (``cache_s``), and clients revalidate with ``If-None-Match``.  The ETag is weak:
it names the case's version and counts, not the bytes of the body.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

import asyncpg
import orjson

from clameur.events import CaseState
from tally.case_store import state_of
from tally.cases import case_fields
from tally.counting import CaseCounts, case_counts


class CaseView:
    """One case as ``GET /v1/cases/{id}`` shows it (``document``), and its exact ``counts``."""

    __slots__ = ("counts", "document", "etag", "state", "version")

    def __init__(self, document: dict[str, Any], state: CaseState, counts: CaseCounts) -> None:
        self.document = document
        self.state = state
        self.counts = counts
        self.version = state.version
        self.etag = etag_of([self.etag_part])

    @property
    def total(self) -> int:
        return int(self.document["total"])

    @property
    def etag_part(self) -> tuple[Any, ...]:
        document = self.document
        return (
            self.version,
            document["total"],
            document["pending"],
            document["by_country"],
            document["by_action"],
        )


OTHER_COUNTRIES = "other"


def folded_countries(by_country: dict[str, int], threshold: int) -> dict[str, int]:
    """Counts of ``threshold`` or more as they are; the smaller ones summed as ``"other"`` (if any)."""
    shown = {country: count for country, count in by_country.items() if count >= threshold}
    other = sum(count for count in by_country.values() if count < threshold)
    if other:
        shown[OTHER_COUNTRIES] = other
    return shown


def etag_of(parts: Sequence[tuple[Any, ...]]) -> str:
    """A weak ETag of case versions and counts (any count or version change changes it)."""
    digest = hashlib.blake2b(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS), digest_size=12).hexdigest()
    return f'W/"{digest}"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Weak comparison (RFC 9110 13.1.2) of an ``If-None-Match`` header with ``etag``."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    wanted = etag.removeprefix("W/")
    return any(candidate.strip().removeprefix("W/") == wanted for candidate in if_none_match.split(","))


def case_view(row: asyncpg.Record, counts: CaseCounts, counted_at: datetime | None) -> CaseView:
    """The public document of a case row and its counts (pure): small country counts folded."""
    state = state_of(row)
    updated_at = max(state.updated_at, counted_at) if counted_at is not None else state.updated_at
    document: dict[str, Any] = {
        "id": state.case_id,
        **case_fields(state),
        "total": counts.total,
        "pending": counts.pending,
        "by_country": folded_countries(counts.by_country, state.small_count_threshold),
        "by_action": counts.by_action,
        "updated_at": updated_at.isoformat(),
    }
    if state.victory is not None:
        document["victory"] = state.victory.model_dump(mode="json")
    return CaseView(document, state, counts)


class CaseReader(Protocol):
    async def case(self, case_id: str) -> CaseView | None:
        """The case's view, or None when no case has this id."""
        ...

    async def cases(self) -> list[CaseView]:
        """Every case, newest first."""
        ...


_CASE_COLUMNS = (
    "id, title, status, goal, milestones, actions, locales, default_locale, target, victory, "
    "version, updated_at, confirmation, small_count_threshold, retention_days"
)


class PostgresCaseReader:
    """:class:`CaseReader` over ``tally.cases`` and ``tally.counters``, cached ``cache_s``."""

    def __init__(self, pool: asyncpg.Pool[Any], *, cache_s: float = 0.5) -> None:
        self._pool = pool
        self._cache_s = cache_s
        self._cached: dict[str, tuple[float, CaseView | None]] = {}
        self._cached_list: tuple[float, list[CaseView]] | None = None
        self._lock = asyncio.Lock()

    async def case(self, case_id: str) -> CaseView | None:
        now = time.monotonic()
        hit = self._cached.get(case_id)
        if hit is not None and now - hit[0] < self._cache_s:
            return hit[1]
        async with self._lock:
            # Whoever waited on the lock finds the read the first one made.
            hit = self._cached.get(case_id)
            if hit is not None and time.monotonic() - hit[0] < self._cache_s:
                return hit[1]
            views = await self._read([case_id])
            view = views[0] if views else None
            if len(self._cached) > 10_000:
                self._cached.clear()  # bounded: unknown ids must not grow it forever
            self._cached[case_id] = (time.monotonic(), view)
            return view

    async def cases(self) -> list[CaseView]:
        now = time.monotonic()
        if self._cached_list is not None and now - self._cached_list[0] < self._cache_s:
            return self._cached_list[1]
        views = await self._read(None)
        self._cached_list = (time.monotonic(), views)
        return views

    async def _read(self, case_ids: list[str] | None) -> list[CaseView]:
        async with self._pool.acquire() as connection, connection.transaction(isolation="repeatable_read"):
            # One snapshot for the case and its counters: a batch commits both or neither.
            cases = await connection.fetch(
                f"SELECT {_CASE_COLUMNS} FROM tally.cases "  # noqa: S608 - constant columns
                "WHERE $1::text[] IS NULL OR id = ANY($1::text[]) ORDER BY created_at DESC, id",
                case_ids,
            )
            counters = await connection.fetch(
                "SELECT case_id, dimension, key, count, updated_at FROM tally.counters "
                "WHERE case_id = ANY($1::text[])",
                [row["id"] for row in cases],
            )
        by_case: dict[str, list[tuple[str, str, int]]] = {}
        counted_at: dict[str, datetime] = {}
        for counter in counters:
            case_id = counter["case_id"]
            by_case.setdefault(case_id, []).append((counter["dimension"], counter["key"], counter["count"]))
            if case_id not in counted_at or counter["updated_at"] > counted_at[case_id]:
                counted_at[case_id] = counter["updated_at"]
        return [
            case_view(row, case_counts(by_case.get(row["id"], [])), counted_at.get(row["id"]))
            for row in cases
        ]
